"""The plain values of a fine-tuning run (:class:`FinetuneConfig`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kit.data.shapes import three_sides
from kit.devices import resolve_amp
from kit.models.finetuned import TASKS
from kit.models.heads import POOLS

__all__ = ["TASKS", "TRANSFERS", "PROTOCOLS", "PROTOCOL_DEFAULTS", "FinetuneConfig", "triple"]

TRANSFERS = ("encoder", "full")
#: Fine-tuning protocols (:class:`FinetuneConfig.protocol`): every parameter at ``lr`` from step 0;
#: linear probe then fine-tune; layer-wise learning-rate decay on the encoder.
PROTOCOLS = ("full", "lp-ft", "llrd")
#: The protocol fields and the values that mean "as before they existed" (kit.finetune.study.settings_id
#: leaves fields at these values out, so the rows of an existing study keep their ids).
PROTOCOL_DEFAULTS = {"protocol": "full", "lp_steps": 0, "layer_decay": 1.0, "encoder_lr_scale": 1.0, "min_steps": 0}


def triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """One positive int or 3 of them as 3 ints (``name`` is the FinetuneConfig field, for the error).

    Example:
        >>> triple(16, "crop"), triple([8, 16, 32], "crop")
        ((16, 16, 16), (8, 16, 32))
    """
    return three_sides(value, f"FinetuneConfig.{name}")


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
        protocol: how the encoder is fine-tuned (the same for every initialisation, scratch included,
            so the comparison stays fair; :func:`kit.finetune.task.protocol_groups`):

            - ``'full'``: every trainable parameter at ``lr`` from step 0 (the kit's original recipe);
            - ``'lp-ft'``: linear probe, then fine-tune (Kumar et al., ICLR 2022): the encoder is
              frozen (weights, and normalisation statistics in eval mode) for the first ``lp_steps``
              steps while the head / decoder trains, then trained too, at ``lr * encoder_lr_scale``
              with its own linear warm-up (``warmup_steps``) and cosine decay over the remaining steps;
            - ``'llrd'``: layer-wise learning-rate decay: an encoder stage at depth ``d`` from the top
              (the deepest stage has ``d = 1``, the input stem the largest ``d``) trains at
              ``lr * encoder_lr_scale * layer_decay ** d``, the head / decoder at ``lr``, all with the
              same warm-up and cosine schedule. ``layer_decay=1`` with ``encoder_lr_scale < 1`` is a
              plain lower encoder rate.
        lp_steps: ``'lp-ft'``: steps of the linear-probe phase (1 .. steps - 1).
        layer_decay: ``'llrd'``: per-stage decay factor in (0, 1].
        encoder_lr_scale: ``'lp-ft'`` and ``'llrd'``: the encoder's peak rate as a share of ``lr``, in (0, 1].
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
        min_steps: early stopping never ends a run before this step (patience is not applied before
            it; validations before it still count towards it, as Lightning's ``min_steps``), so a
            run whose validation score is flat at first (a few-label run predicting nothing yet)
            still trains ``min_steps``; 0 = no minimum.
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
    protocol: str = "full"
    lp_steps: int = 0
    layer_decay: float = 1.0
    encoder_lr_scale: float = 1.0
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
    min_steps: int = 0
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
        self._check_protocol()
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

    def _check_protocol(self) -> None:
        """Refuse an unknown protocol, or a protocol setting that the chosen protocol would ignore."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"FinetuneConfig.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if int(self.min_steps) < 0:
            raise ValueError(f"FinetuneConfig.min_steps must be >= 0, got {self.min_steps!r}")
        if self.protocol != "full" and self.freeze_encoder:
            raise ValueError(f"FinetuneConfig.protocol {self.protocol!r} trains the encoder; freeze_encoder=True "
                             "(a linear probe) needs protocol 'full'")
        if self.protocol == "lp-ft":
            if not 1 <= int(self.lp_steps) < int(self.steps):
                raise ValueError(f"FinetuneConfig.lp_steps must be in 1..steps-1 ({int(self.steps) - 1}) for "
                                 f"protocol 'lp-ft', got {self.lp_steps!r}")
        elif int(self.lp_steps) != 0:
            raise ValueError(f"FinetuneConfig.lp_steps is only used by protocol 'lp-ft' (protocol is {self.protocol!r})")
        if not 0.0 < float(self.layer_decay) <= 1.0:
            raise ValueError(f"FinetuneConfig.layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if self.protocol != "llrd" and float(self.layer_decay) != 1.0:
            raise ValueError(f"FinetuneConfig.layer_decay is only used by protocol 'llrd' (protocol is {self.protocol!r})")
        if not 0.0 < float(self.encoder_lr_scale) <= 1.0:
            raise ValueError(f"FinetuneConfig.encoder_lr_scale must be in (0, 1], got {self.encoder_lr_scale!r}")
        if self.protocol == "full" and float(self.encoder_lr_scale) != 1.0:
            raise ValueError("FinetuneConfig.encoder_lr_scale is only used by protocols 'lp-ft' and 'llrd'")

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Segmentation crop / sliding-window roi as 3 ints."""
        return triple(self.crop, "crop")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Classification input size as 3 ints."""
        return triple(self.input_size, "input_size")
