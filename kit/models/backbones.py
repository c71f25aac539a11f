"""Segmentation backbones by name, with a common encoder interface.

Every model returned by :func:`create_model` is the full MONAI segmentation network
(``forward(x) -> logits (B, out_channels, D, H, W)``) and also exposes what the SSL objectives, the
checkpoint tools and fine-tuning need:

- ``encode(x)``: the deepest encoder feature map, shape ``(B, feature_dim, D/downsample, ...)``;
- ``feature_dim``, ``downsample``, ``in_channels``, ``out_channels``, ``min_input_size``;
- ``encoder_prefixes``: state-dict key prefixes of the encoder (encoder-only transfer);
- ``first_conv_key`` and ``input_conv_keys``: state-dict keys of the layers that read the raw input
  channels (first is the stem; SwinUNETR also has a skip-path conv on the input);
- ``output_keys``: fnmatch patterns of the output layer's keys (its shape follows ``out_channels``;
  a fine-tune re-initialises it), so weight transfer (:mod:`kit.models.transfer`) needs no table;
- ``config``: plain values such that ``create_model(**model.config)`` rebuilds the same network;
- ``check_input(x)``: a clear ``ValueError`` for a wrong rank, channel count or spatial size.

The models are subclasses of the MONAI networks (not wrappers), so their state-dict keys are MONAI's
own (``swinViT.*``, ``encoder1.*``...) and released MONAI/BrainSegFounder weights load without
renaming.

Example:
    >>> import torch
    >>> from kit.models import create_model
    >>> net = create_model("segresnet_small", in_channels=2, out_channels=3)
    >>> x = torch.zeros(1, 2, 32, 32, 32)
    >>> net(x).shape, net.encode(x).shape
    (torch.Size([1, 3, 32, 32, 32]), torch.Size([1, 64, 4, 4, 4]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.networks.nets import ResNet, SegResNet, SwinUNETR
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck, get_inplanes
from torch import nn

from kit.models.patch_merging import PATCH_MERGING, LegacyPatchMerging
from kit.models.sdpa_attention import use_sdpa_attention

__all__ = [
    "register_model",
    "create_model",
    "complete_config",
    "list_models",
    "BackboneMixin",
    "SwinUNETRBackbone",
    "SegResNetBackbone",
    "ResNet2DBackbone",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory ``f(in_channels, out_channels, **cfg) -> nn.Module``.

    Example:
        >>> @register_model("my_net")  # doctest: +SKIP
        ... def my_net(in_channels, out_channels=3, **cfg): ...
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def create_model(name: str, in_channels: int, out_channels: int = 3, **cfg: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: one of :func:`list_models`.
        in_channels: input channels (one per MRI contrast).
        out_channels: segmentation output channels.
        **cfg: backbone options (see the factory of each model).

    Returns:
        the network; ``create_model(**net.config)`` rebuilds it.

    Example:
        >>> net = create_model("swinunetr", in_channels=1, out_channels=2, feature_size=12)
        >>> net.feature_dim, net.downsample
        (192, 32)
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {list_models()}")
    return _REGISTRY[name](in_channels=int(in_channels), out_channels=int(out_channels), **cfg)


def complete_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` with the settings that older checkpoints lack filled in as they were then built.

    A ``swinunetr`` config without ``patch_merging`` (written before the setting existed) was built
    with the installed MONAI's patch merging: ``'current'``. Use it to compare a stored config with
    a new model's.

    Example:
        >>> complete_config({"name": "swinunetr", "feature_size": 12})["patch_merging"]
        'current'
    """
    config = dict(model_config)
    if config.get("name") == "swinunetr":
        config.setdefault("patch_merging", "current")
    return config


def list_models() -> list[str]:
    """Names of the registered models, sorted.

    Example:
        >>> "swinunetr" in list_models()
        True
    """
    return sorted(_REGISTRY)


class BackboneMixin:
    """Shared encoder interface; subclasses set the attributes in their ``__init__``."""

    feature_dim: int
    downsample: int
    in_channels: int
    out_channels: int
    min_input_size: int
    encoder_prefixes: tuple[str, ...]
    first_conv_key: str
    input_conv_keys: tuple[str, ...]
    output_keys: tuple[str, ...]
    config: dict[str, Any]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, D, H, W)`` with every spatial side a
        multiple of ``downsample`` and at least ``min_input_size``.

        Example:
            >>> net = create_model("segresnet_small", in_channels=1)
            >>> net.check_input(torch.zeros(1, 1, 30, 32, 32))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: segresnet_small: spatial size (30, 32, 32) must be a multiple of 8 ...
        """
        name = self.config["name"]
        if x.ndim != 5:
            raise ValueError(f"{name}: expected a 5D batch (B, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: expected {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        spatial = tuple(int(s) for s in x.shape[2:])
        if any(s % self.downsample for s in spatial) or any(s < self.min_input_size for s in spatial):
            raise ValueError(
                f"{name}: spatial size {spatial} must be a multiple of {self.downsample} and at least "
                f"{self.min_input_size} per side (e.g. crop or pad to "
                f"{tuple(max(self.min_input_size, -(-s // self.downsample) * self.downsample) for s in spatial)})"
            )


class SwinUNETRBackbone(BackboneMixin, SwinUNETR):
    """MONAI SwinUNETR (the paper's backbone) with the kit encoder interface.

    ``encode(x)`` is ``swinViT(x, normalize)[4]``: ``16 * feature_size`` channels at 1/32 of the input
    (patch size 2, four patch-merging stages). The encoder is the Swin transformer (``swinViT.*``),
    the part that the Swin UNETR / BrainSegFounder SSL pretrains. ``cfg['patch_merging']`` is
    ``'legacy'`` (MONAI < 1.5's voxel order, :mod:`kit.models.patch_merging`) or ``'current'``.
    """

    def __init__(self, in_channels: int, out_channels: int, **cfg: Any) -> None:
        merging = cfg.get("patch_merging", "current")
        monai_cfg = {k: v for k, v in cfg.items() if k != "patch_merging"}
        if merging == "legacy":
            monai_cfg["downsample"] = LegacyPatchMerging
        super().__init__(in_channels=in_channels, out_channels=out_channels, **monai_cfg)
        patch = int(cfg.get("patch_size", 2))
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_dim = 16 * int(cfg["feature_size"])
        self.downsample = patch * 2**4
        # The decoder's InstanceNorm at the deepest level needs more than one voxel in training.
        self.min_input_size = 2 * self.downsample
        self.encoder_prefixes = ("swinViT.",)
        self.first_conv_key = "swinViT.patch_embed.proj.weight"
        self.input_conv_keys = (
            "swinViT.patch_embed.proj.weight",
            "encoder1.layer.conv1.conv.weight",
            "encoder1.layer.conv3.conv.weight",  # 1x1 residual projection (present when in != feature)
        )
        self.output_keys = ("out.conv.conv.*",)
        self.config = {"name": "swinunetr", "in_channels": in_channels, "out_channels": out_channels, **cfg}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deepest Swin feature map ``(B, 16*feature_size, D/32, H/32, W/32)``."""
        self.check_input(x)
        return self.swinViT(x, self.normalize)[4]

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, D, H, W)``."""
        self.check_input(x_in)
        return super().forward(x_in)


class SegResNetBackbone(BackboneMixin, SegResNet):
    """MONAI SegResNet, a small CNN that makes CPU workshops practical, with the kit encoder interface.

    ``encode(x)`` returns the deepest encoder output: ``init_filters * 2**(len(blocks_down)-1)``
    channels at ``1 / 2**(len(blocks_down)-1)`` of the input (64 channels at 1/8 by default).
    MONAI's own two-output ``encode`` is still reachable as ``SegResNet.encode(net, x)``.
    """

    def __init__(self, in_channels: int, out_channels: int, **cfg: Any) -> None:
        super().__init__(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **cfg)
        levels = len(cfg["blocks_down"]) - 1
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_dim = int(cfg["init_filters"]) * 2**levels
        self.downsample = 2**levels
        # Heads use InstanceNorm on the deepest map: keep at least 2 voxels per side there.
        self.min_input_size = 2 * self.downsample
        self.encoder_prefixes = ("convInit.", "down_layers.")
        self.first_conv_key = "convInit.conv.weight"
        self.input_conv_keys = ("convInit.conv.weight",)
        self.output_keys = ("conv_final.2.conv.*",)
        self.config = {"name": "segresnet_small", "in_channels": in_channels, "out_channels": out_channels, **cfg}

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Deepest encoder feature map ``(B, feature_dim, D/downsample, H/downsample, W/downsample)``."""
        self.check_input(x)
        deepest, _ = SegResNet.encode(self, x)
        return deepest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, D, H, W)``."""
        self.check_input(x)
        deepest, skips = SegResNet.encode(self, x)
        skips.reverse()
        return self.decode(deepest, skips)


def _plain(value: Any) -> Any:
    """Sequences as tuples of plain Python values, so configs survive ``torch.load(weights_only=True)``."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


@register_model("swinunetr")
def swinunetr(
    in_channels: int,
    out_channels: int = 3,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    use_checkpoint: bool = False,
    spatial_dims: int = 3,
    sdpa_attention: bool = True,
    patch_merging: str = "current",
    **extra: Any,
) -> SwinUNETRBackbone:
    """MONAI SwinUNETR as in BrainSegFounder (feature_size 48, depths (2,2,2,2) = 62.2M parameters).

    MONAI >= 1.5 no longer takes ``img_size``: the network accepts any size that is a multiple of 32.
    ``extra`` goes to SwinUNETR unchanged (e.g. ``drop_rate``, ``dropout_path_rate``, ``use_v2``).
    ``sdpa_attention`` (default on) runs the window attention through
    ``torch.nn.functional.scaled_dot_product_attention`` in training too
    (:mod:`kit.models.sdpa_attention`; the same function and weights as MONAI's); ``False`` keeps
    MONAI's own forward. It is a speed choice, not part of the model: it is not stored in ``config``.

    ``patch_merging`` is part of the model and always stored in ``config``: ``'current'`` is the
    installed MONAI's ``PatchMerging``; ``'legacy'`` is MONAI < 1.5's voxel order
    (:class:`kit.models.patch_merging.LegacyPatchMerging`), which the published Swin UNETR SSL and
    BrainSegFounder weights were trained with (``kit import-weights`` sets it). A model config
    without the key (checkpoints written before the setting existed) builds ``'current'``, as then.

    Example:
        >>> net = swinunetr(in_channels=4, feature_size=12)
        >>> net.config["feature_size"], net.feature_dim, net.config["patch_merging"]
        (12, 192, 'current')
        >>> type(swinunetr(in_channels=1, feature_size=12, patch_merging="legacy").swinViT.layers1[0].downsample).__name__
        'LegacyPatchMerging'
    """
    if patch_merging not in PATCH_MERGING:
        raise ValueError(f"swinunetr: patch_merging must be one of {list(PATCH_MERGING)}, got {patch_merging!r}")
    if patch_merging == "legacy" and "downsample" in extra:
        raise ValueError(f"swinunetr: patch_merging='legacy' is a downsample layer itself; drop downsample={extra['downsample']!r}")
    if spatial_dims != 3:
        raise ValueError(f"swinunetr: kit models are 3D (spatial_dims=3), got spatial_dims={spatial_dims}")
    if "img_size" in extra:
        raise TypeError("swinunetr: 'img_size' was removed from MONAI's SwinUNETR; inputs need sides that are multiples of 32")
    cfg = dict(
        feature_size=int(feature_size),
        depths=_plain(depths),
        num_heads=_plain(num_heads),
        use_checkpoint=bool(use_checkpoint),
        spatial_dims=3,
        patch_merging=str(patch_merging),
        **{k: _plain(v) for k, v in extra.items()},
    )
    net = SwinUNETRBackbone(in_channels, out_channels, **cfg)
    if sdpa_attention:
        use_sdpa_attention(net)
    return net


# the same argument layout as swinunetr (create_model's in_channels, out_channels, then the network's own sizes), not one logic
@register_model("segresnet_small")
def segresnet_small(
    in_channels: int,
    out_channels: int = 3,
    init_filters: int = 8,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = None,
    **extra: Any,
) -> SegResNetBackbone:
    """MONAI SegResNet with few filters (default 8): a CNN that trains in minutes on a laptop CPU.

    ``extra`` goes to SegResNet unchanged (e.g. ``norm``, ``upsample_mode``).

    Example:
        >>> net = segresnet_small(in_channels=2, init_filters=16)
        >>> net.feature_dim, net.downsample
        (128, 8)
    """
    if len(blocks_up) != len(blocks_down) - 1:
        raise ValueError(f"segresnet_small: blocks_up {tuple(blocks_up)} needs len(blocks_down) - 1 entries")
    extra.pop("spatial_dims", None)
    cfg = dict(
        init_filters=int(init_filters),
        blocks_down=_plain(blocks_down),
        blocks_up=_plain(blocks_up),
        dropout_prob=dropout_prob,
        **{k: _plain(v) for k, v in extra.items()},
    )
    return SegResNetBackbone(in_channels, out_channels, **cfg)


# ---- 2D: MoCo v3 on curated slices ---------------------------------------------------------------

_RESNET_LAYOUTS = {"resnet18_2d": (ResNetBlock, (2, 2, 2, 2)), "resnet50_2d": (ResNetBottleneck, (3, 4, 6, 3))}


class ResNet2DBackbone(BackboneMixin, ResNet):
    """MONAI ResNet on 2D slices (``spatial_dims=2``) with the kit encoder interface.

    The stem is torchvision's ImageNet ResNet (7x7 conv stride 2, then 3x3 max-pool stride 2), so
    ``encode(x)`` is the ``layer4`` map at 1/32 of the slice: ``(B, feature_dim, H/32, W/32)`` with
    ``feature_dim`` 512 (ResNet-18) or 2048 (ResNet-50) times ``widen_factor``. ``forward(x)`` is
    MONAI's: pooled features through ``fc`` to ``out_channels`` logits. The encoder is every layer
    but ``fc``; ``input_conv_keys`` is the stem conv, so a checkpoint's contrasts map by name onto
    another channel set (kit.models.transfer_input_channels works on 2D kernels too).
    """

    def __init__(self, name: str, in_channels: int, out_channels: int, **cfg: Any) -> None:
        block, layers = _RESNET_LAYOUTS[name]
        super().__init__(
            block=block, layers=list(layers), block_inplanes=get_inplanes(), spatial_dims=2,
            n_input_channels=in_channels, num_classes=out_channels, feed_forward=True, **cfg,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_dim = int(self.fc.in_features)
        self.downsample = int(cfg.get("conv1_t_stride", 1)) * (1 if cfg.get("no_max_pool") else 2) * 8
        self.min_input_size = self.downsample
        self.encoder_prefixes = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
        self.first_conv_key = "conv1.weight"
        self.input_conv_keys = ("conv1.weight",)
        self.output_keys = ("fc.*",)
        self.config = {"name": name, "in_channels": in_channels, "out_channels": out_channels, **cfg}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, H, W)`` with sides >= ``min_input_size``.

        Example:
            >>> net = create_model("resnet18_2d", in_channels=2, widen_factor=0.25)
            >>> net.check_input(torch.zeros(1, 2, 32, 32, 32))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: resnet18_2d: expected a 4D batch (B, C, H, W) of slices, got shape (1, 2, 32, 32, 32)
        """
        name = self.config["name"]
        if x.ndim != 4:
            raise ValueError(f"{name}: expected a 4D batch (B, C, H, W) of slices, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: expected {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        if min(x.shape[2:]) < self.min_input_size:
            raise ValueError(f"{name}: slices must be at least {self.min_input_size} pixels per side, got {tuple(x.shape[2:])}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``layer4`` feature map ``(B, feature_dim, H/downsample, W/downsample)`` (rounded up)."""
        self.check_input(x)
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels)`` from the pooled ``layer4`` features."""
        return self.fc(torch.flatten(self.avgpool(self.encode(x)), 1))


def _resnet_2d(name: str, in_channels: int, out_channels: int, widen_factor: float, conv1_t_size: int,
               conv1_t_stride: int, no_max_pool: bool, extra: dict) -> ResNet2DBackbone:
    if int(extra.pop("spatial_dims", 2)) != 2:
        raise ValueError(f"{name}: a 2D backbone (spatial_dims=2)")
    cfg = dict(widen_factor=float(widen_factor), conv1_t_size=int(conv1_t_size), conv1_t_stride=int(conv1_t_stride),
               no_max_pool=bool(no_max_pool), **{k: _plain(v) for k, v in extra.items()})
    return ResNet2DBackbone(name, in_channels, out_channels, **cfg)


@register_model("resnet18_2d")
def resnet18_2d(in_channels: int, out_channels: int = 2, widen_factor: float = 1.0, conv1_t_size: int = 7,
                conv1_t_stride: int = 2, no_max_pool: bool = False, **extra: Any) -> ResNet2DBackbone:
    """ResNet-18 on 2D slices (MONAI ``ResNet``, ``spatial_dims=2``), the kit's default MoCo v3 backbone.

    ``widen_factor`` scales every width (0.25 gives 128 features: a CPU-sized network);
    ``in_channels`` is the number of contrasts stacked per slice.

    Example:
        >>> net = resnet18_2d(in_channels=4, widen_factor=0.25)
        >>> net.feature_dim, net.downsample, tuple(net.encode(torch.zeros(2, 4, 64, 64)).shape)
        (128, 32, (2, 128, 2, 2))
    """
    return _resnet_2d("resnet18_2d", in_channels, out_channels, widen_factor, conv1_t_size, conv1_t_stride,
                      no_max_pool, extra)


@register_model("resnet50_2d")
def resnet50_2d(in_channels: int, out_channels: int = 2, widen_factor: float = 1.0, conv1_t_size: int = 7,
                conv1_t_stride: int = 2, no_max_pool: bool = False, **extra: Any) -> ResNet2DBackbone:
    """ResNet-50 on 2D slices: the size of the tailored-curation paper's MoCo v3 backbone (2048 features).

    Example:
        >>> resnet50_2d(in_channels=1).feature_dim
        2048
    """
    return _resnet_2d("resnet50_2d", in_channels, out_channels, widen_factor, conv1_t_size, conv1_t_stride,
                      no_max_pool, extra)
