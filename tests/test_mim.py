"""mim: mask ratio, where the mask acts in each backbone, and a loss on masked voxels of normalised patches."""

from __future__ import annotations

import pytest
import torch

from kit.models import create_model
from kit.ssl import create_objective, list_objectives
from kit.ssl.masking import expand_mask, masked_group_norm, patch_normalise
from kit.ssl.mim import patch_masks


def test_registered():
    assert "mim" in list_objectives()


@pytest.mark.parametrize("ratio", [0.25, 0.6, 0.75])
def test_exactly_the_mask_ratio_of_patches_is_hidden_per_sample(ratio):
    x = torch.zeros(5, 1, 32, 32, 64)
    masks = patch_masks(x, [1, 2, 3, 4, 5], 8, ratio)
    assert masks.shape == (5, 1, 4, 4, 8) and masks.dtype == torch.bool
    assert masks.flatten(1).sum(1).tolist() == [round(ratio * 128)] * 5
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 5  # one mask per sample
    assert torch.equal(patch_masks(x[2:3], [3], 8, ratio)[0], masks[2])  # from the sample's seed only
    voxels = expand_mask(masks, x.shape[2:])
    assert abs(voxels.float().mean().item() - round(ratio * 128) / 128) < 1e-6


def test_parameters_are_checked():
    cnn = create_model("segresnet_small", 1)
    with pytest.raises(ValueError, match="multiple of the encoder stride"):
        create_objective("mim", cnn, patch_size=12)
    with pytest.raises(ValueError, match="mask_ratio"):
        create_objective("mim", cnn, mask_ratio=1.0)
    with pytest.raises(ValueError, match="single 16"):
        create_objective("mim", cnn)(torch.rand(1, 1, 16, 16, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        create_objective("mim", cnn, patch_size=16)(torch.rand(1, 1, 24, 24, 24), torch.tensor([0]))


def _encode_recording(obj, x, mask, modules):
    """``obj.encode_masked(x, mask)`` without grad, and the (input, output) of each of ``modules`` in call order."""
    seen = []
    hooks = [m.register_forward_hook(lambda _m, i, o: seen.append((i[0].detach().clone(), o.detach().clone())))
             for m in modules]
    try:
        with torch.no_grad():
            features = obj.encode_masked(x, mask)
    finally:
        for h in hooks:
            h.remove()
    return seen, features


@pytest.fixture(scope="module")
def cnn_mim():
    torch.manual_seed(0)
    return create_objective("mim", create_model("segresnet_small", 2), patch_size=8, mask_ratio=0.6)


def test_sparse_cnn_masked_patches_stay_empty_and_their_content_is_never_seen(cnn_mim):
    obj = cnn_mim
    x, seeds = torch.rand(2, 2, 24, 24, 24), torch.tensor([7, 8])
    mask = obj.masks(x, seeds)
    seen, features = _encode_recording(obj, x, mask, [obj.model.convInit, *obj.model.down_layers])
    stage_outputs = [out for _inp, out in seen]
    # SparK: after every stage the masked positions are empty (the mask is re-applied), ...
    assert len(stage_outputs) == 1 + len(obj.model.down_layers)
    for out in stage_outputs:
        hidden = expand_mask(mask, out.shape[2:]).expand_as(out)
        assert out[hidden].abs().max() == 0 and out[~hidden].abs().max() > 0
    # ... and the deepest map carries the learned mask embedding there before decoding
    hidden = expand_mask(mask, features.shape[2:])[:, 0]
    token = obj.mask_token.token.view(-1)
    assert torch.allclose(features.permute(0, 2, 3, 4, 1)[hidden], token.expand(int(hidden.sum()), -1))
    # changing what is under the mask changes nothing the decoder sees
    noisy = torch.where(expand_mask(mask, x.shape[2:]), torch.randn_like(x) * 10, x)
    with torch.no_grad():
        assert torch.equal(obj.encode_masked(noisy, mask), features)


def test_swin_mask_tokens_replace_masked_patch_embeddings():
    torch.manual_seed(0)
    obj = create_objective("mim", create_model("swinunetr", 1, feature_size=12), patch_size=16, mask_ratio=0.75)
    assert obj.mode == "token" and obj.mask_token.token.shape == (1, 12, 1, 1, 1)
    x = torch.rand(1, 1, 64, 64, 64)
    mask = obj.masks(x, torch.tensor([3]))
    embeds = []
    hook = obj.model.swinViT.layers1[0].register_forward_pre_hook(lambda _m, args: embeds.append(args[0].detach()))
    try:
        with torch.no_grad():
            features = obj.encode_masked(x, mask)
    finally:
        hook.remove()
    hidden = expand_mask(mask, embeds[0].shape[2:])[:, 0]  # 8^3 embedding cells per 16^3 patch
    assert int(hidden.sum()) == 48 * 8**3
    assert torch.allclose(embeds[0].permute(0, 2, 3, 4, 1)[hidden], obj.mask_token.token.view(1, -1).expand(int(hidden.sum()), -1))
    hidden_voxels = expand_mask(mask, x.shape[2:])
    with torch.no_grad():
        same = obj.encode_masked(torch.where(hidden_voxels, torch.rand_like(x), x), mask)
        other = obj.encode_masked(torch.where(hidden_voxels, x, torch.rand_like(x)), mask)
    assert torch.allclose(same, features, atol=1e-6)  # masked content is never seen
    assert not torch.allclose(other, features, atol=1e-3)  # visible content is


def test_loss_is_on_masked_voxels_of_per_patch_normalised_targets(cnn_mim):
    obj = cnn_mim
    x, seeds = torch.rand(2, 2, 24, 24, 24) * 5 + 3, torch.tensor([1, 2])
    with torch.no_grad():
        out = obj(x, seeds)
        mask = obj.masks(x, seeds)
        recon = obj.heads.reconstruct(obj.encode_masked(x, mask))
    # targets: zero mean, unit variance per 8^3 patch over both channels together
    target = obj.targets(x)
    assert torch.equal(target, patch_normalise(x, 8)[0])
    patches = target.reshape(2, 2, 3, 8, 3, 8, 3, 8)
    assert patches.mean(dim=(1, 3, 5, 7)).abs().max() < 1e-4 and (patches.std(dim=(1, 3, 5, 7), unbiased=False) - 1).abs().max() < 1e-3
    hidden = expand_mask(mask, x.shape[2:]).expand_as(x)
    manual = torch.stack([((recon[b] - target[b]) ** 2)[hidden[b]].mean() for b in range(2)]).mean()
    assert torch.isclose(out["recon"], manual, atol=1e-5) and torch.isclose(out["loss"], manual, atol=1e-5)
    # visible voxels do not count: a perfect prediction there leaves the loss as it is
    raw = create_objective("mim", obj.model, patch_size=8, norm_targets=False)
    raw.heads.load_state_dict(obj.heads.state_dict())
    raw.mask_token.load_state_dict(obj.mask_token.state_dict())
    with torch.no_grad():
        raw_loss = raw(x, seeds)["recon"]
    raw_manual = torch.stack([((recon[b] - x[b]) ** 2)[hidden[b]].mean() for b in range(2)]).mean()
    assert torch.isclose(raw_loss, raw_manual, rtol=1e-5)


def test_swin_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(0)
    obj = create_objective("mim", create_model("swinunetr", 1, feature_size=12), patch_size=32)
    obj(torch.rand(1, 1, 64, 64, 64), torch.tensor([1]))["loss"].backward()
    trainable = [n for n, p in obj.named_parameters() if p.requires_grad]
    assert all(n.startswith(("model.swinViT.", "heads.decoder.", "mask_token.")) for n in trainable)
    assert [n for n, p in obj.named_parameters() if p.requires_grad and p.grad is None] == []


def test_targets_are_normalised_over_all_channels_of_a_patch_as_in_mae_and_spark():
    # MAE/SparK norm_pix_loss: one mean and variance over the flattened patch of all channels
    torch.manual_seed(1)
    x = torch.rand(2, 2, 16, 16, 16)
    x[:, 1] = x[:, 1] * 3 + 2  # contrast 1 brighter and more varied than contrast 0
    obj = create_objective("mim", create_model("segresnet_small", 2), patch_size=8)
    assert obj.config["norm_per_channel"] is False
    target = obj.targets(x).reshape(2, 2, 2, 8, 2, 8, 2, 8)
    raw = x.reshape(2, 2, 2, 8, 2, 8, 2, 8)
    for b, i, j, k in [(0, 0, 0, 0), (1, 1, 0, 1)]:
        patch, values = target[b, :, i, :, j, :, k, :], raw[b, :, i, :, j, :, k, :]
        assert abs(float(patch.mean())) < 1e-5 and abs(float(patch.std(unbiased=False)) - 1) < 1e-4
        expected = (values - values.mean()) / (values.var(unbiased=False) + 1e-6).sqrt()
        assert torch.allclose(patch, expected, atol=1e-5)
        # the contrasts keep their offset: contrast 0 is below the patch mean, contrast 1 above
        assert float(patch[0].mean()) < -0.5 < 0.5 < float(patch[1].mean())
    # the per-channel option: each contrast of a patch on its own
    per = create_objective("mim", obj.model, patch_size=8, norm_per_channel=True).targets(x).reshape(2, 2, 2, 8, 2, 8, 2, 8)
    assert per.mean(dim=(3, 5, 7)).abs().max() < 1e-4 and (per.std(dim=(3, 5, 7), unbiased=False) - 1).abs().max() < 1e-3


def test_masked_group_norm_takes_statistics_of_visible_voxels_only():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 4)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 6, 6, 6)
    keep = torch.rand(2, 1, 6, 6, 6) > 0.6
    y = masked_group_norm(norm, x, keep)
    # hidden voxels: any value gives the same output, and the output there is 0
    assert torch.equal(y, masked_group_norm(norm, torch.where(keep, x, torch.randn_like(x) * 50 + 7), keep))
    assert (y[~keep.expand_as(y)] == 0).all()
    # visible voxels: normalised with the mean and variance of the group's visible voxels
    b, g = 1, 1
    visible = x[b, 2:4][keep[b].expand(2, -1, -1, -1)]
    expected = (visible - visible.mean()) / (visible.var(unbiased=False) + norm.eps).sqrt()
    w, bias = norm.weight[2:4].view(2, 1, 1, 1).expand(2, 6, 6, 6), norm.bias[2:4].view(2, 1, 1, 1).expand(2, 6, 6, 6)
    sel = keep[b].expand(2, -1, -1, -1)
    assert torch.allclose(y[b, 2:4][sel], expected * w[sel] + bias[sel], atol=1e-5)
    # nothing hidden: exactly nn.GroupNorm
    assert torch.allclose(masked_group_norm(norm, x, torch.ones_like(keep)), norm(x), atol=1e-5)


@pytest.mark.parametrize("masked_norm", [True, False])
def test_encoder_group_norms_ignore_masked_voxels_during_mim_only(masked_norm):
    torch.manual_seed(0)
    obj = create_objective("mim", create_model("segresnet_small", 2), patch_size=8, masked_norm=masked_norm)
    assert obj.config["masked_norm"] is masked_norm
    x, seeds = torch.rand(2, 2, 32, 32, 32) * 2 + 1, torch.tensor([5, 6])
    mask = obj.masks(x, seeds)
    norms = [layer[-1].norm1 for layer in obj.model.down_layers]  # last ResBlock's first norm, every level
    seen, _ = _encode_recording(obj, x, mask, norms)
    assert len(seen) == len(norms) == 4
    for norm, (inp, out) in zip(norms, seen):
        keep = ~expand_mask(mask, inp.shape[2:])
        masked_stats = masked_group_norm(norm, inp, keep)
        dense_stats = torch.nn.functional.group_norm(inp, norm.num_groups, norm.weight, norm.bias, norm.eps)
        sel = keep.expand_as(out)
        if masked_norm:  # SparK: statistics of the visible voxels, zeros where hidden
            assert torch.allclose(out, masked_stats, atol=1e-5) and (out[~sel] == 0).all()
        else:
            assert torch.allclose(out, dense_stats, atol=1e-5)
        assert not torch.allclose(masked_stats[sel], dense_stats[sel], atol=1e-3)  # the choice matters
    # outside the objective's forward the backbone's norms are dense GroupNorms again
    assert all("forward" not in vars(n) for n in norms)
    inp = seen[0][0]
    assert torch.allclose(norms[0](inp), torch.nn.functional.group_norm(inp, norms[0].num_groups, norms[0].weight, norms[0].bias, norms[0].eps))


def test_32_cube_crops_take_8_voxel_patches_exactly_and_reproducibly():
    obj = create_objective("mim", create_model("segresnet_small", 2), patch_size=8, mask_ratio=0.6)
    x = torch.rand(4, 2, 32, 32, 32)
    seeds = torch.tensor([11, 12, 13, 14])
    masks = obj.masks(x, seeds)
    assert masks.shape == (4, 1, 4, 4, 4) and masks.flatten(1).sum(1).tolist() == [38] * 4  # round(0.6 * 64)
    assert torch.equal(masks, obj.masks(x, seeds)) and not torch.equal(masks[0], masks[1])
    out = obj(x, seeds)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="multiple of the encoder stride"):
        create_objective("mim", create_model("segresnet_small", 2), patch_size=4)
