"""The parts of a :class:`kit.finetune.FinetuneConfig` that the model builder and the optimizer groups read, as
small frozen values: :func:`kit.finetune.finetune` resolves its config into them once, so
:mod:`kit.finetune.task` reads plain values and never the whole config.

:func:`settings_of` takes them from a FinetuneConfig (or anything with the same fields: it reads them by name, so
this module imports no config) and returns an instance unchanged.

Example:
    >>> from kit.finetune import FinetuneConfig
    >>> settings_of(ModelSettings, FinetuneConfig(backbone="segresnet_small", model={"init_filters": 8})).model
    {'init_filters': 8}
    >>> settings_of(ProtocolSettings, FinetuneConfig(protocol="lp-ft", lp_steps=5, steps=10, encoder_lr_scale=0.5))
    ProtocolSettings(protocol='lp-ft', lp_steps=5, layer_decay=1.0, encoder_lr_scale=0.5)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

__all__ = ["ModelSettings", "ProtocolSettings", "settings_of"]

_Settings = TypeVar("_Settings")


def settings_of(cls: type[_Settings], source: Any) -> _Settings:
    """``source`` when it is a ``cls`` already, else a ``cls`` of its attributes named as ``cls``'s fields (the
    module's example)."""
    if isinstance(source, cls):
        return source
    return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ModelSettings:
    """What :func:`kit.finetune.task.build_finetune_model` builds: the task, the backbone and its options, the
    initialisation and its transfer, the head (dropout, pooling), the frozen encoder and the seed of what is
    not loaded (the fields of :class:`kit.finetune.FinetuneConfig` of the same names)."""

    task: str
    backbone: str
    model: dict
    init: str
    transfer: str
    freeze_encoder: bool
    dropout: float
    head_pool: str
    seed: int


@dataclass(frozen=True)
class ProtocolSettings:
    """How the encoder is fine-tuned (:func:`kit.finetune.task.protocol_groups`): the protocol, the linear-probe
    steps of 'lp-ft', the layer decay of 'llrd' and the encoder's share of the learning rate."""

    protocol: str
    lp_steps: int
    layer_decay: float
    encoder_lr_scale: float
