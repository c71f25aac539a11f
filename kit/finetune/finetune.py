"""Fine-tuning a backbone (from scratch or from an SSL checkpoint) for segmentation or classification.

One call, :func:`finetune`, trains on cached subjects (a :class:`kit.data.cache.CacheIndex` and a
list of subject indices), so a label-fraction study calls it many times on the same cache::

    config = FinetuneConfig(task="segmentation", init="runs/x/03_stage2/checkpoint.pt", steps=200, crop=64)
    result = finetune(config, cache, train_indices, regions={"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]})
    result.save("runs/x/04_finetune/seg.pt")      # what `kit predict` and kit.predict read

The model and its loss are built in :mod:`kit.finetune.task`, the data in :mod:`kit.finetune.data`,
the validation that selects the model in :mod:`kit.finetune.selection`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kit.data.regions import resolve_regions
from kit.devices import resolve_device
from kit.finetune.config import FinetuneConfig
from kit.finetune.data import ClassificationVolumeDataset, LabelledCropDataset, class_table, is_missing
from kit.finetune.selection import classification_validator, segmentation_validator
from kit.finetune.settings import ModelSettings, ProtocolSettings, settings_of
from kit.finetune.task import ClassLoss, DiceBCELoss, FinetuneTask, build_finetune_model, class_weights, protocol_groups
from kit.models.checkpoints import LoadReport, save_checkpoint
from kit.models.finetuned import ClassificationModel
from kit.train.loop import METRICS_JSON, TrainConfig, train

__all__ = ["FinetuneResult", "finetune", "train_task"]

# FinetuneConfig fields that change bookkeeping, not weights: a restart may change them.
_MAY_DIFFER = ("progress", "num_workers", "log_every", "ckpt_every")


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the trained network (eval mode, on the training device).
        history: ``[{'step', 'loss', 'lr'}, ...]`` every ``log_every`` steps (``lr``: the head's group).
        summary: ``n_train``, ``wall_s``, ``samples_per_s``, ``final_loss``, ``init_report`` (text),
            ``protocol``; with validation ``best_val``, ``best_step`` and ``val_first`` /
            ``val_first_step`` (the score at the first validation: the initialisation's head start).
        config: the :class:`FinetuneConfig`.
        load_report: the transfer's :class:`LoadReport` (None from scratch).
        modalities: input channel names in order.
        regions: segmentation regions (name -> label values); empty for classification.
        label_values: the dataset's label values (segmentation).
        classes: classification classes in logit order (binary: ``classes[1]`` is the positive one).
        train_subjects: subject ids used for training.
        spacing_mm: median voxel size (mm) of the training subjects (``kit predict`` compares inputs).
        val_history: ``[{'step', 'val_dice_mean' | 'val_auc', ..., 'best'}, ...]``, one per validation
            (the learning curve); empty without validation subjects.
        val_subjects: subject ids used for model selection.
    """

    model: nn.Module
    history: list[dict]
    summary: dict
    config: FinetuneConfig
    load_report: LoadReport | None
    modalities: list[str]
    regions: dict[str, list[int]] = field(default_factory=dict)
    label_values: list[int] = field(default_factory=list)
    classes: list[Any] = field(default_factory=list)
    train_subjects: list[str] = field(default_factory=list)
    spacing_mm: list[float] = field(default_factory=list)
    val_history: list[dict] = field(default_factory=list)
    val_subjects: list[str] = field(default_factory=list)

    def checkpoint_extra(self) -> dict[str, Any]:
        """The ``extra`` that :meth:`save` stores (what kit.predict and evaluation need)."""
        cfg = self.config
        extra: dict[str, Any] = {
            "task": cfg.task,
            "modalities": list(self.modalities),
            "finetune_config": asdict(cfg),
            "history": list(self.history),
            "val_history": list(self.val_history),
            "val_subjects": list(self.val_subjects),
            "summary": {k: v for k, v in self.summary.items() if isinstance(v, (int, float, str, type(None)))},
            "spacing_mm": list(self.spacing_mm),  # median voxel size of the training subjects
        }
        if cfg.task == "segmentation":
            extra.update(regions={k: list(v) for k, v in self.regions.items()}, label_values=list(self.label_values),
                         roi=list(cfg.crop_shape), sw_overlap=cfg.sw_overlap, inference=cfg.inference)
        else:
            extra.update(target=cfg.target, classes=list(self.classes), input_size=list(cfg.input_shape),
                         head={"n_outputs": int(self.model.n_outputs), "dropout": float(self.model.dropout),
                               "pool": self.model.pool})
        return extra

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the fine-tuned model with :func:`kit.models.save_checkpoint` (atomic).

        ``model_config`` rebuilds the backbone; ``extra`` holds the task, modalities, regions /
        label values (segmentation) or target / classes / head (classification), the config and
        history, plus anything in ``extra``. :func:`load_finetuned` reads it back.
        """
        backbone = self.model.backbone if isinstance(self.model, ClassificationModel) else self.model
        return save_checkpoint(
            path,
            model_config=dict(backbone.config),
            state_dict=self.model.state_dict(),
            extra={**self.checkpoint_extra(), **dict(extra or {})},
        )


def train_task(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: nn.Module,
    config: FinetuneConfig,
    *,
    callback: Callable[[int, dict], None] | None = None,
    validate: Callable[[nn.Module], tuple[tuple[float, ...], dict]] | None = None,
    run_dir: str | os.PathLike | None = None,
    modalities: Sequence[str] | None = None,
    describe: Mapping[str, Any] | None = None,
) -> tuple[list[dict], dict, list[dict]]:
    """Fine-tune ``model`` with the one training loop (:func:`kit.train.train`); returns ``(history, summary, val_history)``.

    The loop optimises a :class:`kit.finetune.task.FinetuneTask` (``model`` + ``loss_fn`` + model
    selection with ``validate`` every ``config.val_every`` steps, the optimizer groups of
    ``config.protocol``: :func:`kit.finetune.task.protocol_groups`) with AdamW, warmup-cosine, AMP,
    gradient accumulation and clipping, checkpointing in ``run_dir`` (a temporary folder when None:
    then nothing to resume) and resuming from it when it holds a checkpoint of the same run. The
    best validated weights are loaded back into ``model`` at the end; ``model`` is left in eval mode.
    The caller's global RNG states (python, numpy, torch) are left as they were.

    Example:
        >>> history, summary, val_history = train_task(model, dataset, DiceBCELoss(), config)  # doctest: +SKIP
    """
    task = FinetuneTask(model, loss_fn, total_steps=config.steps, validate=validate if config.val_every else None,
                        val_every=config.val_every, patience=config.patience, describe=describe,
                        groups=protocol_groups(model, settings_of(ProtocolSettings, config)), min_steps=config.min_steps)
    train_config = TrainConfig(
        steps=config.steps, batch_size=config.batch_size, grad_accum=config.grad_accum, lr=config.lr,
        weight_decay=config.weight_decay, warmup_steps=config.warmup_steps, max_grad_norm=config.max_grad_norm,
        amp=config.amp, device=config.device, ckpt_every=config.ckpt_every or config.steps, log_every=config.log_every,
        seed=config.seed, num_workers=config.num_workers, progress=config.progress,
    )

    def on_log(step: int, record: dict) -> None:
        callback(step, {"step": step, "loss": record["loss"], "lr": record["lr"]})

    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kit-finetune-"))
        stack.enter_context(_global_rng_kept(resolve_device(config.device)))
        summary = train(task, dataset, train_config, run_dir, modalities=list(modalities) if modalities else None,
                        callback=on_log if callback is not None else None)
        metrics = Path(run_dir) / METRICS_JSON
        records = json.loads(metrics.read_text())["records"] if metrics.exists() else []  # rank 0 writes it
    history = [{"step": r["step"], "loss": r["loss"], "lr": r["lr"]} for r in records]
    task.selection.restore(model)
    model.eval()
    steps_run, wall = int(summary["steps_run"]), float(summary["wall_s"])
    selection = task.selection
    out = {"wall_s": wall, "samples_per_s": steps_run * summary["global_batch_size"] / max(wall - task.val_s, 1e-9),
           "final_loss": history[-1]["loss"] if history else None, "steps_run": steps_run,
           "best_step": selection.best_step if task.val_every else steps_run, "val_s": task.val_s,
           "stopped_early": bool(task.val_every and steps_run < config.steps), "resumed_from": summary["resumed_from"],
           "protocol": config.protocol}
    if task.val_every and selection.best_score is not None:
        out["best_val"] = selection.best_score[0]
    if task.val_every and selection.first_score is not None:
        # the head start: the validation score at the first validation (step val_every), before
        # fine-tuning has had time to erase or build anything
        out["val_first"] = selection.first_score[0]
        out["val_first_step"] = task.val_history[0]["step"] if task.val_history else None
    return history, out, list(task.val_history)


@contextlib.contextmanager
def _global_rng_kept(device: torch.device):
    """Run a block (the loop seeds the global RNGs) and give the caller its python, numpy and torch RNG states back."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def finetune(
    config: FinetuneConfig,
    cache,
    indices: Sequence[int],
    *,
    regions: Mapping[str, Sequence[int]] | None = None,
    label_values: Sequence[int] | None = None,
    classes: Sequence[Any] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    val_indices: Sequence[int] | None = None,
    run_dir: str | os.PathLike | None = None,
) -> FinetuneResult:
    """Fine-tune on the cached subjects ``indices`` and return the trained model with its history.

    Args:
        config: :class:`FinetuneConfig`.
        cache: a :class:`kit.data.cache.CacheIndex` (its ``modalities`` are the input channels;
            segmentation needs its labels, classification the ``config.target`` field of its entries).
        indices: positions in ``cache.entries`` to train on (e.g. a label-fraction subset).
        regions: segmentation regions (the manifest's / datalist's ``regions``); when None, one
            'lesion' region of every nonzero value in ``label_values``.
        label_values: the manifest's label values; when None, those found in the training labels.
        classes: classification classes in logit order; default :func:`class_table` of the
            training subjects' values (give it explicitly to keep the same order across subsets).
        callback: ``callback(step, record)`` after each logged step (live plots).
        val_indices: validation subjects (disjoint from ``indices`` and from any test set) for
            model selection and early stopping every ``config.val_every`` steps; the returned model
            is the best one on them (:mod:`kit.finetune.selection`).
        run_dir: folder for the loop's checkpoint and metrics (kit.train.train): a fine-tune
            killed there resumes where its last checkpoint stopped (``config.ckpt_every``) and ends
            with the weights of an uninterrupted run; None: a temporary folder, nothing to resume.

    Returns:
        :class:`FinetuneResult`.

    Raises:
        ValueError: no training subject, a subject without a label (segmentation), fewer than two
            classes among the training subjects (classification), or a crop the backbone cannot take.

    Example:
        >>> cache = open_cache("runs/x/04_finetune/cache")  # doctest: +SKIP
        >>> result = finetune(FinetuneConfig(steps=50, crop=64), cache, [0, 1, 2],
        ...                   regions={"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]})  # doctest: +SKIP
        >>> result.history[-1]["loss"] < result.history[0]["loss"]  # doctest: +SKIP
        True
    """
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("finetune: no training subjects (empty indices)")
    val_indices = [int(i) for i in (val_indices or [])]
    bad = [i for i in indices + val_indices if not 0 <= i < len(cache.entries)]
    if bad:
        raise ValueError(f"finetune: indices {bad} are outside the cache at {cache.root} ({len(cache.entries)} subjects)")
    overlap = sorted(set(indices) & set(val_indices))
    if overlap:
        raise ValueError(f"finetune: validation subjects {[cache.entries[i]['subject'] for i in overlap]} are also "
                         "training subjects; model selection needs a disjoint split")
    # the config resolved once into what each part reads: plain sizes (3 ints) for the data and validation, the
    # model's settings for the builder
    crop, input_shape, model_settings = config.crop_shape, config.input_shape, settings_of(ModelSettings, config)
    modalities = list(cache.modalities)
    images = cache.images()
    subjects = [str(cache.entries[i]["subject"]) for i in indices]
    result_meta: dict[str, Any] = {}

    if config.task == "segmentation":
        labels = cache.labels()
        unlabelled = [s for i, s in zip(indices, subjects) if labels[i] is None]
        if unlabelled:
            raise ValueError(f"finetune: cache {cache.root} has no label for subjects {unlabelled}")
        if label_values is None:
            label_values = sorted({0} | {int(v) for i in indices for v in np.unique(np.asarray(labels[i]))})
        region_def = resolve_regions(regions, label_values)
        dataset: Dataset = LabelledCropDataset(
            [images[i] for i in indices], [labels[i] for i in indices], region_def,
            crop, config.pos_fraction, config.augment, config.fg_sampling,
        )
        validate = segmentation_validator(cache, val_indices, region_def, crop, inference=config.inference,
                                          overlap=config.sw_overlap, amp=config.amp) if val_indices else None
        n_outputs, loss_fn, sample_shape = len(region_def), DiceBCELoss(), crop
        result_meta.update(regions={k: list(v) for k, v in region_def.items()},
                           label_values=[int(v) for v in label_values])
    else:
        values = [cache.entries[i].get(config.target) for i in indices]
        if all(config.target not in cache.entries[i] for i in indices):
            raise ValueError(f"finetune: cache {cache.root} entries have no field {config.target!r}")
        kept = [(i, s, v) for i, s, v in zip(indices, subjects, values) if not is_missing(v)]
        table = list(classes) if classes is not None else class_table([v for _, _, v in kept])
        lookup = {str(c): k for k, c in enumerate(table)}
        unknown = sorted({str(v) for _, _, v in kept if str(v) not in lookup})
        if unknown:
            raise ValueError(f"finetune: {config.target} values {unknown} are not among the classes {table}")
        if len(table) < 2 or len({lookup[str(v)] for _, _, v in kept}) < 2:
            raise ValueError(
                f"finetune: the training subjects hold {len({str(v) for _, _, v in kept})} class(es) of "
                f"{config.target!r} ({sorted({str(v) for _, _, v in kept})}); classification needs at least two"
            )
        targets = [lookup[str(v)] for _, _, v in kept]
        dataset = ClassificationVolumeDataset([images[i] for i, _, _ in kept], targets, input_shape, config.augment)
        n_outputs = 1 if len(table) == 2 else len(table)
        loss_fn = ClassLoss(len(table), class_weights(config.class_weights, targets, len(table)))
        sample_shape = input_shape
        subjects = [s for _, s, _ in kept]
        result_meta.update(classes=table)
        val_kept = [i for i in val_indices if not is_missing(cache.entries[i].get(config.target))]
        validate = classification_validator(cache, val_kept, config.target, table, input_shape,
                                            amp=config.amp) if val_kept else None

    model, report = build_finetune_model(model_settings, len(modalities), modalities, n_outputs)
    model.check_input(torch.empty(1, len(modalities), *sample_shape, device="meta"))
    # What a restart from run_dir must share with this run (the loop compares it, and its own settings).
    describe = {**{k: v for k, v in asdict(config).items() if k not in _MAY_DIFFER}, "modalities": modalities,
                "train_subjects": subjects, "val_subjects": [str(cache.entries[i]["subject"]) for i in val_indices],
                **result_meta}
    history, summary, val_history = train_task(model, dataset, loss_fn, config, callback=callback, validate=validate,
                                               run_dir=run_dir, modalities=modalities, describe=describe)
    summary.update(n_train=len(subjects), init_report=report.summary() if report is not None else None)
    # voxel size of the training data, so kit predict can warn about inputs at another resolution
    affines = [np.asarray(cache.entries[i]["affine"], float) for i in indices if cache.entries[i].get("affine")]
    spacing = [round(float(v), 4) for v in np.median([np.linalg.norm(a[:3, :3], axis=0) for a in affines], axis=0)] if affines else []
    return FinetuneResult(model=model, history=history, summary=summary, config=config, load_report=report,
                          modalities=modalities, train_subjects=subjects, spacing_mm=spacing, val_history=val_history,
                          val_subjects=[str(cache.entries[i]["subject"]) for i in val_indices], **result_meta)
