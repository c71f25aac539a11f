"""cross_contrast: per-contrast coarse dropout as published (Chen et al., Eur Radiol 2024), and its losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import ContrastiveLoss

from kit.models import create_model
from kit.ssl import create_objective, list_objectives
from kit.ssl.cross_contrast import SCHEMES, block_grid, contrast_dropout_views


def test_registered():
    assert "cross_contrast" in list_objectives()


@pytest.mark.parametrize("scheme, side, count", [("large", 16, 86), ("small", 4, 6000)])
def test_published_schemes_at_96_drop_that_many_blocks_per_contrast(scheme, side, count):
    x = torch.rand(1, 4, 96, 96, 96)
    assert block_grid(x.shape[2:], scheme) == (side, [96 // side] * 3)  # the published blocks by default
    out = contrast_dropout_views(x, [7], scheme=scheme, n_views=1)
    masks = out["masks"][0].numpy()
    for c in range(4):
        # exactly `count` non-overlapping side^3 blocks on the side-voxel grid: about 40 % of the voxels
        assert masks[c].sum() == count * side**3
        cells = masks[c].reshape(96 // side, side, 96 // side, side, 96 // side, side)
        per_cell = cells.sum(axis=(1, 3, 5))
        assert set(np.unique(per_cell).tolist()) <= {0, side**3}  # whole blocks only
        assert int((per_cell > 0).sum()) == count
        assert 0.39 <= masks[c].mean() <= 0.44
    # each contrast has its own mask ...
    assert all(not np.array_equal(masks[a], masks[b]) for a in range(4) for b in range(a + 1, 4))
    # ... independent: a voxel hidden in every contrast is rare (about 0.4^4), most are visible somewhere
    hidden_everywhere = masks.all(axis=0).mean()
    assert hidden_everywhere < 0.06, hidden_everywhere
    assert abs(masks[0][masks[1]].mean() - masks[0].mean()) < 0.05  # P(hidden in 0 | hidden in 1) ~ P(hidden in 0)


@pytest.mark.parametrize("scheme, block, per_axis, dropped", [("large", 8, 4, 25), ("small", 4, 8, 222)])
def test_blocks_have_a_size_in_voxels_at_32(scheme, block, per_axis, dropped):
    # 32^3: blocks of several voxels (8 = a quarter of the side, or the published 4), not 1-2 voxel cells
    assert block_grid((32, 32, 32), scheme) == (block, [per_axis] * 3)
    assert dropped == round(SCHEMES[scheme][1] * per_axis**3)
    masks = contrast_dropout_views(torch.rand(3, 2, 32, 32, 32), [1, 2, 3], scheme=scheme)["masks"].numpy()
    assert masks.shape == (6, 2, 32, 32, 32)
    for m in masks.reshape(-1, 32, 32, 32):
        cells = m.reshape(per_axis, block, per_axis, block, per_axis, block).sum(axis=(1, 3, 5))
        assert set(np.unique(cells).tolist()) <= {0, block**3} and int((cells > 0).sum()) == dropped
        assert 0.38 <= m.mean() <= 0.44  # the published share, about 40 %


def test_block_size_is_explicit_in_voxels_and_too_small_crops_are_refused():
    m = contrast_dropout_views(torch.rand(1, 1, 32, 48, 32), [4], block_size=16, n_views=1)["masks"][0, 0].numpy()
    cells = m.reshape(2, 16, 3, 16, 2, 16).sum(axis=(1, 3, 5))  # 2 x 3 x 2 blocks of 16^3
    assert set(np.unique(cells).tolist()) <= {0, 16**3} and int((cells > 0).sum()) == round(86 / 216 * 12)
    assert block_grid((40, 40, 40), "large", 16) == (16, [2, 2, 2])  # 2 near-equal blocks of 20 voxels per axis
    obj = create_objective("cross_contrast", create_model("segresnet_small", 2), block_size=16)
    assert obj.config["block_size"] == 16
    with pytest.raises(ValueError, match=r"at least 2 blocks of 16 voxels per axis; use block_size <= 12"):
        obj(torch.rand(1, 2, 24, 24, 24), torch.tensor([0]))
    with pytest.raises(ValueError, match="block_size"):
        create_objective("cross_contrast", create_model("segresnet_small", 2), block_size=0)


def test_dropped_voxels_are_zero_and_the_rest_untouched_and_views_differ():
    x = torch.rand(2, 4, 24, 24, 24) + 1.0  # no zeros in the input
    out = contrast_dropout_views(x, [5, 6])
    views, masks, targets = out["views"], out["masks"], out["targets"]
    assert torch.equal(targets, torch.cat([x, x]))
    assert (views[masks] == 0).all() and torch.equal(views[~masks], targets[~masks])
    assert not torch.equal(masks[:2], masks[2:])  # the two views of a sample are masked differently


def test_views_depend_only_on_the_sample_seed():
    x = torch.rand(3, 2, 24, 24, 24)
    whole = contrast_dropout_views(x, [10, 11, 12])["masks"]
    alone = contrast_dropout_views(x[1:2], [11])["masks"]
    assert torch.equal(whole[1], alone[0]) and torch.equal(whole[4], alone[1])


@pytest.mark.parametrize("channels", [2, 4])
def test_terms_match_independent_computations(channels):
    torch.manual_seed(0)
    obj = create_objective("cross_contrast", create_model("segresnet_small", channels),
                           weights={"recon_dropped": 1.0})
    x, seeds = torch.rand(2, channels, 16, 16, 16), torch.tensor([3, 4])
    with torch.no_grad():
        out = obj(x, seeds)
        v = contrast_dropout_views(x, seeds)
        features = obj.model.encode(v["views"])
        recon = obj.heads.reconstruct(features)
        z = obj.heads.projection(features)
    assert set(out) == {"loss", "recon", "recon_dropped", "contrast"}
    assert torch.isclose(out["recon"], (recon - torch.cat([x, x])).abs().mean(), atol=1e-6)
    # dropped-voxel L1: the error of contrast c scored where contrast c was hidden, mean per sample
    per_sample = [(recon[n] - v["targets"][n]).abs()[v["masks"][n]].mean() for n in range(4)]
    assert torch.isclose(out["recon_dropped"], torch.stack(per_sample).mean(), atol=1e-6)
    assert torch.isclose(out["contrast"], ContrastiveLoss(temperature=0.5)(z[:2], z[2:]), atol=1e-6)
    assert torch.isclose(out["loss"], out["recon"] + out["recon_dropped"] + out["contrast"])


def test_default_is_the_papers_whole_volume_l1_plus_contrastive():
    obj = create_objective("cross_contrast", create_model("segresnet_small", 2))
    assert obj.weights == {"recon": 1.0, "recon_dropped": 0.0, "contrast": 1.0}
    assert obj.config["scheme"] == "large"
    assert not any(p.requires_grad for p in obj.heads.rotation_head.parameters())
    with pytest.raises(ValueError, match="scheme"):
        create_objective("cross_contrast", create_model("segresnet_small", 2), scheme="medium")
