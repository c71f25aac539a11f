"""Saliency methods on real tiny models whose evidence region is known, and the localisation metrics.

The "box model" is a real 3D CNN (conv 3x3x3 -> ReLU -> strided conv 3x3x3 -> ReLU -> pooling ->
linear) that sees its input only through a known box: its logit depends on no voxel outside the
box. Every saliency method must therefore put its mass there, and the localisation metrics must
say so; random smooth maps must score at the box's volume share.
"""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from kit.explain import (
    LOCALISATION_COLUMNS,
    SALIENCY_METHODS,
    SegmentationScore,
    default_target_layer,
    dilate,
    localisation_table,
    mass_in_region,
    pointing_game,
    random_baseline,
    saliency_map,
    score_saliency,
    summarise_localisation,
)

SHAPE = (24, 24, 24)
# off-centre and different per axis, so a transposed or flipped map cannot pass
BOX = (slice(4, 12), slice(12, 20), slice(6, 14))
OCCLUSION = {"mask_size": 6, "overlap": 0.5}
FAST = {
    "vanilla": {},
    "smoothgrad": {"n_samples": 8},
    "integrated_gradients": {"n_steps": 16},
    "gradcam": {},
    "gradcampp": {},
    "occlusion": OCCLUSION,
}


def box_mask(box=BOX, shape=SHAPE):
    mask = np.zeros(shape, bool)
    mask[box] = True
    return mask


def grow_box(mask, voxels):
    """Chebyshev dilation (a cube), the reach of box-shaped occlusion windows."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool), iterations=voxels)


class BoxModel(nn.Module):
    """Binary classifier (K=1) whose logit is a positive, monotone function of the voxels in BOX only.

    Weights are positive, so the logit rises with intensity in the box and occluding any of it
    (pulling it towards 0) lowers the score. The box is applied to the input, and the pooling
    averages only the features over the box (at the strided conv's grid).
    """

    def __init__(self, out_features: int = 1) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv3d(4, 8, 3, stride=2, padding=1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, out_features)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.rand(self.conv1.weight.shape, generator=gen) / 27)
            self.conv2.weight.copy_(torch.rand(self.conv2.weight.shape, generator=gen) / 27)
            self.fc.weight.copy_(torch.rand(self.fc.weight.shape, generator=gen) + 0.5)
            self.fc.bias.fill_(-2.0)  # logit near 1: the sigmoid is not saturated, occlusion can move it
            if out_features > 1:  # class 1 = the box class, class 0 = its negation
                self.fc.weight[0].neg_()
        box = torch.zeros(SHAPE)
        box[BOX] = 1.0
        self.register_buffer("box", box[None, None])
        self.register_buffer("box_half", F.max_pool3d(self.box, 2))

    def forward(self, x):
        h = F.relu(self.conv1(x * self.box))
        h = self.act(self.conv2(h))
        pooled = (h * self.box_half).flatten(2).sum(2) / self.box_half.sum()
        return self.fc(pooled)


class BoxSegmenter(nn.Module):
    """Segmenter (B, 1, X, Y, Z) -> (B, 2, X, Y, Z) whose region-1 logits depend only on the box."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27)
        box = torch.zeros(SHAPE)
        box[BOX] = 1.0
        self.register_buffer("box", box[None, None])

    def forward(self, x):
        logits = self.conv(x * self.box) * 8.0 - 4.0
        return logits * self.box - 10.0 * (1 - self.box)  # outside the box: confidently background


@pytest.fixture(scope="module")
def model():
    return BoxModel()


@pytest.fixture(scope="module")
def image():
    return torch.rand((1, 1) + SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def maps(model, image):
    return {method: saliency_map(model, image, method, **FAST[method]) for method in SALIENCY_METHODS}


# ------------------------------------------------------------------------------------------------
# Saliency methods find the known region
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", SALIENCY_METHODS)
def test_every_method_returns_a_float32_map_on_the_input_grid(maps, method):
    sal = maps[method]
    assert isinstance(sal, np.ndarray) and sal.dtype == np.float32 and sal.shape == SHAPE
    assert np.isfinite(sal).all() and sal.max() > 0


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad", "integrated_gradients"])
def test_gradient_methods_put_the_mass_in_the_box(maps, method):
    sal, box = maps[method], box_mask()
    assert mass_in_region(sal, box) >= 0.9
    assert pointing_game(sal, box)
    # the metric discriminates: a same-sized box elsewhere gets (almost) nothing
    elsewhere = box_mask((slice(14, 22), slice(2, 10), slice(14, 22)))
    assert mass_in_region(sal, elsewhere) < 0.05


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_cam_methods_find_the_box_at_their_layer_resolution(maps, method):
    # The CAM lives on conv2's grid (stride 2) and is upsampled trilinearly; conv2's 3x3x3 kernel
    # spreads each box feature one feature voxel = 2 input voxels outwards, so the exact box is
    # blurred by about 2 voxels: require most mass in the box and nearly all in the box + 2 mm.
    sal, box = maps[method], box_mask()
    assert mass_in_region(sal, box) >= 0.5
    assert mass_in_region(sal, dilate(box, 2.0, 1.0)) >= 0.9
    assert pointing_game(sal, box)


def test_occlusion_finds_the_box_and_higher_means_more_important(model, image, maps):
    # A voxel's value averages the occlusion windows (cubes of side m) that cover it, and such a
    # window can overlap the box only if the voxel lies within m - 1 voxels (Chebyshev) of it: the
    # box is blurred by up to m - 1 voxels (most weight nearer, as MONAI's Gaussian occlusion hits
    # window centres). So: most mass in the box itself (chance is 0.04), all of it in the reach.
    sal, box = maps["occlusion"], box_mask()
    reach = OCCLUSION["mask_size"] - 1
    assert mass_in_region(sal, box) >= 0.5
    assert mass_in_region(sal, grow_box(box, reach)) >= 0.99
    assert pointing_game(sal, box)
    # sign: occluding the box lowers the probability, so the map is positive there, ~0 far away,
    # and no drop exceeds the unoccluded probability
    with torch.no_grad():
        p_ref = torch.sigmoid(model(image)).item()
    assert sal[box].mean() > 0 and sal.max() <= p_ref
    far = ~grow_box(box, reach)
    assert np.abs(sal[far]).max() < 1e-5


def test_integrated_gradients_uses_a_zero_baseline(model, image, maps):
    # completeness: attributions sum to f(x) - f(0); all are >= 0 for this monotone model, so the
    # sum of |attributions| must match too (a different baseline would not)
    with torch.no_grad():
        delta = (model(image) - model(torch.zeros_like(image))).item()
    assert maps["integrated_gradients"].sum() == pytest.approx(delta, rel=0.05)


def test_gradcam_upsamples_a_strided_layer_to_the_input_grid(model, image):
    assert default_target_layer(model) == "conv2"
    assert default_target_layer(model, image) == "conv2"
    coarse = saliency_map(model, image, "gradcam", target_layer="conv2")
    fine = saliency_map(model, image, "gradcam", target_layer="conv1")
    assert coarse.shape == fine.shape == SHAPE
    assert mass_in_region(fine, dilate(box_mask(), 1.0, 1.0)) >= 0.95


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_cams_match_monai_and_survive_inplace_residuals(model, image, maps, method):
    from monai.visualize import GradCAM, GradCAMpp

    # same numbers as MONAI's own class on a copy without in-place ops (where MONAI works)
    plain = BoxModel()
    plain.act.inplace = False
    cam_class = GradCAM if method == "gradcam" else GradCAMpp
    reference = cam_class(plain, target_layers="conv2", postprocessing=lambda t: t)(image.clone().requires_grad_(True))
    np.testing.assert_allclose(maps[method], reference[0, 0].detach().numpy(), rtol=1e-5, atol=1e-8)

    class Residual(nn.Module):  # `h += x` right after the target conv, as in ResNet/SegResNet blocks
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 3, padding=1)
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            h = self.conv(x)
            h += x
            return self.fc(h.mean((2, 3, 4)))

    torch.manual_seed(0)
    sal = saliency_map(Residual(), image, method, target_layer="conv")
    assert sal.shape == SHAPE and np.isfinite(sal).all()


def test_default_target_layer_follows_execution_order():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1))
            self.unused_decoder = nn.Conv3d(4, 1, 1)  # registered last, never run
            self.head = nn.Conv3d(4, 2, 1)  # 1x1x1 conv after global pooling

        def forward(self, x):
            return self.head(self.encoder(x).mean((2, 3, 4), keepdim=True)).flatten(1)

    net = Classifier()
    assert default_target_layer(net, torch.rand(1, 1, 8, 8, 8)) == "encoder.2"
    with pytest.raises(ValueError, match="no nn.Conv3d"):
        default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(8, 1)))


def test_multiclass_target_selects_the_class(image):
    net = BoxModel(out_features=2)
    with torch.no_grad():
        predicted = int(net(image).argmax(1))
    assert predicted == 1  # the box class wins on a positive image
    default = saliency_map(net, image, "vanilla")
    np.testing.assert_array_equal(default, saliency_map(net, image, "vanilla", target=1))
    occ = saliency_map(net, image, "occlusion", target=1, **OCCLUSION)
    assert pointing_game(occ, box_mask())
    with pytest.raises(ValueError, match="out of range"):
        saliency_map(net, image, "vanilla", target=2)


def test_segmentation_score_explains_a_region(image):
    seg = BoxSegmenter()
    for reduction, method, kw in [
        ("mean_logit_in_region", "vanilla", {}),
        ("mean_logit_in_region", "integrated_gradients", {"n_steps": 8}),
        ("probability_sum", "occlusion", OCCLUSION),
    ]:
        sal = saliency_map(SegmentationScore(seg, region_index=1, reduction=reduction), image, method, **kw)
        assert sal.shape == SHAPE
        # gradients: exactly the box + the 3x3x3 kernel's 1-voxel halo; occlusion: its reach (m - 1)
        reach = OCCLUSION["mask_size"] - 1 if method == "occlusion" else 1
        assert mass_in_region(sal, grow_box(box_mask(), reach)) >= 0.99, (reduction, method)
        assert pointing_game(sal, box_mask(), tolerance_vox=1), (reduction, method)
    score = SegmentationScore(seg, region_index=1)
    assert score(image).shape == (1, 1)
    fixed = score.with_region_from(image)
    assert fixed.region.shape == SHAPE and fixed.region.any()
    assert not fixed.region[~torch.from_numpy(box_mask())].any()


def test_segmentation_score_with_a_monai_unet_and_inner_layer_names():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    unet = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    score = SegmentationScore(unet, region_index=1, reduction="probability_sum")
    layer = default_target_layer(unet, x)
    by_inner_name = saliency_map(score, x, "gradcam", target_layer=layer)
    by_outer_name = saliency_map(score, x, "gradcam", target_layer=f"model.{layer}")
    assert by_inner_name.shape == (16, 16, 16)
    np.testing.assert_allclose(by_inner_name, by_outer_name)
    with pytest.raises(ValueError, match="region logits"):
        SegmentationScore(nn.Sequential(nn.Flatten(), nn.LazyLinear(2)), 0)(x)


# ------------------------------------------------------------------------------------------------
# No side effects, determinism, errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", SALIENCY_METHODS)
def test_model_and_input_are_left_as_they_were(image, method):
    net = BoxModel()
    net.train()
    net.conv1.weight.requires_grad_(False)  # a partly frozen model must stay partly frozen
    net.fc.weight.grad = torch.full_like(net.fc.weight, 7.0)  # pending gradients must survive
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    x = image.clone()
    rng_state = torch.get_rng_state()
    kw = dict(FAST[method])
    if method in ("gradcam", "gradcampp"):
        kw["target_layer"] = "act"  # an inplace ReLU: MONAI switches inplace off for its hook

    saliency_map(net, x, method, **kw)

    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert torch.equal(net.fc.weight.grad, torch.full_like(net.fc.weight, 7.0))
    assert net.conv2.weight.grad is None and net.conv1.weight.grad is None
    assert all(m.training for m in net.modules())
    assert net.act.inplace is True
    for m in net.modules():
        assert not m._forward_hooks and not m._backward_hooks, type(m).__name__
    assert torch.equal(x, image) and not x.requires_grad and x.grad is None
    assert torch.equal(torch.get_rng_state(), rng_state)


@pytest.mark.parametrize("method", ["smoothgrad", "occlusion", "gradcam"])
def test_methods_are_deterministic(model, image, maps, method):
    np.testing.assert_array_equal(saliency_map(model, image, method, **FAST[method]), maps[method])


def test_smoothgrad_seed_changes_the_noise(model, image, maps):
    other = saliency_map(model, image, "smoothgrad", n_samples=8, seed=1)
    assert not np.array_equal(other, maps["smoothgrad"])


def test_bad_requests_raise_clear_errors(model, image):
    with pytest.raises(ValueError, match="unknown saliency method 'lime'.*vanilla.*occlusion"):
        saliency_map(model, image, "lime")
    with pytest.raises(TypeError, match="n_stepz"):
        saliency_map(model, image, "integrated_gradients", n_stepz=4)
    with pytest.raises(ValueError, match=r"\(1, C, X, Y, Z\)"):
        saliency_map(model, image[0], "vanilla")
    with pytest.raises(ValueError, match="not a module.*conv2"):
        saliency_map(model, image, "gradcam", target_layer="layer4")
    with pytest.raises(ValueError, match="logits"):
        saliency_map(BoxSegmenter(), image, "vanilla")


def test_integrated_gradients_without_captum_says_how_to_install(model, image, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match="pip install captum"):
        saliency_map(model, image, "integrated_gradients", n_steps=4)


# ------------------------------------------------------------------------------------------------
# Localisation metrics on hand-made arrays
# ------------------------------------------------------------------------------------------------
def test_mass_in_region_known_answers():
    sal = np.zeros((3, 3, 3))
    mask = np.zeros((3, 3, 3), bool)
    mask[0] = True
    sal[0, 0, 0], sal[0, 1, 1], sal[2, 2, 2] = 2.0, 1.0, 1.0  # 3 of 4 units inside
    assert mass_in_region(sal, mask) == pytest.approx(0.75)
    sal[1, 1, 1] = -10.0  # negative saliency is clipped, not subtracted
    assert mass_in_region(sal, mask) == pytest.approx(0.75)
    assert np.isnan(mass_in_region(np.zeros((3, 3, 3)), mask))
    assert np.isnan(mass_in_region(-np.ones((3, 3, 3)), mask))
    # brain mask: the lesion part outside the brain is not lesion; mass outside the brain still counts
    brain = np.ones((3, 3, 3), bool)
    brain[0, 1, 1] = False
    assert mass_in_region(sal, mask, brain_mask=brain) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="does not match"):
        mass_in_region(sal, mask[:2])
    with pytest.raises(ValueError, match="boolean"):
        mass_in_region(sal, mask * 3)


def test_dilate_in_mm_with_anisotropic_spacing():
    mask = np.zeros((9, 9, 5), bool)
    mask[4, 4, 2] = True
    # radius 3 mm, voxels 1 x 1 x 3 mm: a disc of radius 3 in-plane (29 voxels) plus one voxel
    # above and below (3 mm away); 2 slices away (6 mm) is outside
    grown = dilate(mask, 3.0, (1.0, 1.0, 3.0))
    assert grown.sum() == 31
    assert grown[4, 4, 1] and grown[4, 4, 3] and not grown[4, 4, 0] and not grown[4, 5, 1]
    assert grown[1, 4, 2] and not grown[0, 4, 2]  # 3 mm in, 4 mm out
    assert grown[2, 2, 2] and not grown[2, 1, 2]  # in-plane offsets (2, 2) = 2.83 mm in, (2, 3) = 3.61 mm out
    centre = np.zeros((9, 9, 9), bool)
    centre[4, 4, 4] = True
    assert dilate(centre, 3.0, 1.0).sum() == 123  # lattice points in a ball of radius 3
    assert dilate(mask, 0.0, 1.0).sum() == 1
    assert (dilate(mask, 2.9, 3.0) == mask).all()  # radius under one voxel: unchanged
    with pytest.raises(ValueError, match="spacing"):
        dilate(mask, 1.0, (1.0, 0.0, 1.0))


def test_pointing_game_known_answers_and_ties():
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    sal = np.zeros((5, 5, 5))
    sal[2, 2, 2] = 1.0
    assert pointing_game(sal, mask)
    sal[0, 0, 0] = 2.0
    assert not pointing_game(sal, mask)
    sal[0, 0, 0] = 0.0
    sal[3, 2, 2] = 5.0  # maximum one voxel off the lesion
    assert not pointing_game(sal, mask) and pointing_game(sal, mask, tolerance_vox=1)
    # ties count as a hit only if every maximal voxel is inside
    tie = np.zeros((5, 5, 5))
    tie[2, 2, 2] = tie[0, 4, 0] = 1.0
    assert not pointing_game(tie, mask)
    wide = mask.copy()
    wide[0, 4, 0] = True
    assert pointing_game(tie, wide)
    assert not pointing_game(np.zeros((5, 5, 5)), mask)  # flat map: no maximum to point with
    # a lesion voxel outside the brain cannot be hit
    brain = np.ones((5, 5, 5), bool)
    brain[2, 2, 2] = False
    assert not pointing_game(sal * 0 + (np.arange(125).reshape(5, 5, 5) == 62), mask, brain_mask=brain)


# ------------------------------------------------------------------------------------------------
# Random maps score at chance
# ------------------------------------------------------------------------------------------------
def test_random_smooth_maps_score_at_the_lesion_share():
    grid = np.indices(SHAPE) - 11.5
    brain = (grid**2).sum(0) <= 11.0**2
    lesion = box_mask((slice(6, 14), slice(8, 16), slice(5, 13))) & brain
    share = lesion.sum() / brain.sum()
    masses, hits = [], []
    for seed in range(3):
        base = random_baseline(lesion, brain, n=100, rng=seed, sigma_vox=2.0)
        assert base["share"] == pytest.approx(share)
        assert base["mass"].shape == (100,) and base["pointing_hits"].dtype == bool
        masses.append(base["mass_mean"])
        hits.append(base["pointing_rate"])
        # single seeds scatter, but stay in the neighbourhood of the share
        assert abs(base["mass_mean"] - share) < 0.05
    assert np.mean(masses) == pytest.approx(share, abs=0.02)
    # pointing: 300 maps, binomial sd ~ sqrt(p(1-p)/300) ~ 0.02; allow 3 sd
    assert np.mean(hits) == pytest.approx(share, abs=0.06)
    # reproducible from the seed
    first, second = (random_baseline(lesion, brain, 5, rng=7)["mass"] for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_real_maps_beat_the_random_baseline(maps):
    base = random_baseline(box_mask(), None, n=40, rng=0)
    for method in SALIENCY_METHODS:
        assert mass_in_region(maps[method], box_mask()) > base["mass_mean"] + 5 * base["mass_sd"], method


# ------------------------------------------------------------------------------------------------
# Tables and summaries
# ------------------------------------------------------------------------------------------------
def test_score_saliency_and_localisation_table(maps):
    brain = np.ones(SHAPE, bool)
    brain[:2] = False
    rows = []
    for init in ("scratch", "ssl"):
        for method in ("vanilla", "gradcam"):
            for case in range(3):
                row = score_saliency(
                    maps[method], box_mask(), brain_mask=brain, spacing_mm=(1.0, 1.0, 2.0), dilate_mm=4.0
                )
                rows.append({"init": init, "method": method, "case": f"c{case}", **row})
    df = localisation_table(rows)
    assert list(df.columns[:7]) == list(LOCALISATION_COLUMNS)
    assert list(LOCALISATION_COLUMNS[:3]) == ["init", "method", "case"]
    assert len(df) == 12 and df["pointing_hit"].dtype == bool
    assert (df["mass_in_dilated"] >= df["mass_in_lesion"]).all()
    assert df["random_share"].iloc[0] == pytest.approx(box_mask().sum() / brain.sum())
    with pytest.raises(ValueError, match="row 0 misses.*pointing_hit"):
        localisation_table([{"init": "a", "method": "m", "case": "c", "mass_in_lesion": 0.5}])


def test_summarise_localisation_means_and_seeded_bootstrap():
    values = {"scratch": [0.2, 0.4, 0.6, 0.8], "ssl": [0.9, 0.9, 0.9, float("nan")]}
    rows = [
        {
            "init": init,
            "method": "vanilla",
            "case": f"c{i}",
            "mass_in_lesion": v,
            "pointing_hit": i % 2 == 0,
            "random_share": 0.1,
        }
        for init, vs in values.items()
        for i, v in enumerate(vs)
    ]
    summary = summarise_localisation(localisation_table(rows), by=["init", "method"], n_boot=500, seed=3)
    scratch = summary.set_index("init").loc["scratch"]
    ssl = summary.set_index("init").loc["ssl"]
    assert scratch["n_cases"] == 4
    assert scratch["mass_in_lesion_mean"] == pytest.approx(0.5)
    assert 0.2 <= scratch["mass_in_lesion_ci_low"] < 0.5 < scratch["mass_in_lesion_ci_high"] <= 0.8
    assert scratch["pointing_hit_mean"] == pytest.approx(0.5)
    assert scratch["random_share_mean"] == pytest.approx(0.1)
    # the NaN case (a map without positive mass) is left out; constant values give a zero-width CI
    assert ssl["mass_in_lesion_mean"] == pytest.approx(0.9)
    assert ssl["mass_in_lesion_ci_low"] == pytest.approx(0.9) == ssl["mass_in_lesion_ci_high"]
    assert "mass_in_dilated_mean" not in summary.columns  # absent metric is skipped
    again = summarise_localisation(localisation_table(rows), by=["init", "method"], n_boot=500, seed=3)
    assert again.equals(summary)
    with pytest.raises(ValueError, match="group columns"):
        summarise_localisation(localisation_table(rows), by=["cohort"])


# ------------------------------------------------------------------------------------------------
# 2D slice classifiers (the moco_v3 path): the same methods and metrics on (1, C, H, W) slices
# ------------------------------------------------------------------------------------------------
BOX2D = (slice(3, 9), slice(10, 16))


class BoxModel2D(nn.Module):
    """Binary slice classifier whose logit rises with the intensity inside BOX2D only."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(8, 1)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.rand(self.conv1.weight.shape, generator=gen) / 9)
            self.conv2.weight.copy_(torch.rand(self.conv2.weight.shape, generator=gen) / 9)
            self.fc.weight.copy_(torch.rand(self.fc.weight.shape, generator=gen) + 0.5)
            self.fc.bias.fill_(-2.0)
        box = torch.zeros(20, 20)
        box[BOX2D] = 1.0
        self.register_buffer("box", box[None, None])
        self.register_buffer("box_half", F.max_pool2d(self.box, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x * self.box))))
        return self.fc((h * self.box_half).flatten(2).sum(2) / self.box_half.sum())


@pytest.mark.parametrize("method", SALIENCY_METHODS)
def test_every_method_explains_a_2d_slice_classifier(method):
    model = BoxModel2D()
    x = torch.rand((1, 2, 20, 20), generator=torch.Generator().manual_seed(2))
    options = {**FAST[method], **({"mask_size": 4} if method == "occlusion" else {})}
    sal = saliency_map(model, x, method, **options)
    assert sal.shape == (20, 20) and sal.dtype == np.float32
    box = np.zeros((20, 20), bool)
    box[BOX2D] = True
    reach = ndimage.binary_dilation(box, iterations=3)  # CAMs at half resolution, occlusion windows
    assert mass_in_region(sal, reach) > 0.9, method
    scores = score_saliency(sal, box, brain_mask=np.ones((20, 20), bool), spacing_mm=(2.0, 2.0), dilate_mm=4.0)
    assert 0 < scores["mass_in_lesion"] <= scores["mass_in_dilated"] <= 1 and scores["random_share"] == 36 / 400


def test_2d_target_layer_and_localisation_helpers():
    from kit.models import create_model
    from kit.finetune import ClassificationModel

    net = ClassificationModel(create_model("resnet18_2d", in_channels=2, widen_factor=0.125), n_outputs=1)
    layer = default_target_layer(net, torch.zeros(1, 2, 64, 64))
    assert layer.startswith("backbone.layer4") and isinstance(net.get_submodule(layer), nn.Conv2d)
    assert saliency_map(net, torch.rand(1, 2, 64, 64), "gradcam").shape == (64, 64)
    lesion = np.zeros((12, 12), bool)
    lesion[2:5, 2:5] = True
    assert int(dilate(lesion, 1.0, 1.0).sum()) == 9 + 12  # a disc of radius 1 adds the 4-neighbours
    base = random_baseline(lesion, None, n=3, rng=0)
    assert base["share"] == 9 / 144 and len(base["mass"]) == 3
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        dilate(np.zeros(4, bool), 1.0)
