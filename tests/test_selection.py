"""Model selection on a validation split, early stopping, class-balanced foreground crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kit.finetune import FinetuneConfig, LabelledCropDataset, finetune, load_finetuned
from kit.finetune.selection import ModelSelection, binary_cross_entropy

from test_finetune import BRATS21, cache, small  # noqa: F401  (module fixture reused)


def test_model_selection_keeps_the_best_weights_and_stops():
    net = nn.Linear(2, 1)
    sel = ModelSelection(patience=2)
    with torch.no_grad():
        net.weight.fill_(1.0)
    assert sel.update(net, 10, (0.4,))
    with torch.no_grad():
        net.weight.fill_(2.0)
    assert sel.update(net, 20, (0.6,))  # best: weight 2
    with torch.no_grad():
        net.weight.fill_(3.0)
    assert not sel.update(net, 30, (0.5,)) and not sel.should_stop
    assert not sel.update(net, 40, (float("nan"),)) and sel.should_stop  # nan never wins
    sel.restore(net)
    assert torch.all(net.weight == 2.0) and sel.best_step == 20
    # ties on the first component are broken by the second (AUC, then -loss)
    tie = ModelSelection()
    assert tie.update(net, 1, (1.0, -0.5)) and tie.update(net, 2, (1.0, -0.3)) and not tie.update(net, 3, (1.0, -0.4))
    assert tie.best_step == 2 and not tie.should_stop  # patience 0: never stops


def test_binary_cross_entropy_by_hand():
    assert binary_cross_entropy([1, 0], [0.9, 0.2]) == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)
    assert binary_cross_entropy([1], np.array([[0.25, 0.75]])) == pytest.approx(-np.log(0.75))


def test_finetune_selects_the_best_validation_step_and_stops_early(cache):  # noqa: F811
    config = small(steps=12, lr=1e-2, val_every=2, patience=2, inference="whole", pos_fraction=0.9)
    result = finetune(config, cache, [0, 1], regions=BRATS21, val_indices=[2])
    curve = result.val_history
    assert curve and all(h["step"] % 2 == 0 for h in curve) and result.val_subjects == ["s2"]
    scores = [h["val_dice_mean"] for h in curve]
    best = curve[int(np.argmax(scores))]  # first maximum: later ties do not replace it
    assert result.summary["best_step"] == best["step"] and best["best"]
    assert result.summary["best_val"] == pytest.approx(max(scores))
    # early stopping: either the budget was used or `patience` validations brought nothing
    if result.summary["stopped_early"]:
        assert result.summary["steps_run"] < 12 and curve[-1]["step"] - best["step"] == 2 * 2
    # the returned model is the selected one: re-validating it gives the best score
    from kit.finetune.selection import segmentation_validator

    score, _ = segmentation_validator(cache, [2], BRATS21, 16, inference="whole")(result.model)
    assert score[0] == pytest.approx(max(scores), abs=1e-6)
    with pytest.raises(ValueError, match="disjoint"):
        finetune(config, cache, [0, 1], regions=BRATS21, val_indices=[1])


def test_classification_validation_and_checkpoint_keep_the_curve(cache, tmp_path):  # noqa: F811
    config = small(task="classification", target="tumor_present", input_size=16, steps=4, val_every=2)
    result = finetune(config, cache, [0, 3, 1], classes=[0, 1], val_indices=[2])
    assert [h["step"] for h in result.val_history] == [2, 4]
    assert {"val_auc", "val_accuracy", "val_loss"} <= set(result.val_history[0])
    _, extra = load_finetuned(result.save(tmp_path / "c.pt"))
    assert [(h["step"], h["val_loss"]) for h in extra["val_history"]] == [(h["step"], h["val_loss"]) for h in result.val_history]
    assert extra["val_subjects"] == ["s2"]


def test_label_balanced_crops_reach_thin_labels():
    image = np.zeros((1, 40, 40, 40), np.float32)
    label = np.zeros((1, 40, 40, 40), np.uint8)
    label[0, 2:30, 2:30, 2:30] = 2  # big region
    label[0, 36, 36, 36] = 4  # one voxel far away
    counts = {}
    for mode in ("voxel", "label"):
        ds = LabelledCropDataset([image], [label], {"ET": [4]}, 8, pos_fraction=1.0, fg_sampling=mode)
        counts[mode] = sum(bool(ds[(0, k)][1].sum() > 0) for k in range(200))
    assert counts["voxel"] < 5 and 70 < counts["label"] < 130  # about half the crops under 'label'
    with pytest.raises(ValueError, match="fg_sampling"):
        FinetuneConfig(fg_sampling="region")
