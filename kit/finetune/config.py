"""The plain values of a fine-tuning run (:class:`FinetuneConfig`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kit.devices import resolve_amp
from kit.models.finetuned import TASKS
from kit.models.heads import POOLS

__all__ = ["TASKS", "TRANSFERS", "FinetuneConfig", "triple"]

TRANSFERS = ("encoder", "full")


def triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """One positive int or 3 of them as 3 ints (``name`` is the FinetuneConfig field, for the error).

    Example:
        >>> triple(16, "crop"), triple([8, 16, 32], "crop")
        ((16, 16, 16), (8, 16, 32))
    """
    out = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"FinetuneConfig.{name} must be one positive int or 3 of them, got {value!r}")
    return out  # type: ignore[return-value]


@dataclass
class FinetuneConfig:
    """Plain values that define a fine-tuning run.

    Attributes:
        task: 'segmentation' (sigmoid region channels) or 'classification'.
        target: classification column of the cache entries (phenotypes), e.g. 'tumor_present',
            'tumor_type', 'idh'; subjects without a value are left out.
        backbone: kit.models name; with a checkpoint ``init`` it must match the checkpoint's.
        model: backbone options (create_model kwargs); with a checkpoint they override its config.
        init: 'scratch' or the path of a checkpoint (SSL stage or an earlier fine-tune).
        transfer: 'encoder' (load only ``model.encoder_prefixes`` keys) or 'full' (every backbone
            key except the output layer).
        freeze_encoder: keep the encoder fixed and train only the rest (a linear probe for
            classification).
        steps, batch_size: optimizer steps and samples per step.
        grad_accum: micro-batches of ``batch_size`` per optimizer step (kit.train.TrainConfig).
        lr, weight_decay, warmup_steps, max_grad_norm: AdamW, linear warmup then cosine to 0,
            gradient clipping (None = off).
        crop: segmentation training crop in voxels (also the sliding-window roi at evaluation);
            sides must suit the backbone (multiples of 8 for segresnet_small, 32 for swinunetr).
        pos_fraction: probability that a segmentation crop is centred on a foreground voxel.
        fg_sampling: how that voxel is drawn: 'voxel' (uniform over foreground voxels, so large
            regions dominate) or 'label' (a label value present in the subject first, uniformly,
            then one of its voxels, as nnU-Net's class-balanced sampling; thin regions such as
            enhancing tumour get as many crops as the oedema).
        augment: random flips on each axis and a small per-channel intensity scale/shift.
        input_size: classification input in voxels: the brain-cropped volume is resized (longest
            side, aspect kept) and padded to this size.
        class_weights: classification loss weights: None, 'balanced' (inverse class frequency in
            the training subjects) or one weight per class.
        dropout: dropout before the classification head's linear layer.
        head_pool: the classification head's global pooling, 'avg' or 'avgmax' (mean and maximum
            concatenated; for detection targets such as tumour presence, see
            :class:`kit.models.heads.ClassificationHead`).
        sw_overlap, sw_batch_size: sliding-window inference settings used at evaluation (0.5 =
            BrainSegFounder's validation overlap).
        inference: segmentation inference at validation and evaluation: 'sliding' (windows of
            ``crop``), 'whole' (one pass over the padded volume) or 'auto' (whole when the volume
            fits in ``crop``, else sliding: a GroupNorm network trained on crops sees other
            statistics on a larger input; kit.finetune.evaluate).
        val_every: with validation subjects (``finetune(val_indices=...)``), evaluate every this many
            steps and keep the best model (model selection); 0 = no validation, keep the last model.
        patience: stop after this many validations without improvement (early stopping); 0 = never.
        seed: fixes the initialisation, data order, crops and augmentations.
        device: 'auto', 'cpu' or 'cuda'; amp: 'auto', 'bf16', 'fp16' or 'off' (kit.devices.resolve_amp).
        log_every: record the loss every this many steps (and at the last one).
        ckpt_every: write a resumable checkpoint (with the model selection's state) to the run
            folder every this many steps and at the end (0: at the end only); see
            ``finetune(run_dir=...)``.
        num_workers: DataLoader worker processes.
        progress: tqdm progress bar.

    Example:
        >>> cfg = FinetuneConfig(task="classification", target="tumor_present", steps=20, input_size=64)
        >>> cfg.input_shape
        (64, 64, 64)
    """

    task: str = "segmentation"
    target: str | None = None
    backbone: str = "segresnet_small"
    model: dict = field(default_factory=dict)
    init: str = "scratch"
    transfer: str = "full"
    freeze_encoder: bool = False
    steps: int = 100
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 10
    max_grad_norm: float | None = 1.0
    crop: Any = 96
    pos_fraction: float = 0.5
    fg_sampling: str = "voxel"
    augment: bool = True
    input_size: Any = 96
    class_weights: Any = None
    dropout: float = 0.0
    head_pool: str = "avg"
    sw_overlap: float = 0.5
    sw_batch_size: int = 1
    inference: str = "sliding"
    val_every: int = 0
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    log_every: int = 1
    ckpt_every: int = 500
    num_workers: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"FinetuneConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.task == "classification" and not self.target:
            raise ValueError("FinetuneConfig.target (e.g. 'tumor_present') is required for classification")
        if self.transfer not in TRANSFERS:
            raise ValueError(f"FinetuneConfig.transfer must be one of {TRANSFERS}, got {self.transfer!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "sw_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if min(self.warmup_steps, self.num_workers, self.val_every, self.patience, self.ckpt_every) < 0:
            raise ValueError("FinetuneConfig.warmup_steps, num_workers, val_every, patience and ckpt_every must be >= 0")
        if self.fg_sampling not in ("voxel", "label"):
            raise ValueError(f"FinetuneConfig.fg_sampling must be 'voxel' or 'label', got {self.fg_sampling!r}")
        if self.head_pool not in POOLS:
            raise ValueError(f"FinetuneConfig.head_pool must be one of {POOLS}, got {self.head_pool!r}")
        if self.inference not in ("sliding", "whole", "auto"):
            raise ValueError(f"FinetuneConfig.inference must be 'sliding', 'whole' or 'auto', got {self.inference!r}")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError(f"FinetuneConfig.pos_fraction must be in [0, 1], got {self.pos_fraction}")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"FinetuneConfig.sw_overlap must be in [0, 1), got {self.sw_overlap}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"FinetuneConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        resolve_amp(self.amp, torch.device("cpu"))  # validates the spelling
        self.crop = list(triple(self.crop, "crop")) if not np.isscalar(self.crop) else int(self.crop)
        self.input_size = list(triple(self.input_size, "input_size")) if not np.isscalar(self.input_size) else int(self.input_size)
        self.model = dict(self.model or {})
        self.init = str(self.init)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Segmentation crop / sliding-window roi as 3 ints."""
        return triple(self.crop, "crop")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Classification input size as 3 ints."""
        return triple(self.input_size, "input_size")
