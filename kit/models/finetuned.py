"""Fine-tuned networks as inference sees them: the classification model and the loader of a fine-tune's checkpoint.

A fine-tuned checkpoint (written by ``kit.finetune.FinetuneResult.save``) holds the backbone's
``model_config``, the weights of the whole fine-tuned network and, in ``extra``, the task
(``'segmentation'``: the backbone itself with one output channel per region; ``'classification'``:
a :class:`ClassificationModel`), its regions or classes and the input contrasts.
:func:`load_finetuned` rebuilds it; kit.predict and the MONAI bundle export read it this way.

Example:
    >>> from kit.models import create_model
    >>> net = ClassificationModel(create_model("segresnet_small", in_channels=1), n_outputs=3)
    >>> net(torch.zeros(1, 1, 16, 16, 16)).shape
    torch.Size([1, 3])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kit.models.checkpoints import CheckpointError, load_checkpoint, model_from_config
from kit.models.heads import ClassificationHead

__all__ = ["TASKS", "ClassificationModel", "load_finetuned"]

#: What a fine-tuned checkpoint's ``extra['task']`` may say.
TASKS = ("segmentation", "classification")


class ClassificationModel(nn.Module):
    """A backbone's encoder, globally pooled, and a linear head: ``(B, C, D, H, W) -> (B, n_outputs)`` logits.

    ``backbone`` is the full kit.models network (so its state-dict keys, under ``backbone.``, are the
    ones SSL checkpoints hold); only ``backbone.encode`` runs, so the decoder's parameters are frozen
    (they could never receive a gradient). ``n_outputs`` is 1 for a binary target (a sigmoid logit)
    and the number of classes otherwise.

    Example:
        >>> from kit.models import create_model
        >>> net = ClassificationModel(create_model("segresnet_small", in_channels=2), n_outputs=1)
        >>> net(torch.zeros(2, 2, 32, 32, 32)).shape
        torch.Size([2, 1])
    """

    def __init__(self, backbone: nn.Module, n_outputs: int, dropout: float = 0.0, pool: str = "avg") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.feature_dim, int(n_outputs), dropout=dropout, pool=pool)
        self.n_outputs = int(n_outputs)
        self.dropout = float(dropout)
        self.pool = pool
        self.in_channels = backbone.in_channels
        self.encoder_prefixes = tuple(f"backbone.{p}" for p in backbone.encoder_prefixes)
        for name, param in backbone.named_parameters():
            if not name.startswith(tuple(backbone.encoder_prefixes)):
                param.requires_grad_(False)

    @property
    def config(self) -> dict[str, Any]:
        """The backbone's ``config`` (``create_model(**config)`` rebuilds it; the head is described in a
        fine-tuned checkpoint's ``extra['head']``, see :func:`load_finetuned`)."""
        return self.backbone.config

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


def load_finetuned(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :meth:`kit.finetune.FinetuneResult.save`; returns ``(model in eval mode, extra)``.

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
            "fine-tuned first (kit.finetune.finetune)"
        )
    backbone = model_from_config(checkpoint["model_config"], path)
    if task == "classification":
        head = extra.get("head") or {}
        model = ClassificationModel(backbone, int(head.get("n_outputs", 1)), float(head.get("dropout", 0.0)),
                                    str(head.get("pool", "avg")))
    else:
        model = backbone
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the stored model configuration: {err}") from err
    return model.eval(), extra
