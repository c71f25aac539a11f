"""Evaluation: whole-volume sliding-window inference, Dice / HD95 per region, classification metrics.

Segmentation metrics are computed per subject and region on the thresholded sigmoid channels, with
MONAI's ``DiceMetric`` and ``HausdorffDistanceMetric(percentile=95)`` (distances in mm, from the
voxel spacing of the subject's affine). Empty masks have no surface, so they are decided here,
before MONAI is asked:

============================  =======  ==========
prediction / target           Dice     HD95 (mm)
============================  =======  ==========
both empty                    1.0      0.0
one empty, the other not      0.0      373.13
both non-empty                MONAI    MONAI
============================  =======  ==========

373.13 mm is the BraTS challenge's convention (the diagonal of the 240 x 240 x 155 mm image, the
largest distance possible), so a missed or hallucinated region is penalised instead of dropped
from the average; the per-subject ``hd95_empty`` counts the regions so scored and the summary
sums it, so a reader sees how much of ``hd95_mean`` is the convention. ``empty_hd95=math.nan``
gives the older reporting (such regions left out of ``hd95_mean``).

**The empty-reference rule** (:func:`empty_reference_summary`). The per-subject ``dice_<R>`` keeps
the BraTS convention above (both empty: 1), so ``dice_<R>`` and ``dice_mean`` stay comparable with
the challenge and with earlier results. But averaged over a test set where some subjects have no
enhancing tumour, that convention puts a floor under ``dice_ET`` that says nothing about
segmentation: with 6 of 20 test subjects without ET, a model that never predicts ET scores
``dice_ET`` 0.30. The study therefore also reports, per region R:

- ``dice_<R>_present``: the mean Dice over the subjects whose reference **has** R (the others are
  excluded: Dice of an empty reference measures detection, not overlap);
- ``n_<R>_absent``: how many evaluated subjects have no R in the reference (the rule's reach);
- ``false_alarm_<R>_absent``: the share of those subjects in which the model predicted R anyway
  (nan when there are none), so the excluded subjects' errors are counted, not hidden;

and ``dice_TC_WT``, the mean of TC and WT (regions every tumour has), beside ``dice_mean``.

Inference itself (sliding windows, whole volumes) lives in :mod:`kit.models.inference`.

Classification metrics: accuracy, ROC AUC (``monai.metrics.compute_roc_auc``), sensitivity and
specificity at a threshold, for binary scores (probability of the positive class) or class
probabilities (macro one-vs-rest).

Example:
    >>> import torch
    >>> a = torch.zeros(1, 8, 8, 8, dtype=torch.bool); a[0, :4] = True
    >>> b = torch.zeros_like(a); b[0, 2:6] = True
    >>> segmentation_metrics(a, b, ["WT"])["dice_WT"]
    0.5
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.data.regions import labels_to_regions
from kit.devices import resolve_device
from kit.models.inference import (
    MAX_WHOLE_VOXELS,
    eval_autocast,
    model_device,
    predict_volume,
    predict_whole_volume,
    use_whole_volume,
)
from kit.tensors import to_numpy

__all__ = [
    "Evaluation",
    "BRATS_HD95_EMPTY_MM",
    "spacing_from_affine",
    "segmentation_metrics",
    "classification_metrics",
    "evaluate_segmentation",
    "evaluate_classification",
    "classification_scores",
    "empty_reference_summary",
]


# BraTS scoring: HD95 when exactly one of prediction / truth is empty (the image diagonal in mm).
BRATS_HD95_EMPTY_MM = 373.13


@dataclass
class Evaluation:
    """Per-subject rows and their summary.

    Attributes:
        per_subject: pandas DataFrame, one row per subject (``subject`` column first).
        summary: dict of aggregate metrics (means for segmentation; :func:`classification_metrics`
            for classification) and ``n``.
    """

    per_subject: Any
    summary: dict = field(default_factory=dict)


def spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes of a 4x4 affine (``nibabel.affines.voxel_sizes``).

    Example:
        >>> spacing_from_affine(np.diag([2.0, 1.0, 3.0, 1.0]))
        (2.0, 1.0, 3.0)
    """
    from nibabel.affines import voxel_sizes

    return tuple(float(s) for s in voxel_sizes(np.asarray(affine, dtype=float)))


def _as_bool_masks(masks: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(masks)) if not torch.is_tensor(masks) else masks.detach().cpu()
    if t.ndim != 4:
        raise ValueError(f"segmentation_metrics: {what} must be (R, X, Y, Z) masks, got shape {tuple(t.shape)}")
    return t.bool() if t.dtype == torch.bool else t > 0.5


def segmentation_metrics(
    pred_masks: Any,
    target_masks: Any,
    region_names: Sequence[str],
    spacing_mm: Sequence[float] | None = None,
    empty_hd95: float = BRATS_HD95_EMPTY_MM,
) -> dict[str, float]:
    """Dice and HD95 (mm) per region of one subject (see the module docstring for empty masks).

    Args:
        pred_masks: (R, X, Y, Z) binary masks (bool, or values thresholded at 0.5).
        target_masks: (R, X, Y, Z) binary masks, the same regions in the same order.
        region_names: R names, used in the keys.
        spacing_mm: voxel size along X, Y, Z (default 1 mm); HD95 is in these units.
        empty_hd95: HD95 of a region empty on exactly one side (BraTS: 373.13 mm; nan leaves such
            regions out of ``hd95_mean``).

    Returns:
        ``{'dice_<name>', 'hd95_<name>' for each region, 'dice_mean', 'hd95_mean', 'hd95_empty'}``;
        ``hd95_mean`` averages the regions with a finite HD95 (nan when none has one);
        ``hd95_empty`` counts the regions empty on exactly one side.

    Example:
        >>> a = torch.zeros(1, 10, 10, 10, dtype=torch.bool); a[0, 2:6, 2:6, 2:6] = True
        >>> b = torch.zeros_like(a); b[0, 5:9, 2:6, 2:6] = True   # shifted 3 voxels along X
        >>> segmentation_metrics(a, b, ["WT"], spacing_mm=(2.0, 1.0, 1.0))["hd95_WT"]
        6.0
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    pred, target = _as_bool_masks(pred_masks, "pred_masks"), _as_bool_masks(target_masks, "target_masks")
    if pred.shape != target.shape:
        raise ValueError(f"segmentation_metrics: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    names = [str(n) for n in region_names]
    if len(names) != pred.shape[0]:
        raise ValueError(f"segmentation_metrics: {len(names)} region names for {pred.shape[0]} channels")
    spacing = [1.0, 1.0, 1.0] if spacing_mm is None else [float(s) for s in spacing_mm]
    dice_metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    out: dict[str, float] = {}
    n_empty = 0
    for c, name in enumerate(names):
        p, t = pred[c], target[c]
        p_any, t_any = bool(p.any()), bool(t.any())
        if not p_any and not t_any:
            dice, hd95 = 1.0, 0.0
        elif not p_any or not t_any:
            dice, hd95 = 0.0, float(empty_hd95)
            n_empty += 1
        else:
            pb, tb = p[None, None].float(), t[None, None].float()
            dice = float(dice_metric(pb, tb)[0, 0])
            with warnings.catch_warnings():  # MONAI 1.6 calls its own deprecated argument internally
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
                hd95 = float(hd_metric(pb, tb, spacing=spacing)[0, 0])
        out[f"dice_{name}"], out[f"hd95_{name}"] = dice, hd95
    dices = [out[f"dice_{n}"] for n in names]
    hds = [out[f"hd95_{n}"] for n in names if math.isfinite(out[f"hd95_{n}"])]
    out["dice_mean"] = float(np.mean(dices))
    out["hd95_mean"] = float(np.mean(hds)) if hds else math.nan
    out["hd95_empty"] = n_empty
    return out


def classification_metrics(y_true: Sequence[int], scores: Any, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, ROC AUC, sensitivity, specificity and n of a classifier's scores.

    Args:
        y_true: N class indices (binary: 0 negative, 1 positive).
        scores: binary: N probabilities of the positive class (predicted positive when
            ``score >= threshold``); multi-class: (N, K) class probabilities (predicted class = argmax).
        threshold: decision threshold of binary scores.

    Returns:
        ``{'accuracy', 'auc', 'sensitivity', 'specificity', 'n'}``. Binary: sensitivity = TP / (TP + FN),
        specificity = TN / (TN + FP). Multi-class: AUC, sensitivity (recall) and specificity are
        macro averages of one-vs-rest over the classes present in ``y_true``. A value that cannot be
        computed (AUC with one class only, sensitivity without positives) is nan.

    Example:
        >>> m = classification_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
        >>> m["accuracy"], m["auc"], m["sensitivity"], m["specificity"]
        (0.5, 0.75, 0.5, 0.5)
    """
    from monai.metrics import compute_roc_auc

    y = np.asarray(y_true, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64)
    n = int(y.size)
    if n == 0:
        raise ValueError("classification_metrics: no samples")
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape[0] != n:
        raise ValueError(f"classification_metrics: {s.shape[0]} scores for {n} labels")
    nan = math.nan
    if s.ndim == 1:
        if not set(np.unique(y)) <= {0, 1}:
            raise ValueError(f"classification_metrics: binary scores need labels in {{0, 1}}, got {sorted(set(y))}")
        pred = (s >= threshold).astype(np.int64)
        tp, tn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
        fp, fn = int(((pred == 1) & (y == 0)).sum()), int(((pred == 0) & (y == 1)).sum())
        auc = float(compute_roc_auc(torch.as_tensor(s), torch.as_tensor(y))) if len(np.unique(y)) == 2 else nan
        return {
            "accuracy": (tp + tn) / n,
            "auc": auc,
            "sensitivity": tp / (tp + fn) if tp + fn else nan,
            "specificity": tn / (tn + fp) if tn + fp else nan,
            "n": n,
        }
    if s.ndim != 2:
        raise ValueError(f"classification_metrics: scores must be (N,) or (N, K), got shape {s.shape}")
    k = s.shape[1]
    pred = s.argmax(axis=1)
    present = [c for c in range(k) if (y == c).any()]
    recalls = [float((pred[y == c] == c).mean()) for c in present]
    specificities = [float((pred[y != c] != c).mean()) for c in present if (y != c).any()]
    aucs = []
    for c in present:
        binary = (y == c).astype(np.int64)
        if 0 < binary.sum() < n:
            aucs.append(float(compute_roc_auc(torch.as_tensor(s[:, c]), torch.as_tensor(binary))))
    return {
        "accuracy": float((pred == y).mean()),
        "auc": float(np.mean(aucs)) if aucs else nan,
        "sensitivity": float(np.mean(recalls)) if recalls else nan,
        "specificity": float(np.mean(specificities)) if specificities else nan,
        "n": n,
    }


def evaluate_segmentation(
    model: nn.Module,
    cache,
    indices: Sequence[int],
    regions: Mapping[str, Sequence[int]],
    roi: int | Sequence[int] | None,
    *,
    overlap: float = 0.5,
    sw_batch_size: int | None = None,
    threshold: float = 0.5,
    amp: str = "auto",
    device: str | None = None,
    progress: bool = False,
    inference: str = "sliding",
    max_whole_voxels: int = MAX_WHOLE_VOXELS,
    empty_hd95: float = BRATS_HD95_EMPTY_MM,
) -> Evaluation:
    """Dice and HD95 per region for the cached subjects ``indices`` (whole volumes).

    Metrics are computed in the cache's brain-cropped grid, which holds every labelled voxel, so
    they equal those in the original grid. HD95 uses each subject's voxel spacing (its affine).

    Args:
        model: segmentation network with one sigmoid channel per region.
        cache: :class:`kit.data.cache.CacheIndex` with labels.
        indices: subjects to evaluate (positions in ``cache.entries``).
        regions: region name -> label values, the definition the model was trained with.
        roi, overlap, sw_batch_size, amp: see :func:`predict_volume` (``roi=None``: whole volume).
        threshold: probability above which a voxel is in a region.
        inference: 'sliding' (windows of ``roi``), 'whole' (:func:`predict_whole_volume`) or 'auto'
            (whole when the padded volume fits in ``roi`` and in ``max_whole_voxels``, else sliding).
        empty_hd95: see :func:`segmentation_metrics`.
        device: move the model there first ('auto', 'cpu', 'cuda'); None keeps it where it is.
        progress: tqdm bar over subjects.

    Returns:
        :class:`Evaluation`: per-subject ``subject, dice_<region>..., hd95_<region>..., dice_mean,
        hd95_mean, hd95_empty``, ``dice_TC_WT`` (with BraTS regions) and the voxel counts
        ``ref_voxels_<region>``, ``pred_voxels_<region>``; summary = column means (HD95 over finite
        values; voxel counts left out), ``n``, ``hd95_empty`` summed (regions scored by the
        empty-mask convention) and the empty-reference rule (:func:`empty_reference_summary`).

    Example:
        >>> ev = evaluate_segmentation(result.model, cache, test_idx, result.regions, roi=64)  # doctest: +SKIP
        >>> ev.summary["dice_mean"]  # doctest: +SKIP
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if inference not in ("sliding", "whole", "auto"):
        raise ValueError(f"evaluate_segmentation: inference must be 'sliding', 'whole' or 'auto', got {inference!r}")
    if roi is None:
        inference = "whole"
    if device is not None:
        model.to(resolve_device(device))
    images, labels = cache.images(), cache.labels()
    names = list(regions)
    rows = []
    for i in tqdm([int(i) for i in indices], disable=not progress, desc="evaluate", unit="subject"):
        entry = cache.entries[i]
        if labels[i] is None:
            raise ValueError(f"evaluate_segmentation: subject {entry['subject']} in {cache.root} has no label")
        whole = inference == "whole" or (inference == "auto" and use_whole_volume(model, images[i].shape[1:], max_whole_voxels, roi))
        if whole:
            probs = predict_whole_volume(model, images[i], amp=amp)
        else:
            probs = predict_volume(model, images[i], roi, overlap, sw_batch_size, amp=amp)
        target = labels_to_regions(np.asarray(labels[i]), regions) > 0.5
        spacing = spacing_from_affine(entry["affine"]) if entry.get("affine") is not None else None
        pred = probs > threshold
        row = {"subject": str(entry["subject"]), **segmentation_metrics(pred, target, names, spacing, empty_hd95)}
        if "TC" in names and "WT" in names:
            row["dice_TC_WT"] = (row["dice_TC"] + row["dice_WT"]) / 2
        for c, name in enumerate(names):
            row[f"ref_voxels_{name}"] = int(np.count_nonzero(target[c]))
            row[f"pred_voxels_{name}"] = int(to_numpy(pred[c]).sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    summary: dict[str, float] = {"n": len(rows)}
    for column in table.columns:
        if column != "subject" and not column.startswith(("ref_voxels_", "pred_voxels_")):
            values = table[column].to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            summary[column] = float(finite.mean()) if finite.size else math.nan
    if "hd95_empty" in table:
        summary["hd95_empty"] = int(table["hd95_empty"].sum())
    if rows:
        summary.update(empty_reference_summary(table, names))
    return Evaluation(per_subject=table, summary=summary)


def empty_reference_summary(table: Any, names: Sequence[str]) -> dict[str, float]:
    """The empty-reference rule (module docstring) over a per-subject table of :func:`evaluate_segmentation`.

    Args:
        table: one row per subject with ``dice_<R>``, ``ref_voxels_<R>`` and ``pred_voxels_<R>``
            (voxel counts of region R in the reference and the prediction).
        names: the regions R.

    Returns:
        Per region ``dice_<R>_present`` (mean over subjects with R in the reference; nan when
        none has it), ``n_<R>_absent`` (int) and ``false_alarm_<R>_absent`` (share of those
        subjects with a non-empty prediction; nan when none); plus ``dice_TC_WT`` when both regions exist.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"dice_ET": [1.0, 0.0, 0.6], "ref_voxels_ET": [0, 0, 50], "pred_voxels_ET": [0, 7, 40]})
        >>> s = empty_reference_summary(t, ["ET"])
        >>> s["dice_ET_present"], s["n_ET_absent"], s["false_alarm_ET_absent"]
        (0.6, 2, 0.5)
    """
    out: dict[str, float] = {}
    for name in names:
        absent = table[f"ref_voxels_{name}"].to_numpy() == 0
        dice = table[f"dice_{name}"].to_numpy(dtype=float)
        out[f"dice_{name}_present"] = float(dice[~absent].mean()) if (~absent).any() else math.nan
        out[f"n_{name}_absent"] = int(absent.sum())
        predicted = table[f"pred_voxels_{name}"].to_numpy()[absent] > 0
        out[f"false_alarm_{name}_absent"] = float(predicted.mean()) if absent.any() else math.nan
    if "dice_TC_WT" in table:
        out["dice_TC_WT"] = float(table["dice_TC_WT"].mean())
    return out


@torch.no_grad()
def classification_scores(model: nn.Module, volumes: torch.Tensor, amp: str = "auto") -> np.ndarray:
    """Scores of a classifier on a batch ``(B, C, *size)``: the positive-class probability (B,) for a
    single-logit (binary) model, else softmax probabilities (B, K)."""
    device = model_device(model)
    with eval_autocast(model, device, amp):
        logits = model(volumes.to(device)).float()
    if logits.shape[1] == 1:
        return to_numpy(torch.sigmoid(logits[:, 0]))
    return to_numpy(torch.softmax(logits, dim=1))


def evaluate_classification(
    model: nn.Module,
    cache,
    indices: Sequence[int],
    target: str,
    classes: Sequence[Any],
    input_size: int | Sequence[int],
    *,
    threshold: float = 0.5,
    batch_size: int = 2,
    amp: str = "auto",
    device: str | None = None,
) -> Evaluation:
    """Classification metrics of ``model`` on the cached subjects ``indices``.

    Each volume goes through :func:`kit.finetune.classification_input` (the training
    preprocessing, without augmentation). Subjects whose ``target`` value is missing are skipped
    (listed in ``summary['skipped']``); a value outside ``classes`` raises.

    Args:
        model: :class:`kit.finetune.ClassificationModel` (or any ``(B, C, ...) -> (B, 1 | K)`` logits).
        cache: :class:`kit.data.cache.CacheIndex`.
        indices: subjects to evaluate.
        target: entry field holding the class (e.g. 'tumor_present').
        classes: classes in logit order (``FinetuneResult.classes``); binary: ``classes[1]`` is positive.
        input_size: the classifier's input size.
        threshold: decision threshold for binary scores.
        batch_size: volumes per forward pass.
        amp, device: see :func:`evaluate_segmentation`.

    Returns:
        :class:`Evaluation`: per-subject ``subject, y_true, score`` (binary) or ``score_<class>``
        columns, and ``y_pred``; summary = :func:`classification_metrics` plus ``skipped``.
    """
    import pandas as pd

    from kit.finetune.data import classification_input, is_missing

    if device is not None:
        model.to(resolve_device(device))
    lookup = {str(c): k for k, c in enumerate(classes)}
    images = cache.images()
    kept, skipped = [], []
    for i in [int(i) for i in indices]:
        entry = cache.entries[i]
        value = entry.get(target)
        if is_missing(value):
            skipped.append(str(entry["subject"]))
            continue
        if str(value) not in lookup:
            raise ValueError(f"evaluate_classification: subject {entry['subject']} has {target}={value!r}, "
                             f"not among the classes {list(classes)}")
        kept.append((i, str(entry["subject"]), lookup[str(value)]))
    if not kept:
        raise ValueError(f"evaluate_classification: no subject among {list(indices)} has a value for {target!r}")
    scores = []
    for start in range(0, len(kept), int(batch_size)):
        chunk = kept[start : start + int(batch_size)]
        batch = torch.stack([classification_input(images[i], input_size) for i, _, _ in chunk])
        scores.append(classification_scores(model, batch, amp))
    score = np.concatenate(scores, axis=0)
    y_true = [k for _, _, k in kept]
    table = pd.DataFrame({"subject": [s for _, s, _ in kept], "y_true": y_true})
    if score.ndim == 1:
        table["score"] = score
        table["y_pred"] = (score >= threshold).astype(int)
    else:
        for k, c in enumerate(classes):
            table[f"score_{c}"] = score[:, k]
        table["y_pred"] = score.argmax(axis=1)
    summary = {**classification_metrics(y_true, score, threshold), "skipped": skipped}
    return Evaluation(per_subject=table, summary=summary)
