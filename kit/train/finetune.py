"""Fine-tuning a backbone (from scratch or from an SSL checkpoint) for segmentation or classification.

One call, :func:`finetune`, trains on cached subjects (a :class:`kit.data.cache.CacheIndex` and a
list of subject indices), so a label-fraction study calls it many times on the same cache::

    config = FinetuneConfig(task="segmentation", init="runs/x/03_stage2/checkpoint.pt", steps=200, crop=64)
    result = finetune(config, cache, train_indices, regions={"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]})
    result.save("runs/x/04_finetune/seg.pt")      # what `kit predict` and kit.predict read

Segmentation: one sigmoid channel per region (BraTS TC / WT / ET, or one stroke 'lesion'),
Dice + binary cross-entropy, foreground-biased random crops (:class:`LabelledCropDataset`).
Classification: the backbone's encoder, globally pooled, and a linear head
(:class:`ClassificationModel`) on the whole brain-cropped volume resized to a fixed size.
Both: AdamW with a warmup-cosine schedule (monai.optimizers.WarmupCosineSchedule), optional
frozen encoder (a linear probe), AMP on GPUs, and every random choice drawn from seeds.

Why not ``monai.losses.DiceCELoss(sigmoid=True)``: in MONAI 1.6 its cross-entropy term is
``torch.nn.CrossEntropyLoss`` (a softmax over channels) whenever there is more than one channel,
whatever ``sigmoid`` says, which is wrong for overlapping regions (WT contains TC contains ET).
:class:`DiceBCELoss` is MONAI's ``DiceLoss(sigmoid=True)`` plus per-channel ``BCEWithLogitsLoss``,
which is what DiceCELoss does for a single channel.

Initialisation from an SSL checkpoint (:func:`build_finetune_model`) never loads silently: the
objective's attribute prefix (``model.``) and the SSL head keys are stripped, the first layer is
mapped by contrast name when the modalities differ (kit.models.transfer_input_channels), and every
tensor that could not be loaded is listed in the returned :class:`kit.models.LoadReport` and in a
warning.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceLoss
from monai.optimizers import WarmupCosineSchedule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kit.models.backbones import create_model
from kit.models.checkpoints import (
    CheckpointError,
    model_from_config,
    LoadReport,
    canonical_modality,
    load_checkpoint,
    load_weights,
    normalize_state_dict,
    save_checkpoint,
    transfer_input_channels,
)
from kit.models.heads import ClassificationHead
from kit.train.distributed import resolve_device
from kit.train.loop import resolve_amp
from kit.train.regions import labels_to_regions, resolve_regions
from kit.train.sampling import GlobalBatchSampler
from kit.train.selection import ModelSelection, classification_validator, segmentation_validator

__all__ = [
    "TASKS",
    "FinetuneConfig",
    "FinetuneResult",
    "ClassificationModel",
    "DiceBCELoss",
    "LabelledCropDataset",
    "ClassificationVolumeDataset",
    "classification_input",
    "class_table",
    "is_missing",
    "build_finetune_model",
    "freeze_encoder",
    "finetune",
    "load_finetuned",
]

TASKS = ("segmentation", "classification")
_TRANSFERS = ("encoder", "full")
_MISSING_TEXT = {"", "na", "n/a", "nan", "none", "null"}
# State-dict keys of the layer that produces the output channels (re-initialised on transfer).
_OUTPUT_KEYS = {"segresnet_small": ("conv_final.2.conv.*",), "swinunetr": ("out.conv.conv.*",)}


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
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
        sw_overlap, sw_batch_size: sliding-window inference settings used at evaluation (0.5 =
            BrainSegFounder's validation overlap).
        inference: segmentation inference at validation and evaluation: 'sliding' (windows of
            ``crop``), 'whole' (one pass over the padded volume) or 'auto' (whole when the volume
            fits in ``crop``, else sliding: a GroupNorm network trained on crops sees other
            statistics on a larger input; kit.train.evaluate).
        val_every: with validation subjects (``finetune(val_indices=...)``), evaluate every this many
            steps and keep the best model (model selection); 0 = no validation, keep the last model.
        patience: stop after this many validations without improvement (early stopping); 0 = never.
        seed: fixes the initialisation, data order, crops and augmentations.
        device: 'auto', 'cpu' or 'cuda'; amp: 'auto', 'bf16', 'fp16' or 'off' (kit.train.resolve_amp).
        log_every: record the loss every this many steps (and at the last one).
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
    sw_overlap: float = 0.5
    sw_batch_size: int = 1
    inference: str = "sliding"
    val_every: int = 0
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    log_every: int = 1
    num_workers: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"FinetuneConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.task == "classification" and not self.target:
            raise ValueError("FinetuneConfig.target (e.g. 'tumor_present') is required for classification")
        if self.transfer not in _TRANSFERS:
            raise ValueError(f"FinetuneConfig.transfer must be one of {_TRANSFERS}, got {self.transfer!r}")
        for name in ("steps", "batch_size", "log_every", "sw_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or self.num_workers < 0 or self.val_every < 0 or self.patience < 0:
            raise ValueError("FinetuneConfig.warmup_steps, num_workers, val_every and patience must be >= 0")
        if self.fg_sampling not in ("voxel", "label"):
            raise ValueError(f"FinetuneConfig.fg_sampling must be 'voxel' or 'label', got {self.fg_sampling!r}")
        if self.inference not in ("sliding", "whole", "auto"):
            raise ValueError(f"FinetuneConfig.inference must be 'sliding', 'whole' or 'auto', got {self.inference!r}")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError(f"FinetuneConfig.pos_fraction must be in [0, 1], got {self.pos_fraction}")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"FinetuneConfig.sw_overlap must be in [0, 1), got {self.sw_overlap}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"FinetuneConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        resolve_amp(self.amp, torch.device("cpu"))  # validates the spelling
        self.crop = list(_triple(self.crop, "crop")) if not np.isscalar(self.crop) else int(self.crop)
        self.input_size = list(_triple(self.input_size, "input_size")) if not np.isscalar(self.input_size) else int(self.input_size)
        self.model = dict(self.model or {})
        self.init = str(self.init)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Segmentation crop / sliding-window roi as 3 ints."""
        return _triple(self.crop, "crop")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Classification input size as 3 ints."""
        return _triple(self.input_size, "input_size")


# ----------------------------------------------------------------------------- models


class ClassificationModel(nn.Module):
    """A backbone's encoder, globally pooled, and a linear head: ``(B, C, D, H, W) -> (B, n_outputs)`` logits.

    ``backbone`` is the full kit.models network (so its state-dict keys, under ``backbone.``, are the
    ones SSL checkpoints hold); only ``backbone.encode`` runs, so the decoder's parameters are frozen
    (they could never receive a gradient). ``n_outputs`` is 1 for a binary target (a sigmoid logit)
    and the number of classes otherwise.

    Example:
        >>> net = ClassificationModel(create_model("segresnet_small", in_channels=2), n_outputs=1)
        >>> net(torch.zeros(2, 2, 32, 32, 32)).shape
        torch.Size([2, 1])
    """

    def __init__(self, backbone: nn.Module, n_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.feature_dim, int(n_outputs), dropout=dropout)
        self.n_outputs = int(n_outputs)
        self.dropout = float(dropout)
        self.in_channels = backbone.in_channels
        self.encoder_prefixes = tuple(f"backbone.{p}" for p in backbone.encoder_prefixes)
        for name, param in backbone.named_parameters():
            if not name.startswith(tuple(backbone.encoder_prefixes)):
                param.requires_grad_(False)

    def check_input(self, x: torch.Tensor) -> None:
        """The backbone's input check (rank, channels, spatial size)."""
        self.backbone.check_input(x)

    def train(self, mode: bool = True) -> ClassificationModel:
        """As ``nn.Module.train``, except that a frozen encoder (a linear probe) stays in eval mode, so
        its BatchNorm statistics and dropout do not change while only the head trains."""
        super().train(mode)
        encoder = [p for n, p in self.backbone.named_parameters() if n.startswith(tuple(self.backbone.encoder_prefixes))]
        if mode and encoder and not any(p.requires_grad for p in encoder):
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_outputs)``."""
        return self.head(self.backbone.encode(x))


class DiceBCELoss(nn.Module):
    """Dice + binary cross-entropy on sigmoid region channels (overlapping regions allowed).

    ``monai.losses.DiceLoss(sigmoid=True)`` (per channel, averaged) plus
    ``torch.nn.BCEWithLogitsLoss`` (per voxel and channel), weighted ``lambda_dice`` / ``lambda_bce``.
    See the module docstring for why not DiceCELoss.

    Example:
        >>> loss = DiceBCELoss()
        >>> logits, target = torch.zeros(1, 3, 8, 8, 8), torch.ones(1, 3, 8, 8, 8)
        >>> round(float(loss(logits, target)), 4)   # Dice 1 - 2*0.5/(0.5+1) + BCE log(2)
        1.0265
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_bce: float = 1.0) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.bce = nn.BCEWithLogitsLoss()
        self.lambda_dice, self.lambda_bce = float(lambda_dice), float(lambda_bce)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` and ``target`` (B, R, D, H, W); target in {0, 1}."""
        target = target.to(logits.dtype)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * self.bce(logits, target)


@contextlib.contextmanager
def _seeded(seed: int):
    """Run a block with torch's CPU RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _output_key_patterns(backbone: nn.Module) -> tuple[str, ...]:
    """fnmatch patterns of the keys whose shape follows ``out_channels`` (the output layer)."""
    known = getattr(backbone, "output_keys", None) or _OUTPUT_KEYS.get(backbone.config.get("name"))
    if known:
        return tuple(known)
    # Unknown model: the keys whose shape changes with out_channels.
    other = create_model(**{**backbone.config, "out_channels": backbone.out_channels + 1}).state_dict()
    return tuple(k for k, v in backbone.state_dict().items() if k in other and other[k].shape != v.shape)


def _match(key: str, patterns: Sequence[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _backbone_prefix(state: Mapping[str, torch.Tensor], target_keys: set[str]) -> str:
    """The prefix under which ``state`` holds the backbone ('' for a bare backbone, 'model.' for an
    SSL objective's state dict, 'backbone.' for a classification fine-tune): the one that maps the
    most keys onto the backbone's, the shortest on a tie."""
    candidates = {""} | {k.split(".", 1)[0] + "." for k in state if "." in k}
    scored = [(sum(1 for k in state if k.startswith(p) and k[len(p) :] in target_keys), -len(p), p) for p in candidates]
    hits, _, prefix = max(scored)
    return prefix if hits else ""


def _load_pretrained(
    backbone: nn.Module,
    checkpoint: Mapping[str, Any],
    path: Path,
    modalities: Sequence[str] | None,
    transfer: str,
) -> LoadReport:
    """Load a checkpoint's backbone tensors into ``backbone``; report (and warn about) every gap."""
    target = backbone.state_dict()
    state, notes = normalize_state_dict(checkpoint["state_dict"])
    prefix = _backbone_prefix(state, set(target))
    dropped = [k for k in state if not k.startswith(prefix)]  # SSL heads, momentum encoders ...
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if prefix:
        notes.append(f"took the backbone from keys under {prefix!r}")
    if dropped:
        notes.append(f"left out {len(dropped)} tensors outside the backbone (SSL heads)")

    # First layer: map the checkpoint's contrasts onto ours by name (never re-initialise it).
    extra = checkpoint.get("extra") or {}
    src_names = extra.get("modalities")
    src_in = int(checkpoint["model_config"].get("in_channels", backbone.in_channels))
    same = (
        src_in == backbone.in_channels
        and (src_names is None or modalities is None
             or [canonical_modality(m) for m in src_names] == [canonical_modality(m) for m in modalities])
    )
    transferred = []
    if not same:
        if src_names is not None and modalities is not None:
            src_list, dst_list = list(src_names), list(modalities)
        else:
            src_list = [f"input{i}" for i in range(src_in)]
            dst_list = [f"new{i}" for i in range(backbone.in_channels)]
            notes.append("input contrast names unknown: every input channel starts from the mean source filter")
        for key in backbone.input_conv_keys:
            if key in state and state[key].ndim >= 2 and state[key].shape[1] == len(src_list):
                state[key] = transfer_input_channels(state[key], src_list, dst_list)
                transferred.append(key)
        notes.append(f"input channels {src_list} -> {dst_list}")

    encoder = tuple(backbone.encoder_prefixes)
    output = _output_key_patterns(backbone)
    if transfer == "encoder":
        not_wanted = [k for k in state if not k.startswith(encoder)]
        expected = {k for k in target if k.startswith(encoder)}
    else:
        not_wanted = [k for k in state if _match(k, output)]
        expected = {k for k in target if not _match(k, output)}
    state = {k: v for k, v in state.items() if k not in set(not_wanted)}
    report = load_weights(backbone, state, allow_missing=("*",), allow_unexpected=("*",))
    # Keys the transfer does not ask for are not "missing": they keep their initialisation on purpose.
    report.missing = [k for k in report.missing if k in expected]
    report.dropped = [f"{prefix}{k}" for k in not_wanted] + dropped
    report.transferred = [k for k in transferred if k in report.loaded]
    report.notes = notes + report.notes + [f"{transfer} transfer from {path}"]
    loaded_encoder = [k for k in report.loaded if k.startswith(encoder)]
    if not loaded_encoder:
        raise CheckpointError(
            f"{path}: none of its tensors fits the encoder of this {backbone.config['name']} backbone "
            f"(prefixes {list(encoder)}); wrong architecture or options?\n{report.summary()}"
        )
    if report.missing or report.unexpected or report.shape_mismatched:
        warnings.warn(f"{path}: weights only partly transferred; these keep their initial values:\n{report.summary()}",
                      stacklevel=3)
    return report


def freeze_encoder(model: nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on every parameter under ``model.encoder_prefixes``; returns their names.

    Example:
        >>> net = create_model("segresnet_small", in_channels=1)
        >>> frozen = freeze_encoder(net)
        >>> frozen[0], all(not p.requires_grad for n, p in net.named_parameters() if n in frozen)
        ('convInit.conv.weight', True)
    """
    prefixes = tuple(model.encoder_prefixes)
    frozen = []
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def build_finetune_model(
    config: FinetuneConfig,
    in_channels: int,
    modalities: Sequence[str] | None = None,
    n_outputs: int = 3,
) -> tuple[nn.Module, LoadReport | None]:
    """The model to fine-tune, from scratch or initialised from a checkpoint.

    Args:
        config: uses ``task``, ``backbone``, ``model``, ``init``, ``transfer``, ``freeze_encoder``,
            ``dropout`` and ``seed`` (the initialisation of everything not loaded).
        in_channels: input contrasts.
        modalities: their names in order (for the first-layer transfer when the checkpoint's differ).
        n_outputs: segmentation region channels, or classification logits (1 for a binary target).

    Returns:
        ``(model, report)``: the backbone itself (segmentation) or a :class:`ClassificationModel`;
        ``report`` is None from scratch, else the :class:`LoadReport` of the transfer.

    Raises:
        CheckpointError / FileNotFoundError: unreadable checkpoint, or no encoder tensor fits.
        ValueError: ``config.backbone`` differs from the checkpoint's backbone.

    Example:
        >>> net, report = build_finetune_model(FinetuneConfig(), in_channels=4, n_outputs=3)
        >>> net.out_channels, report is None
        (3, True)
    """
    classification = config.task == "classification"
    seg_out = 1 if classification else int(n_outputs)
    report = None
    if config.init == "scratch":
        arch = {"name": config.backbone, **config.model, "in_channels": int(in_channels), "out_channels": seg_out}
        checkpoint = None
    else:
        path = Path(config.init)
        checkpoint = load_checkpoint(path)
        stored = dict(checkpoint["model_config"])
        if stored.get("name") != config.backbone:
            raise ValueError(
                f"{path}: holds a {stored.get('name')!r} backbone but FinetuneConfig.backbone is "
                f"{config.backbone!r}; set backbone={stored.get('name')!r}"
            )
        if classification:  # keep the checkpoint's decoder shape: it is unused, and then loads cleanly
            seg_out = int(stored.get("out_channels", seg_out))
        arch = {**stored, **config.model, "in_channels": int(in_channels), "out_channels": seg_out}
    with _seeded(config.seed):
        backbone = create_model(**arch)
        if checkpoint is not None:
            report = _load_pretrained(backbone, checkpoint, Path(config.init), modalities, config.transfer)
        model = ClassificationModel(backbone, n_outputs, config.dropout) if classification else backbone
    if config.freeze_encoder:
        freeze_encoder(model)
    return model, report


# ----------------------------------------------------------------------------- data


def _augment(image: np.ndarray, target: np.ndarray | None, rng: np.random.Generator):
    """Random flip of each spatial axis (p = 0.5) and per-channel intensity scale x(1 +- 0.1) and
    shift +-0.1 (z-score units), as in MONAI's BraTS recipe; the target is flipped alike."""
    flips = [axis + 1 for axis in range(3) if rng.random() < 0.5]
    scale = 1.0 + rng.uniform(-0.1, 0.1, size=(image.shape[0], 1, 1, 1))
    shift = rng.uniform(-0.1, 0.1, size=(image.shape[0], 1, 1, 1))
    if flips:
        image = np.flip(image, axis=flips)
        if target is not None:
            target = np.flip(target, axis=flips)
    image = (image * scale + shift).astype(np.float32)
    return np.ascontiguousarray(image), None if target is None else np.ascontiguousarray(target)


class LabelledCropDataset(Dataset):
    """Random crops of cached volumes with their region targets, addressed by ``(index, sample_seed)`` keys.

    Same protocol as :class:`kit.train.sampling.ArrayCropDataset`: every random choice of a sample
    (foreground or uniform crop, its position, the augmentation) comes from
    ``numpy.random.default_rng(sample_seed)``, so a key always gives the same pair. With probability
    ``pos_fraction`` the crop is centred on a uniformly drawn foreground voxel (label > 0; clamped to
    the volume), otherwise its corner is uniform; volumes smaller than the crop are zero-padded (centred).

    Args:
        images: (C, X, Y, Z) arrays (memory-mapped cache arrays are read lazily, crop only).
        labels: (1, X, Y, Z) integer label maps, one per image.
        regions: region name -> label values (kit.train.regions).
        crop_size: (d, h, w) or one int.
        pos_fraction: probability of a foreground-centred crop.
        augment: random flips and intensity scale/shift.
        fg_sampling: 'voxel' (any foreground voxel) or 'label' (a present label value first, then
            one of its voxels: class-balanced, so thin regions are not starved).

    Returns (``__getitem__``):
        ``(image float32 (C, d, h, w), target float32 (R, d, h, w))`` tensors.

    Example:
        >>> img = np.random.rand(2, 40, 40, 40).astype("float32")
        >>> lab = np.zeros((1, 40, 40, 40), np.uint8); lab[0, 30:34, 30:34, 30:34] = 1
        >>> ds = LabelledCropDataset([img], [lab], {"lesion": [1]}, 16, pos_fraction=1.0)
        >>> x, y = ds[(0, 5)]
        >>> x.shape, y.shape, bool(y.sum() > 0)
        (torch.Size([2, 16, 16, 16]), torch.Size([1, 16, 16, 16]), True)
    """

    def __init__(
        self,
        images: Sequence,
        labels: Sequence,
        regions: Mapping[str, Sequence[int]],
        crop_size: int | Sequence[int],
        pos_fraction: float = 0.5,
        augment: bool = False,
        fg_sampling: str = "voxel",
    ) -> None:
        if fg_sampling not in ("voxel", "label"):
            raise ValueError(f"LabelledCropDataset: fg_sampling must be 'voxel' or 'label', got {fg_sampling!r}")
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"LabelledCropDataset: {len(images)} images and {len(labels)} labels (need the same, > 0)")
        for i, (image, label) in enumerate(zip(images, labels)):
            if label is None:
                raise ValueError(f"LabelledCropDataset: subject {i} has no label map")
            if len(image.shape) != 4 or tuple(label.shape) != (1, *image.shape[1:]):
                raise ValueError(
                    f"LabelledCropDataset: subject {i}: image {tuple(image.shape)} and label {tuple(label.shape)} "
                    "must be (C, X, Y, Z) and (1, X, Y, Z)"
                )
        self.images, self.labels = list(images), list(labels)
        self.regions = dict(regions)
        self.crop_size = _triple(crop_size, "crop")
        self.pos_fraction = float(pos_fraction)
        self.augment = bool(augment)
        self.fg_sampling = fg_sampling
        self._foreground: dict[int, np.ndarray] = {}
        self._by_label: dict[int, list[np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def foreground(self, index: int) -> np.ndarray:
        """Flat indices of the voxels with label > 0 in subject ``index`` (computed once)."""
        if index not in self._foreground:
            self._foreground[index] = np.flatnonzero(np.asarray(self.labels[index][0]) > 0)
        return self._foreground[index]

    def foreground_by_label(self, index: int) -> list[np.ndarray]:
        """Flat indices of subject ``index``'s voxels, one array per nonzero label value present."""
        if index not in self._by_label:
            flat = np.asarray(self.labels[index][0]).ravel()
            fg = self.foreground(index)
            values = flat[fg]
            self._by_label[index] = [fg[values == v] for v in np.unique(values)]
        return self._by_label[index]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            index, seed = (int(k) for k in key)
        except (TypeError, ValueError):
            raise TypeError(f"LabelledCropDataset: keys are (index, sample_seed) tuples, got {key!r}") from None
        image, label = self.images[index], self.labels[index]
        spatial = image.shape[1:]
        rng = np.random.default_rng(seed)
        foreground = self.foreground(index) if rng.random() < self.pos_fraction else np.empty(0)
        if foreground.size and self.fg_sampling == "label":
            groups = self.foreground_by_label(index)
            foreground = groups[int(rng.integers(len(groups)))]
        if foreground.size:
            centre = np.unravel_index(foreground[rng.integers(foreground.size)], spatial)
            corner = [int(min(max(c - k // 2, 0), max(s - k, 0))) for c, k, s in zip(centre, self.crop_size, spatial)]
        else:
            corner = [int(rng.integers(0, max(s - k, 0) + 1)) for s, k in zip(spatial, self.crop_size)]
        box = (slice(None),) + tuple(slice(o, o + k) for o, k in zip(corner, self.crop_size))
        crop = np.asarray(image[box], dtype=np.float32)
        target = labels_to_regions(np.asarray(label[box]), self.regions)
        missing = [max(k - s, 0) for k, s in zip(self.crop_size, crop.shape[1:])]
        if any(missing):
            pad = [(0, 0)] + [(m // 2, m - m // 2) for m in missing]
            crop, target = np.pad(crop, pad), np.pad(target, pad)
        if self.augment:
            crop, target = _augment(crop, target, rng)
        return torch.from_numpy(np.ascontiguousarray(crop)), torch.from_numpy(np.ascontiguousarray(target))


def classification_input(image: Any, size: int | Sequence[int]) -> torch.Tensor:
    """A brain-cropped volume as the classifier sees it: resized so that its longest side fits
    ``size`` (aspect ratio kept; trilinear, anti-aliased when shrinking), then zero-padded (centred)
    to ``size``.

    Args:
        image: (C, X, Y, Z) array or tensor.
        size: output spatial size, one int or 3.

    Returns:
        float32 tensor (C, *size).

    Example:
        >>> classification_input(np.ones((2, 40, 20, 30), np.float32), 32).shape
        torch.Size([2, 32, 32, 32])
    """
    from monai.transforms import Resize, ResizeWithPadOrCrop
    from monai.utils import convert_to_tensor

    shape = _triple(size, "input_size")
    volume = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: cache arrays are read-only
    if volume.ndim != 4:
        raise ValueError(f"classification_input: expected (C, X, Y, Z), got shape {tuple(volume.shape)}")
    resized = Resize(spatial_size=max(shape), size_mode="longest", mode="trilinear", anti_aliasing=True)(volume)
    fitted = ResizeWithPadOrCrop(shape)(resized)
    return convert_to_tensor(fitted, track_meta=False, dtype=torch.float32)


class ClassificationVolumeDataset(Dataset):
    """Whole volumes (:func:`classification_input`) with class indices, addressed by ``(index, sample_seed)``.

    The seed drives only the augmentation (flips, intensity); without it a key's sample does not
    depend on the seed.

    Returns (``__getitem__``):
        ``(image float32 (C, *size), class index int64 scalar)``.

    Example:
        >>> ds = ClassificationVolumeDataset([np.ones((1, 20, 20, 20), np.float32)], [1], 16)
        >>> x, y = ds[(0, 3)]
        >>> x.shape, int(y)
        (torch.Size([1, 16, 16, 16]), 1)
    """

    def __init__(self, images: Sequence, targets: Sequence[int], size: int | Sequence[int], augment: bool = False) -> None:
        if len(images) == 0 or len(images) != len(targets):
            raise ValueError(f"ClassificationVolumeDataset: {len(images)} images and {len(targets)} targets")
        self.images, self.targets = list(images), [int(t) for t in targets]
        self.size = _triple(size, "input_size")
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = (int(k) for k in key)
        volume = classification_input(self.images[index], self.size)
        if self.augment:
            array, _ = _augment(volume.numpy(), None, np.random.default_rng(seed))
            volume = torch.from_numpy(array)
        return volume, torch.tensor(self.targets[index], dtype=torch.int64)


def is_missing(value: Any) -> bool:
    """True for an absent phenotype value: None, NaN, or text such as '', 'NA', 'n/a', 'none'.

    Example:
        >>> [is_missing(v) for v in (None, float("nan"), "NA", 0, "glioma")]
        [True, True, True, False, False]
    """
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_TEXT


def class_table(values: Sequence[Any]) -> list[Any]:
    """The classes of a target column: its distinct non-missing values, sorted (numbers before text).

    Example:
        >>> class_table(["wildtype", None, "mutant", "wildtype"])
        ['mutant', 'wildtype']
    """
    present = {v for v in values if not is_missing(v)}
    return sorted(present, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else v.lower()))


def _class_weights(spec: Any, targets: Sequence[int], n_classes: int) -> torch.Tensor | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"FinetuneConfig.class_weights must be None, 'balanced' or a list, got {spec!r}")
        counts = np.bincount(np.asarray(targets), minlength=n_classes).astype(float)
        return torch.tensor(len(targets) / (n_classes * np.maximum(counts, 1.0)), dtype=torch.float32)
    weights = [float(w) for w in spec]
    if len(weights) != n_classes:
        raise ValueError(f"FinetuneConfig.class_weights has {len(weights)} values for {n_classes} classes")
    return torch.tensor(weights, dtype=torch.float32)


class _ClassLoss(nn.Module):
    """BCE-with-logits on one logit for two classes (class weights -> pos_weight), else cross-entropy."""

    def __init__(self, n_classes: int, weights: torch.Tensor | None) -> None:
        super().__init__()
        self.binary = n_classes == 2
        if self.binary:
            pos_weight = None if weights is None else (weights[1] / weights[0]).reshape(1)
            self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        else:
            self.loss = nn.CrossEntropyLoss(weight=weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return self.loss(logits[:, 0], target.to(logits.dtype))
        return self.loss(logits, target)


# ----------------------------------------------------------------------------- training


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the trained network (eval mode, on the training device).
        history: ``[{'step', 'loss', 'lr'}, ...]`` every ``log_every`` steps.
        summary: ``n_train``, ``wall_s``, ``samples_per_s``, ``final_loss``, ``init_report`` (text).
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
                         head={"n_outputs": int(self.model.n_outputs), "dropout": float(self.model.dropout)})
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


def load_finetuned(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :meth:`FinetuneResult.save`; returns ``(model in eval mode, extra)``.

    Raises:
        CheckpointError: not a fine-tuned checkpoint (no ``extra['task']``), or weights that do not
            fit the stored configuration exactly; the message names the file.

    Example:
        >>> model, extra = load_finetuned("runs/x/04_finetune/seg.pt")  # doctest: +SKIP
        >>> extra["task"], extra["regions"]  # doctest: +SKIP
        ('segmentation', {'TC': [1, 4], 'WT': [1, 2, 4], 'ET': [4]})
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, map_location=map_location)
    extra = dict(checkpoint["extra"])
    task = extra.get("task")
    if task not in TASKS:
        raise CheckpointError(
            f"{path}: not a fine-tuned checkpoint (extra['task'] is {task!r}); an SSL checkpoint must be "
            "fine-tuned first (kit.train.finetune.finetune)"
        )
    backbone = model_from_config(checkpoint["model_config"], path)
    if task == "classification":
        head = extra.get("head") or {}
        model = ClassificationModel(backbone, int(head.get("n_outputs", 1)), float(head.get("dropout", 0.0)))
    else:
        model = backbone
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the stored model configuration: {err}") from err
    return model.eval(), extra


def _run_steps(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: nn.Module,
    config: FinetuneConfig,
    device: torch.device,
    callback: Callable[[int, dict], None] | None,
    validate: Callable[[nn.Module], tuple[tuple[float, ...], dict]] | None = None,
) -> tuple[list[dict], dict, list[dict]]:
    """The fine-tuning loop: AdamW + warmup-cosine, AMP, clipping; keys from GlobalBatchSampler.

    With ``validate``, every ``config.val_every`` steps (and at the last) the model is validated,
    the best weights are kept and restored at the end, and training stops after
    ``config.patience`` validations without improvement (:mod:`kit.train.selection`)."""
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fine-tuning: the model has no trainable parameter (everything is frozen)")
    model.to(device)
    loss_fn.to(device)
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=config.warmup_steps, t_total=config.steps)
    sampler = GlobalBatchSampler(len(dataset), config.batch_size, config.seed, config.steps)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    history: list[dict] = []
    val_history: list[dict] = []
    selection = ModelSelection(config.patience)
    val_every = int(config.val_every) if validate is not None else 0
    val_s = 0.0
    last_step = 0
    model.train()
    started = time.perf_counter()
    bar = tqdm(total=config.steps, disable=not config.progress, unit="step", desc=f"finetune {config.task}")
    try:
        for step, (x, y) in enumerate(loader, start=1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = optimizer.param_groups[0]["lr"]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is {float(loss)} at step {step}; lower lr or check the data")
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if step % config.log_every == 0 or step == config.steps:
                record = {"step": step, "loss": float(loss.detach()), "lr": lr}
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if callback is not None:
                    callback(step, record)
            bar.update(1)
            last_step = step
            if val_every and (step % val_every == 0 or step == config.steps):
                tic = time.perf_counter()
                score, metrics = validate(model)
                model.train()
                val_s += time.perf_counter() - tic
                best = selection.update(model, step, score)
                val_history.append({"step": step, **metrics, "best": best})
                if selection.should_stop:
                    break
    finally:
        bar.close()
    wall = time.perf_counter() - started
    selection.restore(model)
    model.eval()
    summary = {"wall_s": wall, "samples_per_s": last_step * config.batch_size / max(wall - val_s, 1e-9),
               "final_loss": history[-1]["loss"] if history else None, "steps_run": last_step,
               "best_step": selection.best_step if val_every else last_step, "val_s": val_s,
               "stopped_early": bool(val_every and last_step < config.steps)}
    if val_every and selection.best_score is not None:
        summary["best_val"] = selection.best_score[0]
    return history, summary, val_history


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
            is the best one on them (:mod:`kit.train.selection`).

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
    device = resolve_device(config.device)
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
            config.crop_shape, config.pos_fraction, config.augment, config.fg_sampling,
        )
        validate = segmentation_validator(cache, val_indices, region_def, config.crop_shape, inference=config.inference,
                                          overlap=config.sw_overlap, amp=config.amp) if val_indices else None
        n_outputs, loss_fn, sample_shape = len(region_def), DiceBCELoss(), config.crop_shape
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
        dataset = ClassificationVolumeDataset([images[i] for i, _, _ in kept], targets, config.input_shape, config.augment)
        n_outputs = 1 if len(table) == 2 else len(table)
        loss_fn = _ClassLoss(len(table), _class_weights(config.class_weights, targets, len(table)))
        sample_shape = config.input_shape
        subjects = [s for _, s, _ in kept]
        result_meta.update(classes=table)
        val_kept = [i for i in val_indices if not is_missing(cache.entries[i].get(config.target))]
        validate = classification_validator(cache, val_kept, config.target, table, config.input_shape,
                                            amp=config.amp) if val_kept else None

    model, report = build_finetune_model(config, len(modalities), modalities, n_outputs)
    model.check_input(torch.empty(1, len(modalities), *sample_shape, device="meta"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # dropout: deterministic, without touching the caller's RNG
        history, summary, val_history = _run_steps(model, dataset, loss_fn, config, device, callback,
                                                   validate if config.val_every else None)
    summary.update(n_train=len(subjects), init_report=report.summary() if report is not None else None)
    # voxel size of the training data, so kit predict can warn about inputs at another resolution
    affines = [np.asarray(cache.entries[i]["affine"], float) for i in indices if cache.entries[i].get("affine")]
    spacing = [round(float(v), 4) for v in np.median([np.linalg.norm(a[:3, :3], axis=0) for a in affines], axis=0)] if affines else []
    return FinetuneResult(model=model, history=history, summary=summary, config=config, load_report=report,
                          modalities=modalities, train_subjects=subjects, spacing_mm=spacing, val_history=val_history,
                          val_subjects=[str(cache.entries[i]["subject"]) for i in val_indices], **result_meta)
