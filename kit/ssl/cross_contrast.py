"""Cross-contrast context restoration (Chen et al., "Medical image foundation models in assisting
diagnosis of brain tumors: a pilot study", European Radiology 34, 2024; doi:10.1007/s00330-024-10728-1).

The input stacks the MRI contrasts (4 in the paper: T1w, T1c, T2w, FLAIR; 2 on the healthy cohort
here). **Each contrast gets its own, independent coarse dropout**, so a region hidden in one contrast
is usually visible in another, and the network restores all contrasts from what is left. The paper
publishes two dropout schemes at 96^3 with about 40 % of the voxels removed: 86 blocks of 16^3, or
6,000 blocks of 4^3. Those counts are exactly 86 of the 216 cells of a 6^3 grid of 16^3 blocks
(39.8 %) and 6,000 of the 13,824 cells of a 24^3 grid of 4^3 blocks (43.4 %), so we drop that share
of grid cells (without replacement, i.e. non-overlapping blocks).

**Blocks have a size in voxels** (``block_size``), not a number per axis: the crop is tiled with
``side // block_size`` blocks per axis (exactly ``block_size`` voxels when it divides the side,
else near-equal blocks of ``block_size`` to ``2 * block_size - 1`` voxels), and the scheme's share of
them is dropped. By default (``block_size=None``) a block is the published side (16 ``'large'``, 4
``'small'``) capped at a quarter of the crop's shortest side: at 96^3 the published 86 x 16^3 and
6,000 x 4^3 blocks; at **32^3**, **8^3 blocks (4 per axis, 25 of 64 dropped, 39.1 %) and 4^3 blocks
(8 per axis, 222 of 512, 43.4 %)**. Why not the published blocks' physical size: the paper's crops
are 1 mm, ours 3 mm, so its 4 mm blocks would be 1.3 voxels, holes that the smooth resampled
intensities let the decoder fill by interpolation (a degenerate task), and its 16 mm blocks 5.3
voxels; 8 voxels (24 mm) matches the encoder stride of ``segresnet_small`` (one deepest-map voxel per
block, as MIM's 8^3 patches) and keeps at least 4 blocks per axis so the ~40 % share is many blocks,
not 3 of 8 octants; 4 voxels (12 mm) is the smallest block the 3 mm data holds as a real hole. A
crop with fewer than 2 blocks per axis is refused. Dropped voxels are set to 0 (the mean of z-scored
intensities). Every draw of sample ``i``, view ``v``, contrast ``c`` comes from
``sample_rng(seeds[i], TAG, v, c)``.

Loss terms (unweighted, each averaged over both views):

- ``recon``: L1 between the restoration and the intact multi-contrast crop over the whole volume.
  The paper reports an L1 restoration loss on the restored volume (context restoration, as in Chen
  et al., Medical Image Analysis 2019, restores the whole image); this is the default (weight 1).
- ``recon_dropped``: L1 over the dropped voxels only, per contrast (what is hidden in contrast c is
  scored in contrast c), mean per sample; weight 0 by default (not computed), set it to focus the
  restoration on hidden content as masked image modelling does.
- ``contrast``: NT-Xent between the two views' projections (cosine similarity, temperature 0.5,
  ``monai.losses.ContrastiveLoss``), over the global batch under DDP (as in swin_trio).

The encoder is ``model.encode``; restoration uses the reconstruction decoder of
:class:`kit.models.heads.SSLHead`, the contrastive term its projection head (the rotation head is
frozen). The paper's own network is a 3D CNN; any kit backbone works here.

Example:
    >>> import torch
    >>> from kit.models import create_model
    >>> from kit.ssl import create_objective
    >>> obj = create_objective("cross_contrast", create_model("segresnet_small", in_channels=2))
    >>> sorted(obj(torch.rand(2, 2, 32, 32, 32), torch.tensor([1, 2])))
    ['contrast', 'loss', 'recon']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from torch import nn

from kit.models.heads import SSLHead
from kit.ssl.base import SSLObjective, check_batch, gather_across_ranks, register_objective, sample_rng
from kit.ssl.masking import cell_dropout_mask, masked_mean
from kit.tensors import eval_mode, to_module_device, to_numpy

__all__ = ["SCHEMES", "block_grid", "contrast_dropout_views", "CrossContrast"]

_TAG = 0x63636378  # "cccx": this objective's stream tag

#: scheme -> (published block side in voxels, share of blocks dropped); at 96^3: 86 x 16^3, 6000 x 4^3 blocks.
SCHEMES: dict[str, tuple[int, float]] = {"large": (16, 86 / 216), "small": (4, 6000 / 24**3)}


def block_grid(spatial: Sequence[int], scheme: str = "large", block_size: int | None = None) -> tuple[int, list[int]]:
    """``(block side in voxels, blocks per axis)`` of a crop of ``spatial`` (X, Y, Z) voxels.

    ``block_size=None``: the scheme's published side, capped at a quarter of the shortest side.
    Raises ``ValueError`` when an axis holds fewer than 2 blocks.

    Example:
        >>> block_grid((96, 96, 96)), block_grid((32, 32, 32)), block_grid((32, 32, 32), "small")
        ((16, [6, 6, 6]), (8, [4, 4, 4]), (4, [8, 8, 8]))
    """
    if scheme not in SCHEMES:
        raise ValueError(f"cross_contrast: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    sides = [int(s) for s in spatial]
    block = min(SCHEMES[scheme][0], max(1, min(sides) // 4)) if block_size is None else int(block_size)
    if block < 1 or any(s < 2 * block for s in sides):
        raise ValueError(f"cross_contrast: a crop of {tuple(sides)} voxels needs at least 2 blocks of {block} voxels "
                         f"per axis; use block_size <= {min(sides) // 2} or a larger crop")
    return block, [s // block for s in sides]


@torch.no_grad()
def contrast_dropout_views(
    x: torch.Tensor,
    seeds: torch.Tensor | Sequence[int],
    scheme: str = "large",
    n_views: int = 2,
    fill: float = 0.0,
    block_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Views of a batch where every contrast has its own coarse dropout mask.

    Args:
        x: (B, C, X, Y, Z) float crops, one channel per contrast.
        seeds: (B,) per-sample seeds.
        scheme: ``'large'`` (86/216 of 16^3 blocks at 96^3) or ``'small'`` (6000/13824 of 4^3 blocks).
        n_views: views per sample.
        fill: value written into dropped voxels.
        block_size: block side in voxels (:func:`block_grid`; None: the scheme's, capped at a quarter
            of the crop).

    Returns:
        ``views`` (N, C, X, Y, Z) with N = n_views * B, view-major (rows ``v*B:(v+1)*B`` are view v);
        ``masks`` (N, C, X, Y, Z) bool, True where a contrast was dropped; ``targets`` (N, C, X, Y, Z)
        the intact crops.

    Example:
        >>> out = contrast_dropout_views(torch.rand(1, 4, 32, 32, 32), [3])  # 25 of 64 blocks of 8^3
        >>> out["views"].shape, [round(float(m), 3) for m in out["masks"][0].float().mean(dim=(1, 2, 3))]
        (torch.Size([2, 4, 32, 32, 32]), [0.391, 0.391, 0.391, 0.391])
    """
    seeds = check_batch(x, torch.as_tensor(seeds))
    _, cells = block_grid(x.shape[2:], scheme, block_size)
    fraction = SCHEMES[scheme][1]
    channels, spatial = x.shape[1], x.shape[2:]
    masks = np.stack([
        np.stack([cell_dropout_mask(spatial, cells, fraction, sample_rng(seed, _TAG, view, c)) for c in range(channels)])
        for view in range(n_views) for seed in seeds
    ])
    masks_t = torch.from_numpy(masks).to(x.device)
    targets = x.repeat(n_views, 1, 1, 1, 1)
    views = targets.masked_fill(masks_t, fill)
    return {"views": views, "masks": masks_t, "targets": targets}


@register_objective("cross_contrast")
class CrossContrast(SSLObjective):
    """Cross-contrast context restoration plus a two-view contrastive term.

    Args:
        model: a ``kit.models`` network.
        weights: ``{'recon', 'recon_dropped', 'contrast'}``; defaults ``{1, 0, 1}`` (see the module doc).
        scheme: dropout scheme, ``'large'`` or ``'small'`` (the share of blocks dropped, and the default block).
        block_size: block side in voxels; None: the scheme's published side capped at a quarter of
            the crop (see the module doc; 8 for ``'large'`` at 32^3).
        temperature: NT-Xent temperature.
        contrast_dim: size of the contrastive embedding.
        upsample: restoration decoder style, 'vae' or 'deconv' (:class:`~kit.models.heads.SSLHead`).

    Example:
        >>> from kit.models import create_model
        >>> CrossContrast(create_model("segresnet_small", 4), scheme="small").active_terms
        ('recon', 'contrast')
    """

    term_names = ("recon", "recon_dropped", "contrast")
    min_channels = 2  # restores each contrast from the others: needs at least two

    def __init__(
        self,
        model: nn.Module,
        weights: dict[str, float] | None = None,
        scheme: str = "large",
        block_size: int | None = None,
        temperature: float = 0.5,
        contrast_dim: int = 512,
        upsample: str = "vae",
    ) -> None:
        super().__init__(model, {"recon_dropped": 0.0, **(weights or {})})
        if scheme not in SCHEMES:
            raise ValueError(f"cross_contrast: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
        if block_size is not None and int(block_size) < 1:
            raise ValueError(f"cross_contrast: block_size must be a positive number of voxels, got {block_size}")
        self.scheme = scheme
        self.block_size = None if block_size is None else int(block_size)
        self.temperature = float(temperature)
        self.contrast_dim = int(contrast_dim)
        self.upsample = upsample
        self.heads = SSLHead(model.feature_dim, model.in_channels, model.downsample, contrast_dim=contrast_dim, upsample=upsample)
        self.contrast_loss = ContrastiveLoss(temperature=self.temperature)
        used = [self.heads.contrastive_head] if self.weights["contrast"] > 0 else []
        if self.weights["recon"] > 0 or self.weights["recon_dropped"] > 0:
            used.append(self.heads.decoder)
        self.freeze_unused(used)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "scheme": self.scheme, "block_size": self.block_size, "temperature": self.temperature,
                "contrast_dim": self.contrast_dim, "upsample": self.upsample}

    def views(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """:func:`contrast_dropout_views` with this objective's scheme and block size."""
        return contrast_dropout_views(x, seeds, self.scheme, block_size=self.block_size)

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``{'loss', 'recon', 'contrast'}`` (+ ``'recon_dropped'`` when weighted).

        Args:
            x: (B, C, X, Y, Z) crops (sides multiples of ``model.downsample``); seeds: (B,) int64.
        """
        self.model.check_input(x)
        batch = x.shape[0]
        v = self.views(x, seeds)
        features = self.model.encode(v["views"])  # (2B, F, ...) both views in one pass
        terms: dict[str, torch.Tensor] = {}
        if self.weights["recon"] > 0 or self.weights["recon_dropped"] > 0:
            error = (self.heads.reconstruct(features).float() - v["targets"].float()).abs()
            if self.weights["recon"] > 0:
                terms["recon"] = error.mean()
            if self.weights["recon_dropped"] > 0:
                terms["recon_dropped"] = masked_mean(error, v["masks"])
        if self.weights["contrast"] > 0:
            z = self.heads.projection(features).float()
            # Global-batch NT-Xent: see swin_trio for why gathering keeps DDP == one process.
            terms["contrast"] = self.contrast_loss(gather_across_ranks(z[:batch]), gather_across_ranks(z[batch:]))
        return self.combine(terms)

    @torch.no_grad()
    def preview(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, np.ndarray]:
        """First view of each sample: ``input``, ``masked`` (network input), ``reconstruction``
        (B, C, X, Y, Z) and ``mask`` (B, C, X, Y, Z) bool, one mask per contrast."""
        x = to_module_device(x, self.model)  # crops from the host, a model on any device
        with eval_mode(self):
            batch = x.shape[0]
            v = self.views(x, seeds)
            recon = self.heads.reconstruct(self.model.encode(v["views"][:batch]))
        return {
            "input": to_numpy(x.detach()),
            "masked": to_numpy(v["views"][:batch]),
            "reconstruction": to_numpy(recon),
            "mask": to_numpy(v["masks"][:batch]),
        }
