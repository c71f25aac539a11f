"""What fine-tuning optimises: the model to fine-tune (from scratch or a checkpoint) and its loss.

Segmentation: one sigmoid channel per region (BraTS TC / WT / ET, or one stroke 'lesion'),
Dice + binary cross-entropy (:class:`DiceBCELoss`). Classification: the backbone's encoder,
globally pooled, and a linear head (:class:`kit.models.ClassificationModel`), binary or
multi-class cross-entropy. Both: optional frozen encoder (a linear probe).

Why not ``monai.losses.DiceCELoss(sigmoid=True)``: in MONAI 1.6 its cross-entropy term is
``torch.nn.CrossEntropyLoss`` (a softmax over channels) whenever there is more than one channel,
whatever ``sigmoid`` says, which is wrong for overlapping regions (WT contains TC contains ET).
:class:`DiceBCELoss` is MONAI's ``DiceLoss(sigmoid=True)`` plus per-channel ``BCEWithLogitsLoss``,
which is what DiceCELoss does for a single channel.

Initialisation from a checkpoint (:func:`build_finetune_model`) goes through
:func:`kit.models.init_from_checkpoint` and never loads silently.

:class:`FinetuneTask` is what the one training loop (:func:`kit.train.train`) optimises when it
fine-tunes, as it optimises an SSL objective when it pretrains: network + loss, the validation
every ``val_every`` steps with model selection and early stopping (:mod:`kit.finetune.selection`),
and that selection's state in every checkpoint, so a killed fine-tune resumes exactly.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceLoss
from torch import nn

from kit.finetune.selection import ModelSelection
from kit.finetune.settings import ModelSettings, ProtocolSettings, settings_of
from kit.models.backbones import create_model
from kit.models.checkpoints import LoadReport, load_checkpoint
from kit.models.finetuned import ClassificationModel
from kit.models.transfer import init_from_checkpoint

__all__ = ["FinetuneTask", "DiceBCELoss", "ClassLoss", "class_weights", "freeze_encoder", "build_finetune_model",
           "encoder_depths", "protocol_groups"]

Validator = Callable[[nn.Module], tuple[tuple[float, ...], dict]]


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


def _encoder_stage(name: str) -> int:
    """The stage of an encoder parameter, counted from the input (0: the stem).

    A module ``layer<k>`` / ``layers<k>`` (Swin's ``layers1``..``layers4`` and ``layers1c``, a ResNet's
    ``layer1``..``layer4``) is stage k; the i-th entry of a ``*layers`` ModuleList (SegResNet's
    ``down_layers.i``) is stage i + 1; anything else under the encoder (``convInit``, ``patch_embed``,
    a ResNet's ``conv1`` / ``bn1``) is the stem, stage 0.
    """
    parts = name.split(".")[:-1]
    if parts and parts[0] == "backbone":  # a ClassificationModel's backbone
        parts = parts[1:]
    for k, part in enumerate(parts[:3]):
        match = re.fullmatch(r"layers?(\d+)c?", part)
        if match:
            return int(match.group(1))
        if part.isdigit() and k > 0 and parts[k - 1].endswith("layers"):
            return int(part) + 1
    return 0


def encoder_depths(model: nn.Module) -> dict[str, int]:
    """Depth from the top of every encoder parameter of ``model`` (under ``model.encoder_prefixes``).

    The deepest encoder stage has depth 1 and the input stem the largest depth (the number of
    stages), as in BEiT's layer-wise decay, where the head is depth 0. Stages are read from the
    parameter names (:func:`_encoder_stage`): SegResNet ``convInit`` then ``down_layers.0..3``,
    SwinUNETR ``swinViT.patch_embed`` then ``swinViT.layers1..4``.

    Returns:
        ``{parameter name: depth}`` for the encoder's parameters (frozen ones included).

    Example:
        >>> net = create_model("segresnet_small", in_channels=1, init_filters=8)
        >>> d = encoder_depths(net)
        >>> d["convInit.conv.weight"], d["down_layers.0.1.conv1.conv.weight"], d["down_layers.3.0.conv.weight"]
        (5, 4, 1)
    """
    prefixes = tuple(model.encoder_prefixes)
    stages = {name: _encoder_stage(name) for name, _ in model.named_parameters() if name.startswith(prefixes)}
    if not stages:
        return {}
    top = max(stages.values())
    return {name: top - stage + 1 for name, stage in stages.items()}


def protocol_groups(model: nn.Module, protocol: ProtocolSettings | Any) -> list[dict[str, Any]] | None:
    """The optimizer groups of ``protocol.protocol`` for ``model`` (its trainable parameters only).

    ``protocol``: a :class:`kit.finetune.settings.ProtocolSettings` (a FinetuneConfig gives its own). Each group is ``{"name", "params", "lr_scale", "start_step"}``: the group trains at
    ``lr * lr_scale`` (the peak of its schedule) from optimizer step ``start_step`` on; the
    head / decoder group comes first (its lr is the one the training loop logs).

    - ``'full'``: None (one group, every parameter at ``lr``: the loop's default);
    - ``'lp-ft'``: ``head`` (scale 1, from step 0) and ``encoder`` (``encoder_lr_scale``, from ``lp_steps``);
    - ``'llrd'``: ``head`` and one ``encoder_depth<d>`` group per encoder depth
      (:func:`encoder_depths`), scale ``encoder_lr_scale * layer_decay ** d``, all from step 0.

    Example:
        >>> net = create_model("segresnet_small", in_channels=1, init_filters=8)
        >>> llrd = ProtocolSettings(protocol="llrd", lp_steps=0, layer_decay=0.5, encoder_lr_scale=1.0)
        >>> groups = protocol_groups(net, llrd)
        >>> [(g["name"], g["lr_scale"]) for g in groups][:3]
        [('head', 1.0), ('encoder_depth1', 0.5), ('encoder_depth2', 0.25)]
        >>> protocol_groups(net, ProtocolSettings("full", 0, 1.0, 1.0)) is None
        True
    """
    config = settings_of(ProtocolSettings, protocol)
    if config.protocol == "full":
        return None
    depths = encoder_depths(model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in trainable if n not in depths]
    encoder = [(n, p) for n, p in trainable if n in depths]
    if not encoder:
        raise ValueError(f"FinetuneConfig.protocol {config.protocol!r}: the model has no trainable encoder parameter")
    groups: list[dict[str, Any]] = []
    if head:
        groups.append({"name": "head", "params": head, "lr_scale": 1.0, "start_step": 0})
    scale = float(config.encoder_lr_scale)
    if config.protocol == "lp-ft":
        groups.append({"name": "encoder", "params": [p for _, p in encoder], "lr_scale": scale,
                       "start_step": int(config.lp_steps)})
        return groups
    for depth in sorted({depths[n] for n, _ in encoder}):
        groups.append({"name": f"encoder_depth{depth}", "params": [p for n, p in encoder if depths[n] == depth],
                       "lr_scale": scale * float(config.layer_decay) ** depth, "start_step": 0})
    return groups


def build_finetune_model(
    settings: ModelSettings | Any,
    in_channels: int,
    modalities: Sequence[str] | None = None,
    n_outputs: int = 3,
) -> tuple[nn.Module, LoadReport | None]:
    """The model to fine-tune, from scratch or initialised from a checkpoint.

    Args:
        settings: a :class:`kit.finetune.settings.ModelSettings` (a FinetuneConfig gives its own): ``task``,
            ``backbone``, ``model``, ``init``, ``transfer``, ``freeze_encoder``, ``dropout``, ``head_pool`` and
            ``seed`` (the initialisation of everything not loaded).
        in_channels: input contrasts.
        modalities: their names in order (for the first-layer transfer when the checkpoint's differ).
        n_outputs: segmentation region channels, or classification logits (1 for a binary target).

    Returns:
        ``(model, report)``: the backbone itself (segmentation) or a :class:`ClassificationModel`;
        ``report`` is None from scratch, else the :class:`LoadReport` of the transfer.

    Raises:
        CheckpointError / FileNotFoundError: unreadable checkpoint, or no encoder tensor fits.
        ValueError: ``settings.backbone`` differs from the checkpoint's backbone.

    Example:
        >>> settings = ModelSettings(task="segmentation", backbone="segresnet_small", model={"init_filters": 8},
        ...                          init="scratch", transfer="full", freeze_encoder=False, dropout=0.0,
        ...                          head_pool="avg", seed=0)
        >>> net, report = build_finetune_model(settings, in_channels=4, n_outputs=3)
        >>> net.out_channels, report is None
        (3, True)
    """
    config = settings_of(ModelSettings, settings)
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
            report = init_from_checkpoint(backbone, checkpoint, modalities=modalities, keys=config.transfer,
                                          strict=False, source=path)
        model = ClassificationModel(backbone, n_outputs, config.dropout, config.head_pool) if classification else backbone
    if config.freeze_encoder:
        freeze_encoder(model)
    return model, report


def class_weights(spec: Any, targets: Sequence[int], n_classes: int) -> torch.Tensor | None:
    """Classification loss weights from ``FinetuneConfig.class_weights``: None, 'balanced' or one per class.

    Example:
        >>> [round(w, 4) for w in class_weights("balanced", [0, 0, 0, 1], 2).tolist()]
        [0.6667, 2.0]
    """
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


class ClassLoss(nn.Module):
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


class FinetuneTask(nn.Module):
    """Network + loss + model selection, driven by :func:`kit.train.train` like an SSL objective.

    ``forward((x, y), seeds)`` runs ``model(x)`` (under the loop's autocast) and the loss in float32;
    :meth:`on_step_end` validates every ``val_every`` steps (and at ``total_steps``), keeps the best
    weights and sets :attr:`should_stop` after ``patience`` validations without improvement; the
    selection (best weights, step, score, curve) travels in the loop's checkpoints
    (:meth:`checkpoint_extra`), so a resumed run ends with the same selected model.

    A fine-tuning protocol (:func:`protocol_groups`) gives the optimizer groups with their own
    peak rates (:meth:`param_groups`, which the loop reads); a group with a ``start_step`` (the
    encoder of ``'lp-ft'``) is frozen until that step (no gradient, so AdamW leaves it exactly as
    it is) and the encoder's modules are held in eval mode meanwhile (normalisation statistics
    unchanged), then trained.

    Args:
        model: the network to fine-tune (a kit backbone, or a ClassificationModel); its trainable
            parameters are the optimised ones.
        loss_fn: ``loss_fn(logits, target) -> scalar``.
        total_steps: optimizer steps of the run (the last one is always validated).
        validate: ``validate(model) -> (score tuple, metrics)`` on validation subjects, or None.
        val_every, patience, min_steps: see :class:`kit.finetune.FinetuneConfig`.
        groups: :func:`protocol_groups` of ``model`` (None: every trainable parameter at the loop's lr).
        describe: plain values stored in checkpoints; a restart whose ``describe`` differs is refused.

    Example:
        >>> from kit.models import create_model
        >>> task = FinetuneTask(create_model("segresnet_small", 1, init_filters=8), DiceBCELoss(), total_steps=10)
        >>> x, y = torch.zeros(2, 1, 16, 16, 16), torch.zeros(2, 3, 16, 16, 16)
        >>> sorted(task((x, y), torch.tensor([0, 1])))
        ['loss']
    """

    #: Every trainable parameter gets a gradient (a ClassificationModel freezes the unused decoder).
    find_unused_parameters = False

    def __init__(self, model: nn.Module, loss_fn: nn.Module, *, total_steps: int, validate: Validator | None = None,
                 val_every: int = 0, patience: int = 0, describe: Mapping[str, Any] | None = None,
                 groups: Sequence[Mapping[str, Any]] | None = None, min_steps: int = 0) -> None:
        super().__init__()
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("fine-tuning: the model has no trainable parameter (everything is frozen)")
        self.groups = [dict(g) for g in groups] if groups else None
        # groups that start later (lp-ft's encoder): frozen until their start step
        self._delayed = [(int(g["start_step"]), list(g["params"])) for g in self.groups or [] if int(g["start_step"]) > 0]
        for _, params in self._delayed:
            for param in params:
                param.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("fine-tuning: nothing trains before the encoder's start step (the model has no head "
                             "or decoder parameter to train first)")
        self.model = model  # registered first: the optimizer sees the network's parameters in their order
        self.loss_fn = loss_fn
        self.total_steps = int(total_steps)
        self.validate = validate
        self.val_every = int(val_every) if validate is not None else 0
        self.selection = ModelSelection(patience, min_steps=min_steps)
        self.val_history: list[dict] = []
        self.val_s = 0.0
        self.describe = dict(describe or {})

    @property
    def config(self) -> dict[str, Any]:
        """What a restart must share with the run it resumes (besides the loop's own settings)."""
        return {"name": "finetune", **self.describe}

    def param_groups(self, lr: float) -> list[dict[str, Any]] | None:
        """AdamW groups for :func:`kit.train.train`: ``{"params", "lr", "start_step", "name"}`` with the
        group's peak ``lr * lr_scale``; None without protocol groups (the loop's single group).

        Example:
            >>> net = create_model("segresnet_small", 1, init_filters=8)
            >>> groups = protocol_groups(net, ProtocolSettings("lp-ft", lp_steps=5, layer_decay=1.0, encoder_lr_scale=1.0))
            >>> task = FinetuneTask(net, DiceBCELoss(), total_steps=10, groups=groups)
            >>> [(g["name"], g["lr"], g["start_step"]) for g in task.param_groups(1e-3)]
            [('head', 0.001, 0), ('encoder', 0.001, 5)]
        """
        if self.groups is None:
            return None
        return [{"params": list(g["params"]), "lr": float(lr) * float(g["lr_scale"]), "start_step": int(g["start_step"]),
                 "name": str(g["name"])} for g in self.groups]

    @property
    def holding(self) -> bool:
        """True while a delayed group (lp-ft's encoder) is still frozen."""
        return any(not params[0].requires_grad for _, params in self._delayed if params)

    def _release(self, step: int) -> None:
        """Unfreeze the delayed groups whose start step is ``step`` or earlier."""
        released = False
        for start, params in self._delayed:
            if start <= step and params and not params[0].requires_grad:
                for param in params:
                    param.requires_grad_(True)
                released = True
        if released:
            self.train(self.training)

    def train(self, mode: bool = True) -> FinetuneTask:
        """As ``nn.Module.train``; while :attr:`holding`, the encoder's modules stay in eval mode."""
        super().train(mode)
        if mode and self.holding:
            prefixes = [p.rstrip(".") for p in self.model.encoder_prefixes]
            for name, module in self.model.named_modules():
                if any(name == p or name.startswith(p + ".") for p in prefixes):
                    module.eval()
        return self

    @property
    def should_stop(self) -> bool:
        """True once validation asked for early stopping (the loop then ends the run)."""
        return bool(self.val_every and self.selection.should_stop)

    def forward(self, batch: Sequence[torch.Tensor], seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self.model(x)
        with torch.autocast(x.device.type, enabled=False):  # the loss in float32, whatever the network ran in
            loss = self.loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss is {float(loss)}; lower lr or check the data")
        return {"loss": loss}

    def on_step_end(self, step: int) -> None:
        """Release a delayed group whose start is ``step``; validate when it is due; keep the best weights."""
        self._release(step)
        if not self.val_every or (step % self.val_every and step != self.total_steps):
            return
        tic = time.perf_counter()
        score, metrics = self.validate(self.model)
        self.train()  # validation leaves the network in eval mode
        self.val_s += time.perf_counter() - tic
        best = self.selection.update(self.model, step, score)
        self.val_history.append({"step": step, **metrics, "best": best})

    def checkpoint_extra(self) -> dict[str, Any]:
        """The selection's state for the loop's checkpoints (best weights as CPU tensors)."""
        sel = self.selection
        return {"finetune_task": self.config,
                "selection": {"best_score": list(sel.best_score) if sel.best_score is not None else None,
                              "best_step": sel.best_step, "bad": sel.bad, "best_state": sel.best_state,
                              "last_step": sel.last_step, "first_score": list(sel.first_score) if sel.first_score else None,
                              "val_history": list(self.val_history), "val_s": self.val_s}}

    def load_checkpoint_extra(self, extra: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_extra` saved."""
        state = extra["selection"]
        sel = self.selection
        sel.best_score = tuple(state["best_score"]) if state["best_score"] is not None else None
        sel.best_step, sel.bad, sel.best_state = state["best_step"], int(state["bad"]), state["best_state"]
        self.val_history, self.val_s = list(state["val_history"]), float(state["val_s"])
        sel.last_step = state.get("last_step", self.val_history[-1]["step"] if self.val_history else None)
        sel.first_score = tuple(state["first_score"]) if state.get("first_score") else None
        self._release(int(extra.get("step", 0)))  # lp-ft past its probe phase: the encoder trains again
