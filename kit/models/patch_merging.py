"""SwinUNETR's patch merging as MONAI computed it before 1.5: ``patch_merging="legacy"``.

MONAI 1.5 (Project-MONAI/MONAI PR #8285, commit 1c00ea2) changed the order in which the default
patch-merging layer of SwinUNETR (``downsample="merging"``, ``PatchMerging``) concatenates the 8
voxels of each 2x2x2 neighbourhood before its ``LayerNorm`` and ``Linear`` reduction. The old order
gathered the offsets (d, h, w)::

    (0,0,0) (1,0,0) (0,1,0) (0,0,1) (1,0,1) (0,1,0) (0,0,1) (1,1,1)

(two neighbours taken twice, (1,1,0) and (0,1,1) never); MONAI >= 1.5 takes each offset once:
``... (1,1,0) (1,0,1) (0,1,1) (1,1,1)``. The weights published before 2025 were trained with the
old order: MONAI's Swin UNETR self-supervised weights (``model_swinvit.pt``, Project-MONAI/
research-contributions; Tang et al., CVPR 2022) and BrainSegFounder (lab-smile/BrainSegFounder; Cox
et al., Medical Image Analysis 2024). Run with MONAI >= 1.5's layer, the same tensors compute
other features from the second Swin stage on. :class:`LegacyPatchMerging` is the old layer, line for
line, so these weights compute what their publishers' encoders computed.

This file needs only torch and MONAI (never ``kit``): ``kit export-bundle`` copies it into a
bundle's ``scripts/`` so that an exported legacy-merging model runs the same without the kit.

Example:
    >>> import torch
    >>> merge = LegacyPatchMerging(dim=2)
    >>> merge(torch.zeros(1, 4, 4, 4, 2)).shape  # (B, D, H, W, C) -> (B, D/2, H/2, W/2, 2C)
    torch.Size([1, 2, 2, 2, 4])
    >>> [tuple(o) for o in LEGACY_OFFSETS][4:7]
    [(1, 0, 1), (0, 1, 0), (0, 0, 1)]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import PatchMergingV2

__all__ = ["LEGACY_OFFSETS", "PATCH_MERGING", "LegacyPatchMerging"]

#: (d, h, w) offsets of the 8 concatenated neighbours, in MONAI < 1.5's order (duplicates included).
LEGACY_OFFSETS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))

#: Values of the backbone setting ``patch_merging``: MONAI < 1.5's order, or the installed MONAI's.
PATCH_MERGING = ("legacy", "current")


class LegacyPatchMerging(PatchMergingV2):
    """MONAI < 1.5's ``PatchMerging``: same parameters (``norm``, ``reduction``) and keys, old voxel order.

    ``forward(x)``: ``(B, D, H, W, C)`` -> ``(B, ceil(D/2), ceil(H/2), ceil(W/2), 2C)``; odd sides are
    zero-padded at their end first. 4D (2D images) inputs go through MONAI's ``PatchMergingV2``, as
    the old layer did.

    Example:
        >>> import torch
        >>> merge = LegacyPatchMerging(dim=1)
        >>> x = torch.arange(8.0).reshape(1, 2, 2, 2, 1)  # value = 4d + 2h + w
        >>> gathered = []
        >>> _ = merge.norm.register_forward_hook(lambda m, i, o: gathered.append(i[0]))
        >>> _ = merge(x)
        >>> gathered[0].flatten().tolist()  # offsets (0,0,0) (1,0,0) (0,1,0) (0,0,1) (1,0,1) (0,1,0) (0,0,1) (1,1,1)
        [0.0, 4.0, 2.0, 1.0, 5.0, 2.0, 1.0, 7.0]
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merge 2x2x2 neighbourhoods: ``(B, D, H, W, C)`` -> ``(B, D/2, H/2, W/2, 2C)``."""
        if x.dim() == 4:
            return super().forward(x)
        if x.dim() != 5:
            raise ValueError(f"LegacyPatchMerging: expected a 5D (B, D, H, W, C) input, got shape {tuple(x.shape)}")
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in LEGACY_OFFSETS], -1)
        return self.reduction(self.norm(x))
