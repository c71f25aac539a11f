"""Imported weights compute what their publishers' encoders computed (MONAI < 1.5 patch merging, #27),
and each input filter lands under its own contrast name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from kit.finetune import FinetuneConfig, build_finetune_model
from kit.models import create_model, load_checkpoint
from kit.models.checkpoints import CheckpointError
from kit.models.imports import import_weights
from kit.models.transfer import build_from_checkpoint, init_from_checkpoint

PATCH = "swinViT.patch_embed.proj.weight"


class OldPatchMerging(nn.Module):
    """MONAI's PatchMerging.forward before commit 1c00ea2 (PR #8285), written out by hand for 5D input."""

    def __init__(self, dim: int, norm_layer=nn.LayerNorm, spatial_dims: int = 3) -> None:
        super().__init__()
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(8 * dim)

    def forward(self, x):
        b, d, h, w, c = x.shape
        if (h % 2 == 1) or (w % 2 == 1) or (d % 2 == 1):
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x0 = x[:, 0::2, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, 0::2, :]
        x3 = x[:, 0::2, 0::2, 1::2, :]
        x4 = x[:, 1::2, 0::2, 1::2, :]
        x5 = x[:, 0::2, 1::2, 0::2, :]
        x6 = x[:, 0::2, 0::2, 1::2, :]
        x7 = x[:, 1::2, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3, x4, x5, x6, x7], -1)
        x = self.norm(x)
        x = self.reduction(x)
        return x


def old_encoder(in_channels: int, feature_size: int, seed: int) -> SwinTransformer:
    """The publishers' Swin encoder (MONAI SwinTransformer as in SSLHead) with the old merging order."""
    torch.manual_seed(seed)
    net = SwinTransformer(in_chans=in_channels, embed_dim=feature_size, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                          depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), spatial_dims=3, downsample=OldPatchMerging)
    with torch.no_grad():  # LayerNorms away from (1, 0), so that every parameter matters
        for p in net.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def publish(encoder: SwinTransformer, fmt: str, path, heads: dict | None = None) -> None:
    """Write the encoder in the publisher's layout: model_swinvit.pt (module. + bare keys, mlp.fc) or
    BrainSegFounder's DDP(SSLHead) (module.swinViT.* plus heads)."""
    state = encoder.state_dict()
    if fmt == "monai-ssl":
        published = {"module." + k.replace(".mlp.linear", ".mlp.fc"): v for k, v in state.items()}
        torch.save({"epoch": 100, "state_dict": published}, path)
    else:
        published = {"module.swinViT." + k: v for k, v in state.items()}
        published.update({"module." + k: v for k, v in (heads or {}).items()})
        torch.save({"global_step": 10, "epoch": 1, "state_dict": published, "optimizer": {}}, path)


def levels(encoder, x) -> list[torch.Tensor]:
    with torch.no_grad():
        return encoder(x, True)


def test_legacy_backbone_computes_the_publishers_encoder_at_every_level(tmp_path):
    records = {}
    for fmt, names, seed in (("monai-ssl", ["t1"], 0), ("brainsegfounder", ["t1", "flair"], 1)):
        reference = old_encoder(len(names), feature_size=12, seed=seed)
        src = tmp_path / f"{fmt}.pt"
        publish(reference, fmt, src, heads={"rotation_head.weight": torch.randn(4, 192), "rotation_head.bias": torch.zeros(4)})
        out = tmp_path / f"{fmt}_kit.pt"
        report = import_weights(fmt, src, len(names), out, modalities=names)
        assert report.model_config["patch_merging"] == "legacy"
        assert "patch merging: legacy" in report.summary()
        ckpt = load_checkpoint(out)
        assert ckpt["model_config"]["patch_merging"] == "legacy"
        assert ckpt["extra"]["imported"]["patch_merging"] == "legacy"

        legacy, _ = build_from_checkpoint(out)  # as kit predict and fine-tuning build it: from the model config
        assert type(legacy.swinViT.layers1[0].downsample).__name__ == "LegacyPatchMerging"
        current = create_model(**{**ckpt["model_config"], "patch_merging": "current"})
        current.load_state_dict(ckpt["state_dict"])
        x = torch.randn(2, len(names), 64, 64, 64, generator=torch.Generator().manual_seed(7))
        want, got, other = levels(reference, x), levels(legacy.eval().swinViT, x), levels(current.eval().swinViT, x)
        legacy_diff = [float((a - b).abs().max()) for a, b in zip(want, got)]
        current_diff = [float((a - b).abs().max()) for a, b in zip(want, other)]
        records[fmt] = (legacy_diff, current_diff)
        print(f"{fmt}: max |old reference - kit legacy| per level {['%.2e' % d for d in legacy_diff]}; "
              f"|old reference - kit current| {['%.2e' % d for d in current_diff]}")
        assert max(legacy_diff) <= 1e-5, legacy_diff
        assert current_diff[0] <= 1e-5 and min(current_diff[1:]) > 1e-2, current_diff  # levels 1-4 follow a merging

    # Fine-tuning from the import builds the legacy model; a current-merging model refuses its weights.
    config = FinetuneConfig(task="segmentation", backbone="swinunetr", model={"feature_size": 12},
                            init=str(tmp_path / "brainsegfounder_kit.pt"), transfer="encoder", crop=64, input_size=64)
    model, _ = build_finetune_model(config, in_channels=4, modalities=["flair", "t1ce", "t1", "t2"])
    assert model.config["patch_merging"] == "legacy"
    plain = create_model("swinunetr", in_channels=2, feature_size=12)
    try:
        init_from_checkpoint(plain, tmp_path / "brainsegfounder_kit.pt", keys="encoder", strict=False)
    except CheckpointError as err:
        assert "patch_merging='legacy'" in str(err) and "brainsegfounder_kit.pt" in str(err)
    else:  # pragma: no cover
        raise AssertionError("legacy weights went into a current-merging model")


def test_a_config_without_the_key_builds_current_merging():
    net = create_model("swinunetr", in_channels=1, feature_size=12)
    config = {k: v for k, v in net.config.items() if k != "patch_merging"}  # a checkpoint from before the setting
    rebuilt = create_model(**config)
    assert rebuilt.config["patch_merging"] == "current"
    assert type(rebuilt.swinViT.layers1[0].downsample).__name__ == "PatchMerging"


def test_a_permuted_import_puts_each_filter_under_its_own_name(tmp_path):
    # BrainSegFounder stage 2 (flair, t1ce, t1, t2) with the channels asked in another order.
    src_names, wanted = ["flair", "t1ce", "t1", "t2"], ["t1", "t2", "flair", "t1ce"]
    encoder = old_encoder(4, feature_size=12, seed=3)
    with torch.no_grad():  # each source filter recognisable by its value
        encoder.patch_embed.proj.weight.copy_(torch.arange(4.0).view(1, 4, 1, 1, 1).expand_as(encoder.patch_embed.proj.weight))
    src = tmp_path / "stage2.pt"
    publish(encoder, "brainsegfounder", src)
    report = import_weights("brainsegfounder", src, 4, tmp_path / "k.pt", modalities=wanted)
    patch = load_checkpoint(tmp_path / "k.pt")["state_dict"][PATCH]
    assert [float(patch[0, i].mean()) for i in range(4)] == [float(src_names.index(n)) for n in wanted]
    assert report.channel_map == [("t1", "t1"), ("t2", "t2"), ("flair", "flair"), ("t1ce", "t1ce")]
    assert "channel mapping (by name): t1 <- t1, t2 <- t2, flair <- flair, t1ce <- t1ce" in report.summary()

    # 2 -> 2: stage 1 (t1, flair) asked as (flair, t1).
    two = old_encoder(2, feature_size=12, seed=4)
    publish(two, "brainsegfounder", tmp_path / "stage1.pt")
    import_weights("brainsegfounder", tmp_path / "stage1.pt", 2, tmp_path / "k2.pt", modalities=["flair", "t1"])
    written = load_checkpoint(tmp_path / "k2.pt")["state_dict"][PATCH]
    assert torch.equal(written[:, 0], two.patch_embed.proj.weight[:, 1])
    assert torch.equal(written[:, 1], two.patch_embed.proj.weight[:, 0])

    # A fine-tuned SwinUNETR (swinViT.*, encoder1.*; BraTS order): the skip path's input convs by name too.
    torch.manual_seed(5)
    tuned = SwinUNETR(in_channels=4, out_channels=3, feature_size=12, downsample=OldPatchMerging)
    tuned_state = tuned.state_dict()
    torch.save(tuned_state, tmp_path / "finetuned.pt")
    report = import_weights("brainsegfounder", tmp_path / "finetuned.pt", 4, tmp_path / "k3.pt", modalities=wanted)
    written = load_checkpoint(tmp_path / "k3.pt")["state_dict"]
    for key in (PATCH, "encoder1.layer.conv1.conv.weight", "encoder1.layer.conv3.conv.weight"):
        for i, name in enumerate(wanted):
            assert torch.equal(written[key][:, i], tuned_state[key][:, src_names.index(name)]), (key, name)
    assert {k for k, _, _ in report.transferred} == {PATCH, "encoder1.layer.conv1.conv.weight",
                                                      "encoder1.layer.conv3.conv.weight"}

    # Unknown names, order would matter: refused, naming the file and the way out; nothing written.
    three = old_encoder(3, feature_size=12, seed=6)
    publish(three, "brainsegfounder", tmp_path / "three.pt")
    try:
        import_weights("brainsegfounder", tmp_path / "three.pt", 3, tmp_path / "k4.pt", modalities=["t1", "t2", "flair"])
    except CheckpointError as err:
        assert "three.pt" in str(err) and "--src-modalities" in str(err) and "\n" not in str(err)
    else:  # pragma: no cover
        raise AssertionError("unnamed channels were mapped by position")
    assert not (tmp_path / "k4.pt").exists()
    import_weights("brainsegfounder", tmp_path / "three.pt", 3, tmp_path / "k4.pt", modalities=["t2", "t1", "flair"],
                   src_modalities=["t1", "t2", "flair"])
    written = load_checkpoint(tmp_path / "k4.pt")["state_dict"][PATCH]
    assert torch.equal(written[:, 0], three.patch_embed.proj.weight[:, 1])


def test_pretraining_from_an_import_inherits_its_merging_order(tmp_path):
    """kit pretrain --stage 2 --init IMPORTED: the stage builds the legacy model the weights need, unless it sets
    an order itself."""
    from kit.train.pretrain import inherit_patch_merging

    src = tmp_path / "bsf.pt"
    publish(old_encoder(2, feature_size=12, seed=0), "brainsegfounder", src)
    out = tmp_path / "bsf_kit.pt"
    import_weights("brainsegfounder", src, 2, out, modalities=["t1", "flair"])
    stage = {"backbone": "swinunetr", "model": {"feature_size": 12}, "crop": 64}
    assert inherit_patch_merging(stage, out)["model"] == {"feature_size": 12, "patch_merging": "legacy"}
    assert "patch_merging" not in stage["model"]  # the profile's settings are not changed in place
    explicit = {**stage, "model": {"feature_size": 12, "patch_merging": "current"}}
    assert inherit_patch_merging(explicit, out) == explicit
    assert inherit_patch_merging({**stage, "backbone": "segresnet_small"}, out)["model"] == stage["model"]
