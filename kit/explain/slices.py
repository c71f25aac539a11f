"""Slice-level saliency of the 2D tumour-present classifiers (notebook 05 on a run of a 2D objective).

The classifiers kept by notebook 04's 2D path (:func:`kit.finetune.slice_task.save_slice_classifier`)
record their slice settings and test subjects; here their test slices are rebuilt from the cache, the
cases picked (per test subject with a tumour, the curated slice with the largest tumour area), and
every method of :func:`kit.explain.saliency_map` explains each case on the classifier's own input
grid, scored with :func:`kit.explain.score_saliency` (2D: areas instead of volumes). The lesion mask
goes through the same resize and padding as the image (:func:`kit.data.slices.fit_slice`).

Example:
    >>> model, extra = load_finetuned("runs/x/04_finetune/models/tumor_present_2d__moco_v3-stage1+2.pt")  # doctest: +SKIP
    >>> test = slice_test_dataset(cache, "runs/x/01_curation/slices.csv", extra, cohort="tumor")  # doctest: +SKIP
    >>> rows, maps = explain_slices({"moco_v3:stage1+2": model}, test, slice_cases(test, 4), ["gradcam"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from kit.data.slices import SliceDataset, fit_slice
from kit.explain.localisation import score_saliency
from kit.explain.saliency import saliency_map
from kit.tensors import to_numpy

__all__ = ["slice_test_dataset", "slice_classifier_auc", "slice_cases", "slice_on_grid", "explain_slices"]


def slice_test_dataset(cache: Any, slices: Any, extra: Mapping[str, Any], cohort: str | None = None) -> SliceDataset:
    """The test slices of a kept 2D classifier: its ``extra['slices']`` settings on its ``test_subjects``.

    Raises:
        ValueError: ``extra`` is not a 2D slice classifier's (no ``spatial_dims`` 2 / ``slices``).

    Example:
        >>> test = slice_test_dataset(cache, "runs/x/01_curation/slices.csv", extra, cohort="tumor")  # doctest: +SKIP
    """
    if extra.get("spatial_dims") != 2 or "slices" not in extra:
        raise ValueError("slice_test_dataset: not a 2D slice classifier (extra lacks spatial_dims 2 and slices)")
    spec = extra["slices"]
    modalities = list(spec["modalities"])
    channels: str | int = "all" if modalities == list(cache.modalities) else modalities[0]
    if channels != "all" and len(modalities) != 1:
        raise ValueError(f"slice_test_dataset: contrasts {modalities} are neither all of the cache's nor one")
    return SliceDataset(cache, slices, axis=int(spec["axis"]), cohort=cohort, channels=channels, size=int(spec["size"]),
                        curated=bool(spec.get("curated", True)), subjects=list(extra["test_subjects"]))


def slice_classifier_auc(model: torch.nn.Module, test: SliceDataset, target: str = "tumor_present") -> dict[str, float]:
    """Test metrics (``auc``, ``accuracy``, ...) of a slice classifier on ``test`` (every slice of it).

    Example:
        >>> slice_classifier_auc(model, test)["auc"]  # doctest: +SKIP
        0.93
    """
    from kit.finetune.evaluate import classification_metrics
    from kit.finetune.slice_task import slice_scores, slice_targets

    rows, targets, _ = slice_targets(test, target)
    return {k: float(v) for k, v in classification_metrics(targets, slice_scores(model, test, rows)).items()
            if isinstance(v, (int, float, np.floating, np.integer))}


def slice_cases(test: SliceDataset, n_cases: int) -> list[int]:
    """Rows of ``test`` to explain: per subject (in order) its slice with the largest tumour area, at most ``n_cases``.

    Example:
        >>> slice_cases(test, 2)  # doctest: +SKIP
        [14, 51]
    """
    rows: list[int] = []
    best: dict[str, tuple[int, int]] = {}
    for row in range(len(test)):
        label = test.label_slice(row)
        area = int(np.count_nonzero(label)) if label is not None else 0
        subject = str(test.index.subject.iloc[row])
        if area > 0 and area > best.get(subject, (0, -1))[0]:
            best[subject] = (area, row)
    for subject in dict.fromkeys(test.index.subject.astype(str)):
        if subject in best:
            rows.append(best[subject][1])
    return rows[: int(n_cases)]


def slice_on_grid(test: SliceDataset, row: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, tuple[float, float]]:
    """One case on the classifier's grid: ``(image (C, S, S), lesion bool (S, S), brain bool (S, S), spacing mm (2,))``.

    The lesion mask is resized and padded as the image (then thresholded at 0.5); the brain is the
    image's nonzero pixels; the pixel size is the cache's in-plane voxel size times the resize factor.

    Example:
        >>> image, lesion, brain, spacing = slice_on_grid(test, 14)  # doctest: +SKIP
    """
    image = test[row]
    label = test.label_slice(row)
    raw = test.raw_slice(row)
    lesion = to_numpy(fit_slice((np.asarray(label) > 0).astype(np.float32)[None], test.size)[0]) > 0.5
    brain = to_numpy(image.abs().sum(0)) > 1e-3
    i = int(test.index.cache_index.iloc[row])
    voxel = np.abs(np.diag(np.asarray(test.cache.entries[i]["affine"], dtype=float)))[:3]
    in_plane = [float(voxel[d]) for d in range(3) if d != test.axis]
    scale = max(raw.shape[1:]) / test.size
    return image, lesion, brain, (in_plane[0] * scale, in_plane[1] * scale)


def explain_slices(
    classifiers: Mapping[str, torch.nn.Module],
    test: SliceDataset,
    rows: Sequence[int],
    methods: Sequence[str],
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    dilate_mm: float = 5.0,
) -> tuple[pd.DataFrame, dict[tuple[str, str, str], np.ndarray]]:
    """Saliency of every classifier x method x case (the positive class), scored against the tumour.

    Returns:
        ``(table, maps)``: one row per init, method and case (``case`` = ``'<subject>:<slice>'``) with
        the :func:`kit.explain.score_saliency` columns; ``maps[(init, method, case)]`` the ``(S, S)`` map.

    Example:
        >>> table, maps = explain_slices({"scratch": model}, test, [14], ["vanilla"])  # doctest: +SKIP
    """
    out, maps = [], {}
    for row in rows:
        image, lesion, brain, spacing = slice_on_grid(test, int(row))
        case = f"{test.index.subject.iloc[int(row)]}:{int(test.index.slice.iloc[int(row)])}"
        for init, model in classifiers.items():
            positive = getattr(model, "n_outputs", 1) == 1
            for method in methods:
                kwargs = dict((method_kwargs or {}).get(method, {}))
                sal = saliency_map(model, image[None], method, target=0 if positive else 1, **kwargs)
                scores = score_saliency(sal, lesion, brain_mask=brain, spacing_mm=spacing, dilate_mm=dilate_mm)
                out.append({"init": init, "method": method, "case": case, **scores})
                maps[(init, method, case)] = sal
    return pd.DataFrame(out), maps
