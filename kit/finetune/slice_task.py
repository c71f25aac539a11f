"""A 2D downstream task on curated slices: tumour present vs absent per slice (or the subject's tumour
type on the slices that show it), as a linear probe and a fine-tune, for any initialisation.

This is the evaluation the tailored-curation paper (Computerized Medical Imaging and Graphics 123, 2025)
runs after MoCo v3 on slices: a slice classifier on a 2D backbone. Labels come from the cached label
map (a slice is positive when it holds a voxel > 0), splits are by *subject*
(:func:`kit.data.splits.train_test_split` and nested :func:`kit.data.splits.label_fraction_subsets`),
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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kit.data.slices import SliceDataset
from kit.data.splits import label_fraction_subsets, train_test_split
from kit.finetune.evaluate import classification_metrics
from kit.finetune.config import FinetuneConfig
from kit.finetune.data import class_table, is_missing
from kit.finetune.finetune import train_task
from kit.finetune.task import ClassLoss, build_finetune_model, class_weights

__all__ = ["slice_targets", "SliceClassificationDataset", "train_slice_classifier", "slice_scores",
           "evaluate_slice_init", "slice_study"]


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
    model, report = build_finetune_model(config, slices.in_channels, slices.modalities, n_outputs)
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
) -> dict[str, dict[str, Any]]:
    """Train a linear probe and a fine-tune from ``init`` on ``train_slices``; metrics on ``test_slices``.

    Args:
        init: 'scratch' (random initialisation) or a checkpoint path (e.g. a moco_v3 pretraining run).
        config: :class:`FinetuneConfig` with a 2D ``backbone``; ``target`` is 'tumor_present' or a
            subject field such as 'tumor_type'. ``init`` and ``freeze_encoder`` are set per mode.
        train_slices, test_slices: :class:`SliceDataset` of disjoint subjects.
        modes: 'probe' (frozen encoder, linear head) and/or 'finetune' (everything trained).

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
        model, _, summary = train_slice_classifier(cfg, train_slices, rows, targets, len(classes))
        metrics = classification_metrics(test_targets, slice_scores(model, test_slices, test_rows))
        results[mode] = {**metrics, "n_train_slices": int(len(rows)), "final_loss": summary["final_loss"],
                         "wall_s": summary["wall_s"]}
    return results


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
) -> pd.DataFrame:
    """Label-efficiency study on slices: every init x mode x label fraction x seed on one fixed test set.

    The test subjects are fixed (split seed 0, stratified by whether a subject has any lesion slice);
    for each seed the training subjects of a fraction are a nested subset
    (:func:`kit.data.splits.label_fraction_subsets`). Training and test use the curated slices.

    Returns:
        DataFrame with ``init``, ``mode``, ``fraction``, ``seed``, ``n_train_subjects`` and the
        columns of :func:`evaluate_slice_init`.
    """
    every = SliceDataset(cache, slices, axis=axis, cohort=cohort, channels=channels, size=size)
    subjects = list(dict.fromkeys(every.index.subject.astype(str)))
    lesion = every.lesion_present()
    has_lesion = {s: int(lesion[(every.index.subject == s).to_numpy()].any()) for s in subjects}
    strata = [has_lesion[s] for s in subjects]
    train_pool, test = train_test_split(subjects, test_fraction, seed=0, strata=strata)
    test_slices = SliceDataset(cache, every.index, axis=axis, channels=channels, size=size, subjects=test)
    rows = []
    for seed in seeds:
        subsets = label_fraction_subsets(train_pool, fractions, seed, strata=[has_lesion[s] for s in train_pool])
        for fraction, train in subsets.items():
            train_slices = SliceDataset(cache, every.index, axis=axis, channels=channels, size=size, subjects=train)
            for name, init in inits.items():
                cfg = dataclasses.replace(config, seed=int(seed))
                for mode, metrics in evaluate_slice_init(init, cfg, train_slices, test_slices, modes).items():
                    rows.append({"init": name, "mode": mode, "fraction": fraction, "seed": int(seed),
                                 "n_train_subjects": len(train), **metrics})
    return pd.DataFrame(rows)
