"""swin_trio: the Swin UNETR pretraining semantics (rotation, inpainting, contrastive), checked piece by piece."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kit.models import create_model
from kit.ssl import create_objective, list_objectives
from kit.ssl.base import sample_rng
from kit.ssl.swin_trio import (
    MAX_BOX_FRACTION,
    ROTATION_DIMS,
    Box,
    box_mask,
    box_noise,
    boxes_mask,
    draw_boxes,
    make_views,
    mask_volume,
    resolve_mix_prob,
    rotate_batch,
)


def _volumes(batch: int, channels: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Asymmetric random volumes: sample i lies in [10 i, 10 i + 1] so pasted voxels reveal their source."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, size, size, size, generator=g)
    return x + 10.0 * torch.arange(batch).view(batch, 1, 1, 1, 1)


@pytest.fixture(scope="module")
def trio():
    """A segresnet_small swin_trio objective, a 32^3 batch of 3 and its losses."""
    torch.manual_seed(0)
    objective = create_objective("swin_trio", create_model("segresnet_small", in_channels=2))
    x = torch.rand(3, 2, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    seeds = torch.tensor([101, 202, 303])
    with torch.no_grad():
        out = objective(x, seeds)
    return objective, x, seeds, out


def test_registered():
    assert "swin_trio" in list_objectives()
    with pytest.raises(KeyError, match="swin_trio"):
        create_objective("nope", create_model("segresnet_small", 1))


# ----------------------------------------------------------------------------- rotation


def test_rotation_label_matches_the_rotation_in_the_plane_of_dims_3_4():
    x = _volumes(4)
    out = make_views(x, torch.tensor([1, 2, 3, 4]), mix_prob=0.0, mask_budget=(0.0, 0.0))  # no masking
    assert torch.equal(out["views"], out["targets"])
    labels = out["rot_labels"].tolist()
    batch = x.shape[0]
    for row, k in enumerate(labels):
        sample = x[row % batch]
        view = out["views"][row]
        # The reference's x.rot90(k, (2, 3)) on C, X, Y, Z ...
        assert torch.equal(view, sample.rot90(k, (2, 3)))
        # ... i.e. dims (3, 4) of the B, C, X, Y, Z batch; rotating back with the label recovers the input.
        assert torch.equal(torch.rot90(view.unsqueeze(0), -k, ROTATION_DIMS)[0], sample)
        # The X axis is left alone: each X-slice keeps its content.
        assert torch.allclose(view.sum(dim=(2, 3)), sample.sum(dim=(2, 3)))
    assert ROTATION_DIMS == (3, 4)
    assert len(set(labels)) > 1  # 8 draws: not all the same
    assert torch.equal(rotate_batch(x, labels[:batch]), torch.stack([x[i].rot90(k, (2, 3)) for i, k in enumerate(labels[:batch])]))


def test_rotation_classes_are_uniform_over_seeds():
    counts = np.bincount([int(sample_rng(s, 0x7377696E, 0, 0).integers(4)) for s in range(2000)], minlength=4)
    assert counts.min() > 400 and counts.max() < 600, counts
    x = torch.zeros(8, 1, 16, 16, 16)
    labels = make_views(x, torch.arange(8), mix_prob=0.0, mask_budget=(0, 0))["rot_labels"]
    assert labels.dtype == torch.long and set(labels.tolist()) <= {0, 1, 2, 3}


# ----------------------------------------------------------------------------- inpainting boxes


def test_box_sides_and_budget_over_many_seeds():
    shape = (40, 48, 64)  # non-cubic: sides scale with their own dimension
    volume = math.prod(shape)
    budgets, n_boxes = [], 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        boxes = draw_boxes(shape, rng)
        if boxes:
            corners = np.array([[b.x0, b.x1, b.y0, b.y1, b.z0, b.z1] for b in boxes])
            starts, ends, dims = corners[:, 0::2], corners[:, 1::2], np.array(shape)
            sides = ends - starts
            assert (sides >= 0.05 * dims).all() and (sides <= 0.25 * dims).all(), corners
            assert (starts >= 0).all() and (ends <= dims).all()
        n_boxes += len(boxes)
        total = sum(b.volume for b in boxes)
        # Drawn while the running sum is below the budget: without the last box it is below 0.3 V,
        # and the last box overshoots by at most one box (documented bound).
        if boxes:
            assert total - boxes[-1].volume < 0.3 * volume
        assert total <= (0.3 + MAX_BOX_FRACTION) * volume
        if seed < 30:
            assert int(box_mask(shape, boxes).sum()) <= total  # overlaps count once in the mask
        budgets.append(total / volume)
    budgets = np.array(budgets)
    # Budgets spread over U(0, 0.3): small and large ones occur, mean near 0.15 (+ overshoot).
    assert budgets.min() < 0.03 and budgets.max() > 0.27 and 0.12 < budgets.mean() < 0.22, budgets.mean()
    assert n_boxes > 1000


def test_explicit_budget_is_reached_and_overshot_by_at_most_the_last_box():
    shape = (32, 32, 32)
    for seed in range(50):
        boxes = draw_boxes(shape, np.random.default_rng(seed), budget_fraction=0.2)
        total = sum(b.volume for b in boxes)
        assert total >= 0.2 * 32**3 > total - boxes[-1].volume
    assert draw_boxes(shape, np.random.default_rng(0), budget_fraction=0.0) == []


def test_masked_voxels_are_noise_in_0_1_and_the_rest_is_untouched():
    x = _volumes(2, size=32) + 5.0  # values in [5, 16]: far from the noise range
    out = make_views(x, torch.tensor([7, 8]), mix_prob=0.0)
    masks, views, targets = out["masks"], out["views"], out["targets"]
    assert masks.dtype == torch.bool and masks.shape == (4, 1, 32, 32, 32)
    assert masks.any()
    full = masks.expand_as(views)
    assert views[full].min() >= 0.0 and views[full].max() <= 1.0
    assert torch.equal(views[~full], targets[~full])
    fraction = masks.float().mean(dim=(1, 2, 3, 4))
    assert (fraction <= 0.3 + MAX_BOX_FRACTION).all()
    # The mask is exactly the union of the drawn boxes.
    for row, info in enumerate(out["boxes"]):
        assert torch.equal(masks[row].cpu(), box_mask((32, 32, 32), info["noise"]))


def test_mask_volume_and_box_noise_pieces():
    rng = np.random.default_rng(0)
    boxes = [Box(0, 3, 1, 4, 2, 6), Box(2, 5, 2, 5, 2, 5)]
    noise = box_noise(boxes, 2, rng)
    assert [tuple(n.shape) for n in noise] == [(2, 3, 3, 4), (2, 3, 3, 3)]
    assert all(float(n.min()) == 0.0 and float(n.max()) == 1.0 for n in noise)
    x = torch.full((2, 8, 8, 8), 7.0)
    out = mask_volume(x, boxes, noise)
    assert torch.equal(out[boxes[1].slices], noise[1])  # later boxes overwrite earlier ones
    assert int((out != 7.0).sum()) <= 2 * sum(b.volume for b in boxes)
    assert torch.equal(x, torch.full((2, 8, 8, 8), 7.0))  # input not modified in place
    with pytest.raises(ValueError, match="noise blocks"):
        mask_volume(x, boxes, noise[:1])


def test_second_pass_pastes_the_partner_at_the_same_location():
    x = _volumes(3)
    out = make_views(x, torch.tensor([31, 32, 33]), mix_prob=1.0)
    batch = 3
    partners = 0
    for row, info in enumerate(out["boxes"]):
        i, view = row % batch, row // batch
        j = info["partner"]
        assert j is not None and j != i and 0 <= j < batch
        assert info["pasted"]
        partner_rotated = out["targets"][view * batch + j]
        for box in info["pasted"]:
            assert torch.equal(out["views"][row][box.slices], partner_rotated[box.slices])
            # The pasted voxels come from the partner (its value band), not from this sample.
            assert out["views"][row][box.slices].min() >= 10.0 * j
        partners += 1
    assert partners == 6


def test_auto_mix_probability_is_b_minus_1_over_b():
    x = torch.zeros(4, 1, 16, 16, 16)
    mixed = total = 0
    for start in range(0, 400, 4):
        out = make_views(x, torch.arange(start, start + 4), mix_prob="auto", mask_budget=(0.0, 0.05))
        mixed += sum(info["partner"] is not None for info in out["boxes"])
        total += len(out["boxes"])
    assert abs(mixed / total - 0.75) < 0.07, mixed / total
    single = make_views(x[:1], torch.tensor([5]), mix_prob="auto")
    assert all(info["partner"] is None for info in single["boxes"])  # nobody to mix with


def test_views_depend_only_on_the_sample_seed():
    x = _volumes(3)
    seeds = torch.tensor([11, 22, 33])
    full = make_views(x, seeds, mix_prob=0.0)
    alone = make_views(x[2:3], seeds[2:3], mix_prob=0.0)
    for key in ("views", "targets", "masks"):
        assert torch.equal(alone[key][0], full[key][2])  # view 1 of sample 2
        assert torch.equal(alone[key][1], full[key][3 + 2])  # view 2 of sample 2
    order = [2, 0, 1]
    shuffled = make_views(x[order], seeds[order], mix_prob=0.0)
    for new_pos, old_pos in enumerate(order):
        assert torch.equal(shuffled["views"][new_pos], full["views"][old_pos])
    again = make_views(x, seeds, mix_prob=0.0)
    assert torch.equal(again["views"], full["views"])
    other = make_views(x, torch.tensor([12, 22, 33]), mix_prob=0.0)
    assert not torch.equal(other["views"][0], full["views"][0])
    # The two views of one sample are independent draws.
    assert not torch.equal(full["views"][0], full["views"][3])


def test_bad_batches_raise():
    with pytest.raises(ValueError, match="equal Y and Z"):
        make_views(torch.zeros(1, 1, 16, 16, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="seeds must be"):
        make_views(torch.zeros(2, 1, 16, 16, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="mix_prob"):
        make_views(torch.zeros(2, 1, 16, 16, 16), torch.tensor([0, 1]), mix_prob=1.5)


# ----------------------------------------------------------------------------- losses


def test_terms_match_independent_computations(trio):
    objective, x, seeds, out = trio
    batch = x.shape[0]
    with torch.no_grad():
        v = objective.views(x, seeds)
        features = objective.model.encode(v["views"])
        z = objective.heads.projection(features)
        logits = objective.heads.rotation_logits(features)
        recon = objective.heads.reconstruct(features)

    # NT-Xent by hand from the cosine-similarity matrix of the 2B embeddings (not via MONAI).
    zn = z / z.norm(dim=1, keepdim=True)
    sim = zn @ zn.T
    t = 0.5
    losses = []
    for i in range(2 * batch):
        positive = (i + batch) % (2 * batch)
        denominator = sum(math.exp(sim[i, k] / t) for k in range(2 * batch) if k != i)
        losses.append(-math.log(math.exp(sim[i, positive] / t) / denominator))
    assert out["contrast"].item() == pytest.approx(sum(losses) / (2 * batch), rel=1e-5)

    # Rotation: 4-class cross-entropy over both views, by hand.
    labels = v["rot_labels"]
    ce = -(logits - logits.logsumexp(dim=1, keepdim=True))[torch.arange(2 * batch), labels].mean()
    assert out["rot"].item() == pytest.approx(ce.item(), rel=1e-5)

    # Reconstruction: L1 to the rotated, unmasked volume over the whole volume (not only the boxes).
    assert recon.shape == v["targets"].shape == (2 * batch, 2, 32, 32, 32)
    assert torch.equal(v["targets"], rotate_batch(torch.cat([x, x]), labels))
    assert out["recon"].item() == pytest.approx((recon - v["targets"]).abs().mean().item(), rel=1e-5)
    masked_only = (recon - v["targets"]).abs()[v["masks"].expand_as(recon)].mean().item()
    assert out["recon"].item() != pytest.approx(masked_only, rel=1e-3)

    # Total = weighted sum (weights 1, 1, 1 here).
    assert out["loss"].item() == pytest.approx((out["rot"] + out["contrast"] + out["recon"]).item(), rel=1e-6)


def test_weights_scale_terms_and_zero_weights_skip_them(trio):
    objective, x, seeds, reference = trio
    weighted = create_objective(
        "swin_trio", objective.model, weights={"rot": 0.5, "contrast": 2.0, "recon": 3.0}
    )
    weighted.heads.load_state_dict(objective.heads.state_dict())
    with torch.no_grad():
        out = weighted(x, seeds)
    for term in ("rot", "contrast", "recon"):
        assert out[term].item() == pytest.approx(reference[term].item(), rel=1e-5)  # unweighted
    expected = 0.5 * out["rot"] + 2.0 * out["contrast"] + 3.0 * out["recon"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)

    no_contrast = create_objective("swin_trio", create_model("segresnet_small", 2), weights={"contrast": 0})
    with torch.no_grad():
        out = no_contrast(x, seeds)
    assert set(out) == {"loss", "rot", "recon"}
    assert not any(p.requires_grad for p in no_contrast.heads.contrastive_head.parameters())
    with pytest.raises(ValueError, match="unknown loss terms"):
        create_objective("swin_trio", objective.model, weights={"rotation": 1})
    with pytest.raises(ValueError, match="at least one"):
        create_objective("swin_trio", objective.model, weights={"rot": 0, "contrast": 0, "recon": 0})


def test_every_trainable_parameter_gets_a_gradient_and_the_segmentation_decoder_is_frozen():
    torch.manual_seed(0)
    model = create_model("segresnet_small", in_channels=1)
    objective = create_objective("swin_trio", model)
    objective(torch.rand(2, 1, 16, 16, 16), torch.tensor([1, 2]))["loss"].backward()
    trainable = [n for n, p in objective.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("model.convInit", "model.down_layers", "heads.")) for n in trainable)
    assert [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any(p.requires_grad for p in model.up_layers.parameters())
    objective.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


def test_a_few_optimisation_steps_reduce_the_loss():
    torch.manual_seed(0)
    objective = create_objective("swin_trio", create_model("segresnet_small", in_channels=1))
    grid = torch.linspace(-1, 1, 32)
    zz, yy, xx = torch.meshgrid(grid, grid, grid, indexing="ij")
    blob = torch.exp(-((xx - 0.3) ** 2 + yy**2 + (zz + 0.2) ** 2) / 0.2)
    x = torch.stack([blob, blob.flip(0)]).unsqueeze(1)  # (2, 1, 32, 32, 32), asymmetric
    seeds = torch.tensor([5, 6])
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=3e-4)
    losses, recon = [], []
    for _ in range(5):
        optimizer.zero_grad()
        out = objective(x, seeds)
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
        recon.append(out["recon"].item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert recon[-1] < recon[0], recon


def test_preview_and_checkpoint_extra(trio):
    objective, x, seeds, _ = trio
    preview = objective.preview(x, seeds)
    assert set(preview) >= {"input", "masked", "target", "reconstruction", "mask", "rot_labels"}
    assert all(isinstance(a, np.ndarray) for a in preview.values())
    for key in ("input", "masked", "target", "reconstruction"):
        assert preview[key].shape == (3, 2, 32, 32, 32), key
    assert np.array_equal(preview["input"], x.numpy())
    for i, k in enumerate(preview["rot_labels"]):
        assert np.array_equal(preview["target"][i], np.rot90(x[i].numpy(), k, (2, 3)))
    assert (preview["masked"] != preview["target"]).any()
    assert objective.training  # mode restored

    extra = objective.checkpoint_extra()
    assert extra["ssl_objective"]["name"] == "swin_trio" and extra["ssl_objective"]["mix_prob"] == "auto"
    assert set(extra["ssl_state"]) == {k for k in objective.state_dict() if k.startswith("heads.")}
    clone = create_objective("swin_trio", objective.model)
    clone.load_checkpoint_extra(extra)
    assert all(torch.equal(clone.state_dict()[k], v) for k, v in extra["ssl_state"].items())


# ----------------------------------------------------------------------------- batched views vs the reference


def _reference_views(x, seeds, *, n_views=2, mix_prob="auto", mask_budget=(0.0, 0.3), box_frac=(0.05, 0.25)):
    """The per-sample, box-by-box make_views that the batched one replaced, kept as the reference:
    per-box noise from the box generator (``box_noise``), boxes pasted one by one (``mask_volume``)."""
    seeds = [int(s) for s in seeds]
    batch, channels = x.shape[:2]
    mix = resolve_mix_prob(mix_prob, batch)
    views, targets, labels, masks, details = [], [], [], [], []
    for view in range(n_views):
        ks = [int(sample_rng(s, 0x7377696E, view, 0).integers(4)) for s in seeds]
        rotated = torch.stack([sample.rot90(k, (2, 3)) for sample, k in zip(x, ks)])
        for i, seed in enumerate(seeds):
            mask_rng = sample_rng(seed, 0x7377696E, view, 1)
            noise_boxes = draw_boxes(x.shape, mask_rng, mask_budget, box_frac)
            masked = mask_volume(rotated[i], noise_boxes, box_noise(noise_boxes, channels, mask_rng))
            partner, pasted = None, []
            mix_rng = sample_rng(seed, 0x7377696E, view, 2)
            if mix > 0 and mix_rng.random() < mix:
                other = int(mix_rng.integers(batch - 1))
                partner = other if other < i else other + 1
                pasted = draw_boxes(x.shape, mix_rng, mask_budget, box_frac)
                masked = mask_volume(masked, pasted, rotated[partner])
            views.append(masked)
            masks.append(box_mask(x.shape, noise_boxes + pasted))
            details.append({"noise": noise_boxes, "partner": partner, "pasted": pasted})
        targets.append(rotated)
        labels += ks
    return {"views": torch.stack(views), "targets": torch.cat(targets), "rot_labels": torch.tensor(labels),
            "masks": torch.stack(masks), "boxes": details}


@pytest.mark.parametrize("mix_prob", [0.0, "auto", 1.0])
def test_batched_views_equal_the_per_sample_reference_up_to_the_noise(mix_prob):
    x = _volumes(4, channels=2, size=24) + 5.0  # values >= 5: noise (in [0, 1]) is told apart
    for seeds in ([1, 2, 3, 4], [901, 17, 5, 2**40 + 3]):
        new = make_views(x, torch.tensor(seeds), mix_prob=mix_prob)
        old = _reference_views(x, seeds, mix_prob=mix_prob)
        assert new["boxes"] == old["boxes"]  # same boxes, partners and pasted boxes
        assert torch.equal(new["rot_labels"], old["rot_labels"])
        assert torch.equal(new["targets"], old["targets"])
        assert torch.equal(new["masks"], old["masks"])
        assert new["views"].dtype == x.dtype and new["views"].is_contiguous()
        for row, info in enumerate(new["boxes"]):
            noise_only = box_mask(x.shape, info["noise"]) & ~box_mask(x.shape, info["pasted"])
            noise_only = noise_only.expand_as(new["views"][row])
            # Everything but the noise voxels is identical (unmasked voxels, the partner's pasted ones) ...
            assert torch.equal(new["views"][row][~noise_only], old["views"][row][~noise_only])
            # ... and the noise voxels hold noise in [0, 1] in both.
            for out in (new, old):
                values = out["views"][row][noise_only]
                assert values.numel() == 0 or (values.min() >= 0 and values.max() <= 1)
        if mix_prob == 1.0:
            assert all(info["pasted"] for info in new["boxes"])


def test_batched_noise_is_seeded_scaled_and_independent_between_views():
    x = torch.full((3, 2, 32, 32, 32), 7.0)
    seeds = torch.tensor([4, 5, 6])
    out = make_views(x, seeds, mix_prob=0.0, mask_budget=(0.2, 0.3))
    again = make_views(x, seeds, mix_prob=0.0, mask_budget=(0.2, 0.3))
    assert torch.equal(out["views"], again["views"])
    rows = []
    for row in range(6):
        values = out["views"][row][out["masks"][row].expand(2, -1, -1, -1)]
        # Min-max scaled over the view's boxes: spans exactly [0, 1], centred like a Gaussian.
        assert values.min() == 0.0 and values.max() == 1.0
        assert 0.4 < values.mean() < 0.6 and 0.08 < values.std() < 0.2, (values.mean(), values.std())
        rows.append(values[:500])
    # Two views of a sample, and two samples, get different noise.
    assert not torch.equal(rows[0], rows[3]) and not torch.equal(rows[0], rows[1])


@pytest.mark.parametrize("method", ["summed_area", "paint"])
def test_boxes_mask_equals_the_union_of_box_masks(method):
    shape = (20, 24, 28)
    per_row = [draw_boxes(shape, np.random.default_rng(seed)) for seed in range(12)] + [[]]
    per_row.append([Box(0, 20, 0, 24, 0, 28), Box(19, 20, 23, 24, 27, 28)])  # the whole volume, the last corner
    batched = boxes_mask(shape, per_row, method=method)
    assert batched.shape == (14, 1, 20, 24, 28) and batched.dtype == torch.bool
    for row, boxes in enumerate(per_row):
        assert torch.equal(batched[row], box_mask(shape, boxes)), row
    assert batched[-1].all() and not batched[-2].any()
    with pytest.raises(ValueError, match="method"):
        boxes_mask(shape, per_row, method="scan")


def test_views_are_made_on_the_batch_device():
    """On a (simulated) GPU every tensor op stays there and the results equal the CPU ones."""
    from accelerator_shim import ACCELERATOR, AcceleratorShim, OnAccelerator

    x = _volumes(3, size=16)
    seeds = torch.tensor([3, 4, 5])
    on_cpu = make_views(x, seeds, mix_prob=1.0)
    with AcceleratorShim():
        on_device = make_views(x.to(ACCELERATOR), seeds, mix_prob=1.0)
        for key in ("views", "targets", "rot_labels", "masks"):
            assert isinstance(on_device[key], OnAccelerator), key
            assert torch.equal(on_device[key].cpu(), on_cpu[key]), key
        # The GPU's mask path (summed-area table) stays on the device too.
        boxes = [info["noise"] for info in on_cpu["boxes"]]
        summed = boxes_mask(x.shape, boxes, ACCELERATOR, method="summed_area")
        assert isinstance(summed, OnAccelerator)
        assert torch.equal(summed.cpu(), boxes_mask(x.shape, boxes, method="paint"))
