"""Heads that sit on a backbone's deepest feature map (``backbone.encode(x)``).

- :class:`SSLHead`: the Swin UNETR pretraining heads (rotation, contrastive projection,
  reconstruction decoder), sized from any backbone's ``feature_dim`` / ``downsample``.
- :class:`ClassificationHead`: pooled linear classifier for fine-tuning.

Example:
    >>> import torch
    >>> head = SSLHead(feature_dim=64, in_channels=2, downsample=8)
    >>> out = head(torch.randn(2, 64, 4, 4, 4))
    >>> out["rot_logits"].shape, out["contrast"].shape, out["recon"].shape
    (torch.Size([2, 4]), torch.Size([2, 512]), torch.Size([2, 2, 32, 32, 32]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["global_pool", "SSLHead", "ClassificationHead"]


def global_pool(features: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes: ``(B, F, d, h, w) -> (B, F)``; a ``(B, F)`` input is returned as is.

    Example:
        >>> global_pool(torch.ones(2, 3, 4, 4, 4)).shape
        torch.Size([2, 3])
    """
    if features.ndim == 2:
        return features
    if features.ndim < 3:
        raise ValueError(f"expected features (B, F, ...) , got shape {tuple(features.shape)}")
    return features.flatten(2).mean(dim=2)


class SSLHead(nn.Module):
    """Rotation, contrastive and reconstruction heads of Swin UNETR pretraining (Tang et al., CVPR 2022).

    Args:
        feature_dim: channels of the deepest feature map (768 for SwinUNETR feature_size 48).
        in_channels: channels of the input volume, i.e. of the reconstruction.
        downsample: input size / feature-map size (32 for SwinUNETR, 8 for segresnet_small); a power of 2.
        contrast_dim: size of the contrastive embedding (512 in the paper).
        rot_classes: rotation classes (4: 0, 90, 180, 270 degrees).
        upsample: 'vae' (the reference default: per stage Conv3d 3x3x3 + InstanceNorm + LeakyReLU +
            trilinear x2 upsampling) or 'deconv' (per stage ConvTranspose3d k=2 s=2, as the reference's
            'deconv' option); both have log2(downsample) stages and end in a 1x1x1 conv to ``in_channels``.

    The rotation and contrastive heads read the globally average-pooled feature map. (The reference
    code reads the first and second token of the flattened map instead; pooling uses every location
    and does not depend on the token order.)

    Example:
        >>> head = SSLHead(768, in_channels=2, downsample=32)
        >>> [m.out_channels for m in head.decoder if isinstance(m, nn.Conv3d)]
        [384, 192, 96, 48, 48, 2]
    """

    def __init__(
        self,
        feature_dim: int,
        in_channels: int,
        downsample: int,
        contrast_dim: int = 512,
        rot_classes: int = 4,
        upsample: str = "vae",
    ) -> None:
        super().__init__()
        stages = int(round(math.log2(downsample)))
        if downsample < 2 or 2**stages != downsample:
            raise ValueError(f"SSLHead: downsample must be a power of 2 >= 2, got {downsample}")
        if upsample not in ("vae", "deconv"):
            raise ValueError(f"SSLHead: upsample must be 'vae' or 'deconv', got {upsample!r}")
        self.feature_dim = int(feature_dim)
        self.in_channels = int(in_channels)
        self.downsample = int(downsample)
        self.rotation_head = nn.Linear(feature_dim, rot_classes)
        self.contrastive_head = nn.Linear(feature_dim, contrast_dim)
        # Channel schedule as the reference (768 -> 384, 192, 96, 48, 48): halve per stage, the last
        # stage keeps the width of the one before; never below 8 channels.
        widths = [max(feature_dim // 2 ** min(i + 1, max(stages - 1, 1)), 8) for i in range(stages)]
        layers: list[nn.Module] = []
        c_in = feature_dim
        for c_out in widths:
            if upsample == "vae":
                layers += [
                    nn.Conv3d(c_in, c_out, kernel_size=3, padding=1),
                    nn.InstanceNorm3d(c_out),
                    nn.LeakyReLU(),
                    nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                ]
            else:
                layers.append(nn.ConvTranspose3d(c_in, c_out, kernel_size=2, stride=2))
            c_in = c_out
        layers.append(nn.Conv3d(c_in, in_channels, kernel_size=1))
        self.decoder = nn.Sequential(*layers)

    def rotation_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F, d, h, w) -> (B, rot_classes)`` logits of the applied rotation."""
        return self.rotation_head(global_pool(features))

    def projection(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F, d, h, w) -> (B, contrast_dim)`` contrastive embedding (not normalised)."""
        return self.contrastive_head(global_pool(features))

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F, d, h, w) -> (B, in_channels, d*downsample, h*downsample, w*downsample)``."""
        return self.decoder(features)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """All three outputs: ``{'rot_logits', 'contrast', 'recon'}``."""
        return {
            "rot_logits": self.rotation_logits(features),
            "contrast": self.projection(features),
            "recon": self.reconstruct(features),
        }


POOLS = ("avg", "avgmax")


class ClassificationHead(nn.Module):
    """Global pooling, dropout and a linear layer: ``(B, F, d, h, w) -> (B, n_classes)`` logits.

    ``pool="avg"`` averages each feature over the volume. ``pool="avgmax"`` also takes its maximum
    and concatenates both (2F inputs to the linear layer). Use it for detection targets such as
    tumour presence: a lesion that fills 1 % of the brain moves a channel's mean by about 1 % but
    its maximum fully, so from scratch the average alone gives the head almost no signal.

    Example:
        >>> head = ClassificationHead(64, n_classes=2, dropout=0.1)
        >>> head(torch.randn(3, 64, 4, 4, 4)).shape
        torch.Size([3, 2])
        >>> ClassificationHead(64, 1, pool="avgmax").fc.in_features
        128
    """

    def __init__(self, feature_dim: int, n_classes: int, dropout: float = 0.0, pool: str = "avg") -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ClassificationHead: dropout must be in [0, 1), got {dropout}")
        if pool not in POOLS:
            raise ValueError(f"ClassificationHead: pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim * (2 if pool == "avgmax" else 1), n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` from a feature map ``(B, F, ...)`` (or pooled ``(B, F)`` features with ``pool='avg'``)."""
        pooled = global_pool(features)
        if self.pool == "avgmax":
            if features.ndim < 3:
                raise ValueError("ClassificationHead(pool='avgmax') needs a feature map (B, F, ...), got pooled features")
            pooled = torch.cat([pooled, features.flatten(2).amax(dim=2)], dim=1)
        return self.fc(self.dropout(pooled))
