"""Evaluation: metrics on hand-made masks and scores, sliding-window inference, evaluation on a cache."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from kit.data.cache import build_cache
from kit.finetune.evaluate import (
    classification_metrics,
    evaluate_classification,
    evaluate_segmentation,
    BRATS_HD95_EMPTY_MM,
    predict_volume,
    predict_whole_volume,
    segmentation_metrics,
    use_whole_volume,
    spacing_from_affine,
)
from kit.finetune import ClassificationModel, FinetuneConfig, finetune
from kit.models import create_model
from kit.data.regions import labels_to_regions

BRATS21 = {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])


def cube(shape=(20, 20, 20), start=(4, 4, 4), side=8):
    m = torch.zeros(shape, dtype=torch.bool)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


# ----------------------------------------------------------------------------- segmentation metrics


def test_dice_of_half_overlapping_cubes():
    a, b = cube(start=(4, 4, 4)), cube(start=(8, 4, 4))  # 8^3 cubes sharing 4 x 8 x 8 voxels
    m = segmentation_metrics(torch.stack([a, a]), torch.stack([b, a]), ["TC", "WT"])
    assert m["dice_TC"] == pytest.approx(2 * 256 / (512 + 512))  # 0.5
    assert m["dice_WT"] == pytest.approx(1.0) and m["hd95_WT"] == 0.0
    assert m["dice_mean"] == pytest.approx(0.75)


@pytest.mark.parametrize("axis, spacing, expected_mm", [(0, (2.0, 1.0, 1.0), 6.0), (2, (2.0, 1.0, 1.5), 4.5),
                                                        (1, (2.0, 1.0, 1.5), 3.0)])
def test_hd95_of_shifted_cube_is_the_shift_in_mm(axis, spacing, expected_mm):
    start = [4, 4, 4]
    start[axis] += 3  # shift by 3 voxels along one axis
    m = segmentation_metrics(cube()[None], cube(start=tuple(start))[None], ["WT"], spacing_mm=spacing)
    assert m["hd95_WT"] == pytest.approx(expected_mm)
    assert m["dice_WT"] == pytest.approx(2 * 5 / 16)  # 5 of 8 slices shared


def test_empty_masks_follow_the_documented_rule():
    empty, full = torch.zeros(1, 10, 10, 10, dtype=torch.bool), cube((10, 10, 10), (2, 2, 2), 4)[None]
    both = segmentation_metrics(empty, empty, ["ET"])
    assert (both["dice_ET"], both["hd95_ET"]) == (1.0, 0.0)
    assert both["hd95_empty"] == 0
    for pred, target in ((empty, full), (full, empty)):
        m = segmentation_metrics(pred, target, ["ET"])
        # BraTS convention: a region empty on one side only scores the image diagonal, 373.13 mm
        assert m["dice_ET"] == 0.0 and m["hd95_ET"] == BRATS_HD95_EMPTY_MM == 373.13
        assert m["hd95_mean"] == 373.13 and m["hd95_empty"] == 1
        old = segmentation_metrics(pred, target, ["ET"], empty_hd95=math.nan)
        assert math.isnan(old["hd95_ET"]) and math.isnan(old["hd95_mean"]) and old["hd95_empty"] == 1
    mixed = segmentation_metrics(torch.cat([empty, full]), torch.cat([full, full]), ["ET", "WT"])
    assert mixed["hd95_mean"] == pytest.approx(373.13 / 2) and mixed["dice_mean"] == 0.5
    assert mixed["hd95_empty"] == 1
    legacy = segmentation_metrics(torch.cat([empty, full]), torch.cat([full, full]), ["ET", "WT"], empty_hd95=math.nan)
    assert legacy["hd95_mean"] == 0.0  # nan HD95 left out of the mean
    with pytest.raises(ValueError, match="differ"):
        segmentation_metrics(empty, torch.zeros(1, 9, 10, 10), ["ET"])


def test_spacing_from_affine_of_a_rotated_grid():
    rotation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 2.0, 3.0])
    assert spacing_from_affine(affine) == pytest.approx((1.5, 2.0, 3.0))


# ----------------------------------------------------------------------------- classification metrics


def test_classification_metrics_by_hand():
    separable = classification_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert separable == {"accuracy": 1.0, "auc": 1.0, "sensitivity": 1.0, "specificity": 1.0, "n": 4}
    constant = classification_metrics([0, 1, 0, 1, 1], [0.3] * 5)
    assert constant["auc"] == pytest.approx(0.5) and constant["sensitivity"] == 0.0 and constant["specificity"] == 1.0
    # pred = [0, 1, 0, 1, 0, 1, 1]: TP 3, FN 1, TN 2, FP 1; 9 of the 12 (pos, neg) pairs ranked right
    m = classification_metrics([0, 0, 0, 1, 1, 1, 1], [0.2, 0.7, 0.4, 0.9, 0.3, 0.6, 0.8])
    assert m["accuracy"] == pytest.approx(5 / 7) and m["auc"] == pytest.approx(9 / 12)
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(2 / 3)
    assert classification_metrics([0, 0, 1], [0.2, 0.6, 0.4], threshold=0.7)["specificity"] == 1.0
    assert math.isnan(classification_metrics([1, 1], [0.2, 0.9])["auc"])  # one class: no AUC


def test_classification_metrics_multiclass():
    y = [0, 1, 2, 2]
    scores = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    m = classification_metrics(y, scores)
    assert m["accuracy"] == 0.75 and m["n"] == 4
    assert m["sensitivity"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["specificity"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    with pytest.raises(ValueError, match="scores"):
        classification_metrics([0, 1], [0.5, 0.5, 0.5])


# ----------------------------------------------------------------------------- inference


def test_sliding_window_matches_a_single_forward_for_a_pointwise_model():
    torch.manual_seed(0)
    net = nn.Conv3d(2, 3, kernel_size=1)
    x = torch.randn(2, 40, 36, 30)
    probs = predict_volume(net, x, roi=16, overlap=0.5, sw_batch_size=4, amp="off")
    assert probs.shape == (3, 40, 36, 30) and probs.device.type == "cpu"
    with torch.no_grad():
        assert torch.allclose(probs, torch.sigmoid(net(x[None]))[0], atol=1e-5)
    # a real backbone with a side (30) that is not a multiple of the roi
    seg = create_model("segresnet_small", in_channels=2, out_channels=3, init_filters=8)
    out = predict_volume(seg, x.numpy(), roi=(16, 16, 16), overlap=0.25)
    assert out.shape == (3, 40, 36, 30) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert seg.training  # the model's mode is restored


# ----------------------------------------------------------------------------- on a cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Four subjects on a 2 x 2 x 2.5 mm grid: a cubic brain, a nested tumour in three of them."""
    folder = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(1)
    entries = []
    for i in range(4):
        label = np.zeros((28, 28, 24), np.uint8)
        if i < 3:
            c = rng.integers(10, 16, size=3)
            label[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 3] = 2
            label[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 4
            label[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1] = 1
        files = []
        for m in ("flair", "t1ce"):
            a = np.zeros(label.shape, np.float32)
            a[3:25, 3:25, 3:21] = 100 + rng.normal(0, 3, (22, 22, 18)) * (i < 3)  # e3: uniform brain
            a[label > 0] += 150 if m == "flair" else 0
            a[label == 4] += 0 if m == "flair" else 200
            nib.save(nib.Nifti1Image(a, AFFINE), folder / f"e{i}_{m}.nii.gz")
            files.append(str(folder / f"e{i}_{m}.nii.gz"))
        nib.save(nib.Nifti1Image(label, AFFINE), folder / f"e{i}_seg.nii.gz")
        entries.append({"subject": f"e{i}", "image": files, "label": str(folder / f"e{i}_seg.nii.gz"),
                        "tumor_present": int(i < 3) if i != 1 else None})
    return build_cache(entries, ["flair", "t1ce"], folder / "cache")


def test_evaluate_segmentation_on_cached_subjects(cache):
    torch.manual_seed(0)
    net = nn.Conv3d(2, 3, kernel_size=1)
    with torch.no_grad():  # flair > brain level -> every region: WT right, TC and ET too large
        net.weight.zero_()
        net.weight[:, 0] = 10.0
        net.bias.fill_(-10.0)
    ev = evaluate_segmentation(net, cache, [0, 2, 3], BRATS21, roi=16, overlap=0.5)
    table = ev.per_subject
    assert list(table["subject"]) == ["e0", "e2", "e3"] and ev.summary["n"] == 3
    assert list(table.columns) == ["subject", "dice_TC", "hd95_TC", "dice_WT", "hd95_WT", "dice_ET", "hd95_ET",
                                   "dice_mean", "hd95_mean", "hd95_empty", "dice_TC_WT",
                                   "ref_voxels_TC", "pred_voxels_TC", "ref_voxels_WT", "pred_voxels_WT",
                                   "ref_voxels_ET", "pred_voxels_ET"]
    # the empty-reference rule: e3 has no tumour; its ET Dice of 1 (BraTS) stays out of dice_ET_present
    assert list(table.ref_voxels_ET > 0) == [True, True, False] and table.loc[2, "dice_ET"] == 1.0
    assert ev.summary["n_ET_absent"] == 1 and ev.summary["false_alarm_ET_absent"] == 0.0
    assert ev.summary["dice_ET_present"] == pytest.approx(table.dice_ET[:2].mean())
    assert ev.summary["dice_ET"] == pytest.approx(table.dice_ET.mean())
    assert ev.summary["dice_ET"] > ev.summary["dice_ET_present"]
    assert ev.summary["dice_TC_WT"] == pytest.approx(((table.dice_TC + table.dice_WT) / 2).mean())
    assert "ref_voxels_ET" not in ev.summary  # voxel counts are per subject only
    assert table.loc[0, "dice_WT"] == pytest.approx(1.0) and table.loc[0, "dice_ET"] < 0.5
    # tumour-free subject: nothing predicted, nothing there -> Dice 1, HD95 0
    assert table.loc[2, "dice_TC"] == 1.0 and table.loc[2, "hd95_WT"] == 0.0
    # the same numbers by hand, with the subject's spacing
    image, label = cache.images()[2], cache.labels()[2]
    probs = predict_volume(net, image, 16, 0.5)
    by_hand = segmentation_metrics(probs > 0.5, labels_to_regions(np.asarray(label), BRATS21) > 0.5,
                                   list(BRATS21), spacing_mm=(2.0, 2.0, 2.5))
    assert table.loc[1, "hd95_TC"] == pytest.approx(by_hand["hd95_TC"]) and by_hand["hd95_TC"] > 0
    assert ev.summary["dice_WT"] == pytest.approx(table["dice_WT"].mean())
    assert ev.summary["hd95_empty"] == int(table["hd95_empty"].sum())


def test_whole_volume_inference_matches_sliding_windows_for_a_pointwise_model(cache):
    net = nn.Conv3d(2, 3, kernel_size=1)
    image = cache.images()[0]
    whole = predict_whole_volume(net, image)
    assert whole.shape == (3, *image.shape[1:])
    assert torch.allclose(whole, predict_volume(net, image, 16, 0.5), atol=1e-5)
    sliding = evaluate_segmentation(net, cache, [0, 1], BRATS21, roi=16)
    for mode in ("whole", "auto"):
        ev = evaluate_segmentation(net, cache, [0, 1], BRATS21, roi=16, inference=mode)
        assert ev.summary["dice_mean"] == pytest.approx(sliding.summary["dice_mean"])
    assert evaluate_segmentation(net, cache, [0], BRATS21, roi=None).summary["n"] == 1
    with pytest.raises(ValueError, match="inference"):
        evaluate_segmentation(net, cache, [0], BRATS21, roi=16, inference="tiles")


def test_whole_volume_pads_to_the_network_multiple_and_crops_back():
    from kit.models import create_model

    net = create_model("segresnet_small", in_channels=2, out_channels=3).eval()
    image = torch.randn(2, 21, 26, 17)
    probs = predict_whole_volume(net, image)
    padded = torch.nn.functional.pad(image, (0, 7, 0, 6, 0, 3))[None]  # (21, 26, 17) -> (24, 32, 24)
    with torch.no_grad():
        expected = torch.sigmoid(net(padded))[0, :, :21, :26, :17]
    assert torch.allclose(probs, expected, atol=1e-5)
    assert use_whole_volume(net, (52, 62, 52)) and not use_whole_volume(net, (200, 200, 200))
    # 'auto' stays with windows when the volume is larger than the training window
    assert not use_whole_volume(net, (52, 62, 52), roi=32) and use_whole_volume(net, (21, 26, 17), roi=32)


def test_evaluate_classification_skips_missing_targets(cache):
    config = FinetuneConfig(task="classification", target="tumor_present", backbone="segresnet_small",
                            model={"init_filters": 8}, steps=2, input_size=16, device="cpu", warmup_steps=0)
    result = finetune(config, cache, [0, 2, 3])
    ev = evaluate_classification(result.model, cache, [0, 1, 2, 3], "tumor_present", result.classes, 16)
    assert list(ev.per_subject["subject"]) == ["e0", "e2", "e3"] and ev.summary["skipped"] == ["e1"]
    assert list(ev.per_subject["y_true"]) == [1, 1, 0]
    assert set(ev.summary) >= {"accuracy", "auc", "sensitivity", "specificity", "n"} and ev.summary["n"] == 3
    scores = ev.per_subject["score"].to_numpy()
    assert np.all((scores > 0) & (scores < 1))
    assert ev.summary["accuracy"] == pytest.approx(np.mean((scores >= 0.5).astype(int) == [1, 1, 0]))
    three = ClassificationModel(create_model("segresnet_small", 2, init_filters=8), n_outputs=3)
    ev3 = evaluate_classification(three, cache, [0, 2, 3], "tumor_present", [0, 1, 2], 16)
    assert {"score_0", "score_1", "score_2"} <= set(ev3.per_subject.columns)
    with pytest.raises(ValueError, match="not among the classes"):
        evaluate_classification(result.model, cache, [0], "tumor_present", ["a", "b"], 16)


def test_the_empty_et_floor_and_the_rule_that_removes_it():
    """20 test subjects, 6 without enhancing tumour, a model that never predicts ET: the BraTS convention
    scores ET Dice 0.30 (6 empty-vs-empty subjects at 1); the rule reports 0 over the 14 with ET, and 6 absent."""
    import pandas as pd

    from kit.finetune.evaluate import empty_reference_summary

    rows = []
    for i in range(20):
        target = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
        if i >= 6:
            target[0, 2:5, 2:5, 2:5] = True
        pred = torch.zeros_like(target)  # never predicts ET
        if i == 0:
            pred[0, 0, 0, 0] = True  # one false alarm on a subject without ET
        m = segmentation_metrics(pred, target, ["ET"])
        rows.append({**m, "ref_voxels_ET": int(target.sum()), "pred_voxels_ET": int(pred.sum())})
    table = pd.DataFrame(rows)
    assert table.dice_ET.mean() == pytest.approx(5 / 20)  # the floor: 5 empty-vs-empty subjects score 1
    rule = empty_reference_summary(table, ["ET"])
    assert rule["dice_ET_present"] == 0.0 and rule["n_ET_absent"] == 6
    assert rule["false_alarm_ET_absent"] == pytest.approx(1 / 6)
