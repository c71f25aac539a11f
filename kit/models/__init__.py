"""kit.models: backbones by name, heads, and checkpoints.

Example:
    >>> from kit.models import create_model, list_models
    >>> list_models()
    ['resnet18_2d', 'resnet50_2d', 'segresnet_small', 'swinunetr']
    >>> net = create_model("segresnet_small", in_channels=2, out_channels=3)
    >>> rebuilt = create_model(**net.config)
"""

from kit.models.backbones import (
    BackboneMixin,
    ResNet2DBackbone,
    SegResNetBackbone,
    SwinUNETRBackbone,
    create_model,
    list_models,
    register_model,
)
from kit.models.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    KeyMismatchError,
    LoadReport,
    build_from_checkpoint,
    canonical_modality,
    load_checkpoint,
    load_weights,
    normalize_state_dict,
    read_state_dict,
    save_checkpoint,
    transfer_input_channels,
)
from kit.models.heads import ClassificationHead, SSLHead, global_pool

__all__ = [
    "BackboneMixin",
    "ResNet2DBackbone",
    "SegResNetBackbone",
    "SwinUNETRBackbone",
    "create_model",
    "list_models",
    "register_model",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "KeyMismatchError",
    "LoadReport",
    "build_from_checkpoint",
    "canonical_modality",
    "load_checkpoint",
    "load_weights",
    "normalize_state_dict",
    "read_state_dict",
    "save_checkpoint",
    "transfer_input_channels",
    "ClassificationHead",
    "SSLHead",
    "global_pool",
]
