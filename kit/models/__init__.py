"""kit.models: backbones by name, heads, checkpoints, weight transfer, inference and fine-tuned networks.

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
    load_checkpoint,
    load_weights,
    model_from_config,
    normalize_state_dict,
    read_state_dict,
    save_checkpoint,
)
from kit.models.finetuned import ClassificationModel, load_finetuned
from kit.models.heads import ClassificationHead, SSLHead, global_pool
from kit.models.transfer import (
    build_from_checkpoint,
    canonical_modality,
    init_from_checkpoint,
    output_key_patterns,
    transfer_input_channels,
)

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
    "init_from_checkpoint",
    "output_key_patterns",
    "load_checkpoint",
    "load_weights",
    "model_from_config",
    "normalize_state_dict",
    "read_state_dict",
    "save_checkpoint",
    "transfer_input_channels",
    "ClassificationModel",
    "load_finetuned",
    "ClassificationHead",
    "SSLHead",
    "global_pool",
]
