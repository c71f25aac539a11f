"""A 2D downstream task on curated slices: tumour present vs absent per slice (or the subject's tumour
type on the slices that show it), as a linear probe and a fine-tune, for any initialisation.

This is the evaluation the tailored-curation paper (Computerized Medical Imaging and Graphics 123, 2025)
runs after MoCo v3 on slices: a slice classifier on a 2D backbone. Labels come from the cached label
map (a slice is positive when it holds a voxel > 0), splits are by *subject*
(:func:`kit.data.splits.train_test_split` and nested :func:`labelled_subsets`),
so one subject's slices never sit on both sides.

Training reuses the fine-tuning machinery of :mod:`kit.finetune`: :class:`FinetuneConfig`
(backbone, init, transfer, freeze_encoder, steps, lr ...), :func:`build_finetune_model` (checkpoint
loading with the key report, first-layer transfer by contrast name) and its step loop; only the
dataset (slices instead of volumes) and the scoring are new here.

Example:
    >>> config = FinetuneConfig(task="classification", target="tumor_present", backbone="resnet18_2d",
    ...                         model={"widen_factor": 0.25}, steps=50, batch_size=16, lr=1e-3)  # doctest: +SKIP
    >>> table = slice_study(cache, "runs/x/01_curation/slices.csv", {"scratch": "scratch",
    ...                     "moco_v3": "runs/x/02_stage1/checkpoint.pt"}, config, fractions=(0.25, 1.0))  # doctest: +SKIP
    >>> table.groupby(["init", "mode", "fraction"]).auc.mean()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kit.data.slices import SliceDataset
from kit.data.splits import stratified_order, train_test_split
from kit.devices import resolve_device
from kit.finetune.evaluate import classification_metrics
from kit.finetune.config import FinetuneConfig
from kit.finetune.data import class_table, is_missing
from kit.finetune.finetune import FinetuneResult, train_task
from kit.finetune.settings import ModelSettings, settings_of
from kit.finetune.tables import append_row
from kit.finetune.task import ClassLoss, build_finetune_model, class_weights

__all__ = ["slice_targets", "SliceClassificationDataset", "train_slice_classifier", "slice_scores",
           "evaluate_slice_init", "save_slice_classifier", "subject_split", "labelled_subsets", "slice_study"]


def slice_targets(slices: SliceDataset, target: str = "tumor_present", classes: Sequence[Any] | None = None):
    """Rows of ``slices`` that have a label for ``target``, their class indices and the class table.

    ``tumor_present``: every slice; 1 when its label map has a voxel > 0. Any other name is a subject
    field of the cache entries (e.g. ``tumor_type``), given to the slices that show the lesion only
    (the type is not visible on a slice without tumour); subjects without a value are left out.

    Returns:
        ``(rows int64 (N,), targets int64 (N,), classes list)``.

    Example:
        >>> rows, y, classes = slice_targets(SliceDataset(cache, table, axis=2))  # doctest: +SKIP
        >>> classes  # doctest: +SKIP
        [0, 1]
    """
    present = slices.lesion_present()
    if target == "tumor_present":
        table = list(classes) if classes is not None else [0, 1]
        return np.arange(len(slices)), present, table
    entries = slices.cache.entries
    values = [entries[int(i)].get(target) for i in slices.index.cache_index]
    if all(target not in e for e in entries):
        raise ValueError(f"{slices.cache.root}: cache entries have no field {target!r}")
    rows = np.array([r for r, (v, p) in enumerate(zip(values, present)) if p and not is_missing(v)], np.int64)
    table = list(classes) if classes is not None else class_table([values[r] for r in rows])
    lookup = {str(c): k for k, c in enumerate(table)}
    return rows, np.array([lookup[str(values[r])] for r in rows], np.int64), table


class SliceClassificationDataset(Dataset):
    """``(slice (C, size, size), class index)`` pairs addressed by ``(index, sample_seed)`` keys.

    With ``augment``, the seed draws a left-right flip (p = 0.5, on ``slices.lr_dim``) and a
    per-channel intensity scale x(1 +- 0.1) and shift +-0.1, as the 3D fine-tuning does.

    Example:
        >>> ds = SliceClassificationDataset(slices, rows, targets, augment=True)  # doctest: +SKIP
        >>> x, y = ds[(0, 5)]  # doctest: +SKIP
    """

    def __init__(self, slices: SliceDataset, rows: Sequence[int], targets: Sequence[int], augment: bool = False) -> None:
        if len(rows) == 0 or len(rows) != len(targets):
            raise ValueError(f"SliceClassificationDataset: {len(rows)} slices and {len(targets)} targets (need the same, > 0)")
        self.slices, self.rows, self.targets = slices, [int(r) for r in rows], [int(t) for t in targets]
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = (int(k) for k in key)
        x = self.slices[self.rows[index]]
        if self.augment:
            rng = np.random.default_rng(seed)
            if self.slices.lr_dim is not None and rng.random() < 0.5:
                x = x.flip(1 + self.slices.lr_dim)
            scale = torch.from_numpy(rng.uniform(0.9, 1.1, (x.shape[0], 1, 1)).astype(np.float32))
            shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (x.shape[0], 1, 1)).astype(np.float32))
            x = x * scale + shift
        return x.contiguous(), torch.tensor(self.targets[index], dtype=torch.int64)


def train_slice_classifier(config: FinetuneConfig, slices: SliceDataset, rows: Sequence[int], targets: Sequence[int],
                           n_classes: int):
    """Train a slice classifier (``config.freeze_encoder`` True: a linear probe) and return ``(model, history, summary)``.

    The model is :class:`kit.finetune.ClassificationModel` around ``config.backbone`` built by
    :func:`kit.finetune.build_finetune_model` (from scratch or ``config.init``); the loss is
    BCE on one logit for two classes, else cross-entropy (``config.class_weights`` applies).

    Example:
        >>> model, history, summary = train_slice_classifier(config, slices, rows, y, 2)  # doctest: +SKIP
    """
    if len(set(int(t) for t in targets)) < 2:
        raise ValueError(f"slice classifier: the training slices hold {len(set(targets))} class(es); need at least two")
    dataset = SliceClassificationDataset(slices, rows, targets, config.augment)
    n_outputs = 1 if n_classes == 2 else n_classes
    model, report = build_finetune_model(settings_of(ModelSettings, config), slices.in_channels, slices.modalities, n_outputs)
    model.check_input(torch.empty(1, slices.in_channels, slices.size, slices.size, device="meta"))
    loss_fn = ClassLoss(n_classes, class_weights(config.class_weights, targets, n_classes))
    # the one training loop (kit.train.train), without validation here; a temporary run folder
    history, summary, _ = train_task(model, dataset, loss_fn, config, modalities=list(slices.modalities))
    summary.update(n_train_slices=len(rows), init_report=report.summary() if report is not None else None)
    return model, history, summary


@torch.no_grad()
def slice_scores(model: torch.nn.Module, slices: SliceDataset, rows: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Positive-class probabilities ``(N,)`` (one logit) or softmax probabilities ``(N, K)`` of ``rows``.

    Example:
        >>> scores = slice_scores(model, test_slices, rows)  # doctest: +SKIP
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        x = torch.stack([slices[int(r)] for r in rows[start : start + batch_size]]).to(device)
        logits = model(x).float()
        out.append(torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1))
    return torch.cat(out).cpu().numpy()


def evaluate_slice_init(
    init: str,
    config: FinetuneConfig,
    train_slices: SliceDataset,
    test_slices: SliceDataset,
    modes: Sequence[str] = ("probe", "finetune"),
    save_to: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train a linear probe and a fine-tune from ``init`` on ``train_slices``; metrics on ``test_slices``.

    Args:
        init: 'scratch' (random initialisation) or a checkpoint path (e.g. a moco_v3 pretraining run).
        config: :class:`FinetuneConfig` with a 2D ``backbone``; ``target`` is 'tumor_present' or a
            subject field such as 'tumor_type'. ``init`` and ``freeze_encoder`` are set per mode.
        train_slices, test_slices: :class:`SliceDataset` of disjoint subjects.
        modes: 'probe' (frozen encoder, linear head) and/or 'finetune' (everything trained).
        save_to: ``{mode: path}``: keep that mode's classifier (:func:`save_slice_classifier`), e.g.
            for slice saliency in notebook 05.

    Returns:
        ``{mode: {'accuracy', 'auc', 'sensitivity', 'specificity', 'n', 'n_train_slices',
        'final_loss', 'wall_s'}}``.

    Raises:
        ValueError: when the train and test slices share a subject.
    """
    shared = set(train_slices.index.subject) & set(test_slices.index.subject)
    if shared:
        raise ValueError(f"slice task: subjects {sorted(shared)[:5]} are in both the training and the test slices")
    target = config.target or "tumor_present"
    rows, targets, classes = slice_targets(train_slices, target)
    test_rows, test_targets, _ = slice_targets(test_slices, target, classes)
    results = {}
    for mode in modes:
        if mode not in ("probe", "finetune"):
            raise ValueError(f"slice task: modes are 'probe' and 'finetune', got {mode!r}")
        cfg = dataclasses.replace(config, init=str(init), freeze_encoder=mode == "probe")
        model, history, summary = train_slice_classifier(cfg, train_slices, rows, targets, len(classes))
        metrics = classification_metrics(test_targets, slice_scores(model, test_slices, test_rows))
        results[mode] = {**metrics, "n_train_slices": int(len(rows)), "final_loss": summary["final_loss"],
                         "wall_s": summary["wall_s"]}
        if save_to and mode in save_to:
            save_slice_classifier(save_to[mode], model, cfg, train_slices, test_slices, classes, history, summary,
                                  test_metrics=metrics)
    return results


def save_slice_classifier(
    path: str | os.PathLike,
    model: torch.nn.Module,
    config: FinetuneConfig,
    train_slices: SliceDataset,
    test_slices: SliceDataset,
    classes: Sequence[Any],
    history: Sequence[dict] = (),
    summary: Mapping[str, Any] | None = None,
    test_metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a slice classifier so that :func:`kit.finetune.load_finetuned` rebuilds it (atomic).

    Besides the fine-tuning checkpoint's fields, ``extra`` holds ``spatial_dims`` = 2, the slice
    settings (``slices``: axis, size, modalities, curated), ``input_size`` ``[size, size]``, the
    training and test subjects and the test metrics, so notebook 05 can explain the model on
    exactly its test slices.

    Example:
        >>> save_slice_classifier("m.pt", model, cfg, train_slices, test_slices, [0, 1])  # doctest: +SKIP
        >>> load_finetuned("m.pt")[1]["spatial_dims"]  # doctest: +SKIP
        2
    """
    result = FinetuneResult(model=model, history=list(history), summary=dict(summary or {}), config=config,
                            load_report=None, modalities=list(train_slices.modalities), classes=list(classes),
                            train_subjects=sorted(set(train_slices.index.subject.astype(str))))
    size = int(train_slices.size)
    extra = {"spatial_dims": 2, "input_size": [size, size],
             "slices": {"axis": int(train_slices.axis), "size": size, "modalities": list(train_slices.modalities),
                        "curated": bool(train_slices.curated)},
             "test_subjects": sorted(set(test_slices.index.subject.astype(str))),
             "test_metrics": {k: float(v) for k, v in (test_metrics or {}).items() if isinstance(v, (int, float))}}
    return result.save(path, extra=extra)


def subject_split(slices: SliceDataset, test_fraction: float) -> tuple[list[str], list[str], dict[str, int]]:
    """The slice study's fixed split of ``slices``' subjects: ``(training pool, test subjects, has_lesion)``.

    Split seed 0, stratified by whether a subject has any lesion slice (``has_lesion[subject]`` 0/1);
    ``test_fraction`` is a share of the subjects, or (>= 1) their number, as the 3D study's.

    Example:
        >>> pool, test, has_lesion = subject_split(SliceDataset(cache, table, axis=2), 0.3)  # doctest: +SKIP
    """
    subjects = list(dict.fromkeys(slices.index.subject.astype(str)))
    lesion = slices.lesion_present()
    has_lesion = {s: int(lesion[(slices.index.subject == s).to_numpy()].any()) for s in subjects}
    share = float(test_fraction) if test_fraction < 1 else float(test_fraction) / len(subjects)
    pool, test = train_test_split(subjects, share, seed=0, strata=[has_lesion[s] for s in subjects])
    return pool, test, has_lesion


def labelled_subsets(pool: Sequence[str], fractions: Sequence[float], seed: int,
                     has_lesion: Mapping[str, int]) -> dict[float, list[str]]:
    """Nested training subsets of ``pool`` per label fraction, each holding a subject with a lesion slice.

    As :func:`kit.data.splits.label_fraction_subsets` (one seeded permutation stratified by
    ``has_lesion``, the first ``ceil(f * n)`` subjects, at least one), except that the first
    subject with a lesion is moved to the front: a classifier of tumour slices needs tumour slices,
    and one labelled subject without a tumour would hold one class only.

    Example:
        >>> subsets = labelled_subsets(["a", "b", "c", "d"], [0.25, 1.0], 0, {"a": 0, "b": 0, "c": 0, "d": 1})
        >>> subsets[0.25], subsets[1.0]
        (['d'], ['a', 'b', 'c', 'd'])
    """
    order = stratified_order(pool, seed, [has_lesion[s] for s in pool])
    first = next((s for s in order if has_lesion[s]), None)
    if first is not None:
        order.remove(first)
        order.insert(0, first)
    n = len(order)
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"label fractions must be in (0, 1], got {f}")
    return {float(f): sorted(order[: min(n, max(1, math.ceil(f * n - 1e-9)))]) for f in sorted(fractions)}


def _done(path: Path | None) -> set[tuple[str, str, float, int]]:
    if path is None or not path.exists():
        return set()
    done = pd.read_csv(path)
    missing = {"init", "mode", "fraction", "seed"} - set(done.columns)
    if missing:
        raise ValueError(f"{path}: not a slice study's results (no columns {sorted(missing)}); move it away or "
                         "choose another results_path")
    return {(str(r.init), str(r.mode), round(float(r.fraction), 6), int(r.seed)) for r in done.itertuples()}


def slice_study(
    cache: Any,
    slices: pd.DataFrame | str,
    inits: Mapping[str, str],
    config: FinetuneConfig,
    *,
    fractions: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    test_fraction: float = 0.3,
    axis: int = 2,
    cohort: str | None = None,
    channels: str | int = "all",
    size: int = 64,
    modes: Sequence[str] = ("probe", "finetune"),
    counts: Sequence[int | str] | None = None,
    results_path: str | os.PathLike | None = None,
    save_models: Callable[[str, str, float, int], str | os.PathLike | None] | None = None,
) -> pd.DataFrame:
    """Label-efficiency study on slices: every init x mode x label fraction x seed on one fixed test set.

    The test subjects are fixed (split seed 0, stratified by whether a subject has any lesion slice);
    for each seed the training subjects of a fraction are a nested subset (:func:`labelled_subsets`:
    the smallest holds a subject with tumour slices), the same for every init, so differences
    between inits are paired. Training and test use the curated slices.

    Args:
        test_fraction: share of the subjects in the fixed test set, or (>= 1) their number.
        counts: label counts in subjects (ints or 'all') instead of ``fractions``
            (:func:`kit.finetune.study.counts_to_fractions` of the training pool).
        results_path: a CSV that gets one row per finished run; runs already in it are not redone
            (an interrupted study resumes).
        save_models: ``save_models(init_name, mode, fraction, seed)`` -> a path to keep that classifier
            (:func:`save_slice_classifier`), or None.

    Returns:
        DataFrame with ``init``, ``mode``, ``fraction``, ``seed``, ``n_train_subjects`` and the
        columns of :func:`evaluate_slice_init` (with ``results_path``: every row of that file).

    Example:
        >>> table = slice_study(cache, "slices.csv", {"scratch": "scratch"}, config, counts=[1, "all"],
        ...                     seeds=(0, 1), results_path="results.csv")  # doctest: +SKIP
    """
    every = SliceDataset(cache, slices, axis=axis, cohort=cohort, channels=channels, size=size)
    train_pool, test, has_lesion = subject_split(every, test_fraction)
    if counts is not None:
        from kit.finetune.study import counts_to_fractions

        fractions = counts_to_fractions(counts, len(train_pool))
    test_slices = SliceDataset(cache, every.index, axis=axis, channels=channels, size=size, subjects=test)
    path = Path(results_path) if results_path is not None else None
    done = _done(path)
    rows = []
    for seed in seeds:
        subsets = labelled_subsets(train_pool, fractions, seed, has_lesion)
        for fraction, train in subsets.items():
            train_slices = SliceDataset(cache, every.index, axis=axis, channels=channels, size=size, subjects=train)
            for name, init in inits.items():
                todo = [m for m in modes if (name, m, round(float(fraction), 6), int(seed)) not in done]
                if not todo:
                    continue
                cfg = dataclasses.replace(config, seed=int(seed))
                save_to = {m: save_models(name, m, fraction, int(seed)) for m in todo} if save_models else {}
                save_to = {m: p for m, p in save_to.items() if p is not None}
                for mode, metrics in evaluate_slice_init(init, cfg, train_slices, test_slices, todo, save_to).items():
                    row = {"init": name, "mode": mode, "fraction": fraction, "seed": int(seed),
                           "n_train_subjects": len(train), "n_test_subjects": len(test), **metrics}
                    rows.append(row)
                    if path is not None:
                        append_row(path, dict(row))
    return pd.read_csv(path) if path is not None and path.exists() else pd.DataFrame(rows)
