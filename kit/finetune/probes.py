"""Linear probes: what a frozen encoder already knows, measured in seconds.

Fine-tuning mixes two things: how good the pretrained features are and how well the optimiser
adapts them with few labels. A linear probe isolates the first. For each initialisation the
encoder runs **once** over every subject; then, per label count and seed, a logistic regression
is fitted on the frozen features of the labelled subjects and scored on the fixed test set:

- segmentation (voxel-wise): the encoder's hypercolumn, every level of the encoder upsampled to
  the input grid and concatenated (SegResNet: 8 + 16 + 32 + 64 = 120 channels), classified voxel
  by voxel into the label values (multinomial logistic regression); region probabilities (TC, WT,
  ET) are sums of label probabilities, thresholded at 0.5, and scored with Dice / HD95 on the
  whole brain, as fine-tuned models are. Training voxels are sampled per subject, balanced over
  label values, and weighted back to their true frequencies, so the fitted prior is the real one;
- classification (pooled): each encoder level pooled over the brain, concatenated: the mean
  (``pool="avg"``, the default), the maximum (``"max"``) or both (``"avgmax"``). A mean over a
  whole brain dilutes a tumour of a few percent of its voxels to almost nothing, so an
  average-pooled tumour-presence probe sits near chance by construction whatever the encoder
  knows; the maximum keeps a local response (as the fine-tuned head's ``head_pool="avgmax"``).

``scratch`` is a randomly initialised, frozen encoder: the random-features baseline any
pretraining must beat (Hinton's "random features" control). The splits are the fine-tuning
study's (:func:`kit.finetune.study.study_design`), so probe and fine-tune rows pair up.

Example::

    table = run_probes({"tumor": cache}, tasks, inits, seeds=range(5), counts=[1, 2, 4, "all"],
                       base_config=cfg, out_csv="probe_results.csv", test_fraction=20, val_size=6)
    summary = probe_summary(table)      # probe_summary.csv
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from kit.finetune.evaluate import segmentation_metrics, spacing_from_affine
from kit.data.regions import labels_to_regions, resolve_regions

__all__ = [
    "encoder_hypercolumn",
    "pooled_features",
    "probe_encoder",
    "sample_voxels",
    "fit_probe",
    "SegmentationProbeData",
    "dice_scores",
    "run_probes",
    "probe_summary",
]

SUMMARY_COLUMNS = ["init", "task", "label_fraction", "metric", "mean", "ci_low", "ci_high", "n"]


def _levels(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every encoder level of ``backbone`` for a batch ``x`` (SegResNet: its skip outputs)."""
    from monai.networks.nets import SegResNet

    if isinstance(backbone, SegResNet):
        _, skips = SegResNet.encode(backbone, x)
        return list(skips)
    return [backbone.encode(x)]


def _pad_to(backbone: nn.Module, volume: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    spatial = tuple(int(s) for s in volume.shape[1:])
    multiple, minimum = int(getattr(backbone, "downsample", 1)), int(getattr(backbone, "min_input_size", 1))
    padded = tuple(max(minimum, -(-s // multiple) * multiple) for s in spatial)
    pad = []
    for s, p in zip(reversed(spatial), reversed(padded)):
        pad += [0, p - s]
    return torch.nn.functional.pad(volume, pad), spatial


@torch.no_grad()
def encoder_hypercolumn(backbone: nn.Module, image: Any) -> torch.Tensor:
    """Every encoder level, upsampled (trilinear) to the image grid and concatenated: (F, X, Y, Z) float32.

    Example:
        >>> from kit.models import create_model
        >>> encoder_hypercolumn(create_model("segresnet_small", in_channels=2), torch.zeros(2, 20, 24, 18)).shape
        torch.Size([120, 20, 24, 18])
    """
    volume = image.float() if torch.is_tensor(image) else torch.from_numpy(np.array(image, dtype=np.float32))
    padded, spatial = _pad_to(backbone, volume)
    backbone.eval()
    levels = _levels(backbone, padded[None])
    size = tuple(padded.shape[1:])
    up = [lv if tuple(lv.shape[2:]) == size else
          torch.nn.functional.interpolate(lv, size=size, mode="trilinear", align_corners=False) for lv in levels]
    return torch.cat(up, dim=1)[0][(slice(None),) + tuple(slice(0, s) for s in spatial)].float()


POOLS = ("avg", "max", "avgmax")


@torch.no_grad()
def pooled_features(backbone: nn.Module, volume: torch.Tensor, pool: str = "avg") -> np.ndarray:
    """Each encoder level pooled over the non-zero (brain) voxels, concatenated: (F,) float32, or
    (2F,) for ``pool="avgmax"`` (all means, then all maxima).

    ``volume`` is the classifier input (C, *size) (kit.finetune.classification_input). ``pool``:
    ``'avg'`` (mean), ``'max'`` (maximum) or ``'avgmax'`` (both; see the module docstring for why
    tumour presence needs the maximum).

    Example:
        >>> from kit.models import create_model
        >>> net = create_model("segresnet_small", in_channels=1)
        >>> pooled_features(net, torch.ones(1, 32, 32, 32)).shape, pooled_features(net, torch.ones(1, 32, 32, 32), "avgmax").shape
        ((120,), (240,))
    """
    if pool not in POOLS:
        raise ValueError(f"pooled_features: pool must be one of {POOLS}, got {pool!r}")
    padded, _ = _pad_to(backbone, volume.float())
    backbone.eval()
    brain = (padded.abs().sum(0) > 1e-6).float()[None, None]
    means, maxima = [], []
    for level in _levels(backbone, padded[None]):
        mask = torch.nn.functional.interpolate(brain, size=tuple(level.shape[2:]), mode="nearest")
        denom = mask.sum().clamp_min(1.0)
        means.append(((level * mask).sum(dim=(2, 3, 4)) / denom)[0])
        inside = mask[0, 0] > 0 if mask.any() else torch.ones_like(mask[0, 0], dtype=torch.bool)
        maxima.append(level[0][:, inside].amax(dim=1))
    parts = {"avg": means, "max": maxima, "avgmax": means + maxima}[pool]
    return torch.cat(parts).numpy().astype(np.float32)


def probe_encoder(init: str, in_channels: int, modalities: Sequence[str], base_config: Mapping) -> nn.Module:
    """The frozen backbone of an initialisation: encoder weights from ``init`` ('scratch': random,
    seeded by ``base_config['seed']`` or 0), eval mode, no gradients.

    Example:
        >>> net = probe_encoder("scratch", 2, ["flair", "t1ce"], {"backbone": "segresnet_small"})
        >>> net.training, any(p.requires_grad for p in net.parameters())
        (False, False)
    """
    from kit.finetune.config import FinetuneConfig
    from kit.finetune.task import build_finetune_model

    names = {"backbone", "model", "seed"}
    values = {k: v for k, v in base_config.items() if k in names}
    config = FinetuneConfig(task="segmentation", init=str(init), transfer="encoder", **values)
    model, _ = build_finetune_model(config, in_channels, list(modalities), n_outputs=3)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def sample_voxels(label: np.ndarray, brain: np.ndarray, per_value: int, rng: np.random.Generator,
                  label_values: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat voxel indices balanced over label values, with weights back to their true frequency.

    Background is drawn from the brain only (outside it, every model predicts background anyway).

    Returns:
        ``(indices, values, weights)``; a value's weights sum to its voxel count in the subject.

    Example:
        >>> lab = np.zeros((10, 10, 10), int); lab[:2] = 4
        >>> idx, val, w = sample_voxels(lab, np.ones_like(lab, bool), 50, np.random.default_rng(0), [0, 4])
        >>> len(idx), float(w[val == 4].sum()), float(w[val == 0].sum())
        (100, 200.0, 800.0)
    """
    flat, inside = label.ravel(), brain.ravel() | (label.ravel() > 0)
    out_i, out_v, out_w = [], [], []
    for value in label_values:
        members = np.flatnonzero((flat == value) & inside)
        if members.size == 0:
            continue
        take = rng.choice(members, size=min(per_value, members.size), replace=False)
        out_i.append(take)
        out_v.append(np.full(take.size, value))
        out_w.append(np.full(take.size, members.size / take.size, dtype=np.float64))
    return np.concatenate(out_i), np.concatenate(out_v), np.concatenate(out_w)


def fit_probe(features: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None, c: float = 1.0):
    """Standardised multinomial logistic regression (scikit-learn), L2 strength ``1 / c``.

    Weights are rescaled to mean 1 so that ``c`` means the same whatever the sampling.

    Example:
        >>> rng = np.random.default_rng(0); x = rng.normal(size=(200, 3)); y = (x[:, 0] > 0).astype(int)
        >>> float(fit_probe(x, y).score(x, y)) > 0.9
        True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=float(c), max_iter=300))
    w = None if weights is None else np.asarray(weights, dtype=np.float64) / np.mean(weights)
    model.fit(np.asarray(features, dtype=np.float32), np.asarray(targets), logisticregression__sample_weight=w)
    return model


class SegmentationProbeData:
    """Frozen hypercolumns of a cohort for one initialisation, computed once.

    ``train[i]`` holds sampled voxels of subject i (features, label values, weights); ``test[i]``
    the features of every brain voxel (float16) for whole-brain prediction.
    """

    def __init__(self, backbone: nn.Module, cache, train_idx: Sequence[int], test_idx: Sequence[int],
                 label_values: Sequence[int], per_value: int = 400, seed: int = 0) -> None:
        images, labels = cache.images(), cache.labels()
        rng = np.random.default_rng(seed)
        self.label_values = [int(v) for v in label_values]
        self.train: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.test: dict[int, tuple[np.ndarray, np.ndarray, tuple]] = {}
        self.cache = cache
        train_set, test_set = {int(i) for i in train_idx}, {int(i) for i in test_idx}
        for i in sorted(train_set | test_set):
            image = np.asarray(images[i])
            column = encoder_hypercolumn(backbone, image)
            features = column.reshape(column.shape[0], -1)
            label = np.asarray(labels[i][0])
            brain = np.abs(image).sum(0) > 1e-6
            if i in train_set:
                idx, values, weights = sample_voxels(label, brain, per_value, rng, self.label_values)
                self.train[i] = (features[:, idx].T.numpy().copy(), values, weights)
            if i in test_set:
                inside = np.flatnonzero(brain.ravel() | (label.ravel() > 0))
                self.test[i] = (features[:, inside].T.numpy().astype(np.float16), inside, label.shape)

    def fit(self, indices: Sequence[int], c: float = 1.0):
        """A probe fitted on the sampled voxels of the labelled subjects ``indices``."""
        x = np.concatenate([self.train[int(i)][0] for i in indices])
        y = np.concatenate([self.train[int(i)][1] for i in indices])
        w = np.concatenate([self.train[int(i)][2] for i in indices])
        return fit_probe(x, y, w, c)

    def evaluate(self, probe, regions: Mapping[str, Sequence[int]], with_hd95: bool = False) -> pd.DataFrame:
        """Per test subject Dice (and HD95 with ``with_hd95``, kit.finetune.evaluate) of the probe's
        whole-brain prediction; HD95 is off by default because it costs more than the fit."""
        labels = self.cache.labels()
        classes = [int(c) for c in probe.classes_]
        names = list(regions)
        rows = []
        for i, (features, inside, shape) in self.test.items():
            probs = probe.predict_proba(features.astype(np.float32))
            region_p = np.zeros((len(names), int(np.prod(shape))), np.float32)
            for r, name in enumerate(names):
                cols = [k for k, c in enumerate(classes) if c in set(int(v) for v in regions[name])]
                if cols:
                    region_p[r, inside] = probs[:, cols].sum(1)
            pred = region_p.reshape(len(names), *shape) > 0.5
            target = labels_to_regions(np.asarray(labels[i]), regions) > 0.5
            entry = self.cache.entries[i]
            if with_hd95:
                spacing = spacing_from_affine(entry["affine"]) if entry.get("affine") is not None else None
                rows.append({"subject": str(entry["subject"]), **segmentation_metrics(pred, target, names, spacing)})
            else:
                rows.append({"subject": str(entry["subject"]), **dice_scores(pred, target, names)})
        return pd.DataFrame(rows)


def dice_scores(pred: np.ndarray, target: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Dice per region and their mean, with the same empty-mask rule as
    :func:`kit.finetune.evaluate.segmentation_metrics` (both empty: 1; one empty: 0), without HD95.

    Example:
        >>> a = np.zeros((2, 4, 4, 4), bool); a[0, :2] = True
        >>> dice_scores(a, a, ["TC", "ET"])
        {'dice_TC': 1.0, 'dice_ET': 1.0, 'dice_mean': 1.0}
    """
    out = {}
    for c, name in enumerate(names):
        p, t = pred[c], target[c]
        denom = int(p.sum()) + int(t.sum())
        out[f"dice_{name}"] = 1.0 if denom == 0 else float(2 * np.logical_and(p, t).sum() / denom)
    out["dice_mean"] = float(np.mean([out[f"dice_{n}"] for n in names]))
    return out


def _append(path: Path, row: dict) -> None:
    from kit.finetune.tables import append_row

    append_row(path, row)


def run_probes(
    caches: Mapping[str, Any],
    tasks: Sequence[Mapping],
    inits: Mapping[str, str],
    seeds: Sequence[int],
    counts: Sequence,
    base_config: Mapping,
    out_csv: str | Path,
    *,
    test_fraction: float = 0.3,
    val_size: float = 0,
    regions: Mapping[str, Mapping] | None = None,
    label_values: Mapping[str, Sequence[int]] | None = None,
    per_value: int = 200,
    c: float = 1.0,
    progress: bool = True,
    pool: str = "avg",
    leakage: str = "refuse",
) -> pd.DataFrame:
    """Fit and score linear probes for every init x task x label count x seed (resumable).

    Args:
        caches, tasks, inits, seeds, test_fraction, val_size, regions, label_values: as in
            :func:`kit.finetune.study.run_study` (same splits; ``spec["counts"]`` overrides ``counts``).
        counts: label counts in subjects, e.g. ``[1, 2, 4, "all"]``.
        base_config: ``backbone``, ``model`` and ``input_size`` (classification) of the encoder.
        per_value: voxels sampled per label value and subject (segmentation).
        c: inverse L2 strength of the logistic regression.
        pool: the classification probes' pooling (:func:`pooled_features`); recorded per row. Rows
            already in ``out_csv`` are kept whatever pooling made them: change it in a new file.
        leakage: 'refuse' or 'flag', as in :func:`kit.finetune.study.run_study`: the same guard
            (:func:`kit.train.provenance.guard_leakage`) on the probe's test, validation and labelled subjects.

    Returns:
        Every row of ``out_csv``: ``init, task, label_fraction, seed, n_train, n_test, <metrics>,
        fit_s`` (+ ``features_s`` the first time an init's features are computed).
    """
    from kit.finetune.data import class_table, classification_input
    from kit.finetune.study import study_design, task_pool
    from kit.finetune.tables import done_keys
    from kit.finetune.evaluate import classification_metrics
    from kit.train.provenance import guard_leakage

    features_pool = pool  # `pool` below is the training pool of subjects
    if features_pool not in POOLS:
        raise ValueError(f"run_probes: pool must be one of {POOLS}, got {features_pool!r}")
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    done = set(done_keys(out_csv))  # probe rows are matched on their key alone
    for init_name, init in inits.items():
        for spec in tasks:
            if spec.get("inits") is not None and init_name not in spec["inits"]:
                continue
            cache = caches[spec["cohort"]]
            is_seg = spec["task"] == "segmentation"
            design = study_design(cache, spec, None, seeds, test_fraction, min_subjects=1 if is_seg else 2,
                                  val_size=spec.get("val_size", val_size), counts=spec.get("counts", counts))
            per_seed = design["per_seed"]
            subject = [str(e["subject"]) for e in cache.entries]
            guard_leakage({init_name: init}, {
                "test": [subject[i] for i in design["test"]], "validation": [subject[i] for i in design["val"]],
                "labelled": sorted({subject[i] for subsets in per_seed.values() for v in subsets.values() for i in v})},
                leakage, f"run_probes: task {spec['name']!r}")
            fitted = {f: set(distinct_sets(per_seed, seeds, f)) for f in design["fractions"]}
            keys = [(init_name, spec["name"], float(f), int(s)) for s in seeds for f in design["fractions"]
                    if s in fitted[f]]
            if all(k in done for k in keys):
                continue
            test_idx = design["test"]
            pool = sorted({i for subsets in per_seed.values() for v in subsets.values() for i in v})
            modalities = list(cache.modalities)
            backbone = probe_encoder(init, len(modalities), modalities, base_config)
            tic = time.perf_counter()
            if is_seg:
                values = (label_values or {}).get(spec["cohort"]) or [0, 1]
                region_def = resolve_regions((regions or {}).get(spec["cohort"]), values)
                data = SegmentationProbeData(backbone, cache, pool, test_idx, values, per_value)
            else:
                target = spec["target"]
                classes = class_table([cache.entries[i][target] for i in task_pool(cache, spec)[0]])
                lookup = {str(v): k for k, v in enumerate(classes)}
                size = base_config.get("input_size", 32)
                images = cache.images()
                feats = {i: pooled_features(backbone, classification_input(images[i], size), pool=features_pool)
                         for i in pool + list(test_idx)}
                y_of = {i: lookup[str(cache.entries[i][target])] for i in feats}
            features_s = time.perf_counter() - tic
            for key in keys:
                if key in done:
                    continue
                _, _, fraction, seed = key
                train_idx = per_seed[seed][fraction]
                tic = time.perf_counter()
                if is_seg:
                    probe = data.fit(train_idx, c)
                    table = data.evaluate(probe, region_def)
                    metrics = {k: float(table[k].mean()) for k in table.columns if k.startswith("dice")}
                else:
                    y_train = [y_of[i] for i in train_idx]
                    if len(set(y_train)) < 2:  # one class seen: the only honest model is a constant
                        proba = np.zeros((len(test_idx), len(classes)))
                        proba[:, y_train[0]] = 1.0
                    else:
                        probe = fit_probe(np.stack([feats[i] for i in train_idx]), np.array(y_train), c=c)
                        proba = np.zeros((len(test_idx), len(classes)))
                        proba[:, probe.classes_] = probe.predict_proba(np.stack([feats[i] for i in test_idx]))
                    scores = proba[:, 1] if proba.shape[1] == 2 else proba
                    m = classification_metrics([y_of[i] for i in test_idx], scores)
                    metrics = {k: v for k, v in m.items() if k != "n"}
                row = {"init": init_name, "task": spec["name"], "label_fraction": fraction, "seed": seed,
                       "n_train": len(train_idx), "n_test": len(test_idx), **metrics,
                       **({} if is_seg else {"pool": features_pool}),
                       "fit_s": round(time.perf_counter() - tic, 2), "features_s": round(features_s, 1)}
                _append(out_csv, row)
                done.add(key)
                if progress:
                    shown = {k: round(v, 3) for k, v in metrics.items() if k in ("dice_mean", "auc")}
                    print(f"probe {spec['name']:>14} {init_name:>9} n_train {len(train_idx):>3} seed {seed}: {shown}",
                          flush=True)
    return pd.read_csv(out_csv) if out_csv.exists() else pd.DataFrame()


def distinct_sets(per_seed: Mapping, seeds: Sequence[int], fraction: float | None = None) -> list[int]:
    """The seeds whose training set differs from every earlier seed's (at ``fraction``; None: at any).

    A probe's fit is deterministic given its training set, so seeds that draw the same set (every
    seed at "all" labelled subjects) would only repeat one number and fake a zero-width interval:
    they are fitted once.

    Example:
        >>> per_seed = {0: {0.5: [1], 1.0: [1, 2]}, 1: {0.5: [2], 1.0: [1, 2]}}
        >>> distinct_sets(per_seed, [0, 1], 1.0), distinct_sets(per_seed, [0, 1], 0.5), distinct_sets(per_seed, [0, 1])
        ([0], [0, 1], [0, 1])
    """
    fractions = [fraction] if fraction is not None else sorted({f for s in seeds for f in per_seed[s]})
    kept = set()
    for f in fractions:
        seen = set()
        for s in seeds:
            subset = tuple(sorted(per_seed[s][f]))
            if subset not in seen:
                seen.add(subset)
                kept.add(s)
    return [s for s in seeds if s in kept]


def probe_summary(results: pd.DataFrame, metrics: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``probe_summary.csv``: mean, clipped 95 % t-interval and n per init, task and label fraction.

    Args:
        metrics: task name -> metric; default ``dice_mean`` for tasks with that column, else ``auc``.

    Example:
        >>> df = pd.DataFrame({"init": ["a"] * 2, "task": ["seg"] * 2, "label_fraction": [1.0] * 2,
        ...                    "seed": [0, 1], "n_train": [3, 3], "dice_mean": [0.5, 0.7], "auc": [None, None]})
        >>> list(probe_summary(df).columns)
        ['init', 'task', 'label_fraction', 'metric', 'mean', 'ci_low', 'ci_high', 'n', 'n_train']
    """
    from kit.finetune.stats import summarise

    parts = []
    for task, rows in results.groupby("task", sort=False):
        metric = (metrics or {}).get(task) or ("dice_mean" if "dice_mean" in rows and rows["dice_mean"].notna().any() else "auc")
        parts.append(summarise(rows, metric))
    if not parts:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return pd.concat(parts, ignore_index=True)
