"""Swin UNETR pretraining: rotation + inpainting (reconstruction) + contrastive (Tang et al., CVPR 2022).

The objective used by BrainSegFounder stages 1 and 2 (Cox et al., Medical Image Analysis 2024). For
each sample and each of two views, all random choices come from that sample's seed:

- rotation: ``k ~ U{0,1,2,3}``; the sample (C, X, Y, Z) is rotated by ``x.rot90(k, (2, 3))``, i.e.
  dims (3, 4) of the (B, C, X, Y, Z) batch; the rotation head is trained with 4-class cross-entropy.
- inpainting: boxes are drawn until a voxel budget ``U(0, 0.3) * volume`` is used (the last box may
  overshoot it); each side is uniform in [0.05, 0.25] of its dimension; box contents become Gaussian
  noise min-max scaled to [0, 1]. With probability ``mix_prob`` (``'auto'`` = (B-1)/B, as the reference's
  ``randint(0, B) != i``) a second pass draws new boxes and pastes, at the same locations, the rotated
  voxels of a partner sample chosen among the other samples of the local batch. Reconstruction loss:
  L1 between the reconstruction and the rotated, unmasked volume, over the whole volume.
- contrastive: NT-Xent (cosine similarity, temperature 0.5; ``monai.losses.ContrastiveLoss``)
  between the two views' projections, over the global batch under DDP.

Loss = w_rot * CE + w_contrast * NT-Xent + w_recon * L1 (weights 1, 1, 1 in the paper), where the
cross-entropy and L1 average over both views, as in the reference (concatenated views).

Deviations from the reference code, on purpose: the heads read globally pooled features instead of
the first two tokens (see ``kit.models.heads.SSLHead``); a box side is drawn from the integers in
[0.05 n, 0.25 n] (the reference draws from [int(0.05 n), int(0.25 n) - 1]);
the partner's pasted voxels are its rotated, unmasked volume (in the reference they are the partner
as already processed, which depends on the order of the loop over the batch); the noise of a view is
scaled over all its noise boxes together (the reference scales box by box), so that the views are
made in a few batched operations on the batch's device (:func:`make_views`), not box by box.

Example:
    >>> import torch
    >>> from kit.models import create_model
    >>> from kit.ssl import create_objective
    >>> obj = create_objective("swin_trio", create_model("segresnet_small", in_channels=2))
    >>> out = obj(torch.rand(2, 2, 32, 32, 32), torch.tensor([11, 12]))
    >>> sorted(out)
    ['contrast', 'loss', 'recon', 'rot']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from torch import nn

from kit.models.heads import SSLHead
from kit.ssl.base import SSLObjective, check_batch, gather_across_ranks, register_objective, sample_rng
from kit.tensors import eval_mode, to_module_device, to_numpy

__all__ = [
    "Box",
    "rotate_batch",
    "draw_boxes",
    "box_noise",
    "mask_volume",
    "box_mask",
    "boxes_mask",
    "resolve_mix_prob",
    "make_views",
    "SwinTrio",
    "ROTATION_DIMS",
    "MAX_BOX_FRACTION",
]

#: Plane of the rotation in a (B, C, X, Y, Z) batch: ``x.rot90(k, (2, 3))`` on a (C, X, Y, Z) sample.
ROTATION_DIMS = (3, 4)
#: Largest single box as a fraction of the volume (0.25 per side). The drawn boxes' summed volume is
#: below ``budget * V + MAX_BOX_FRACTION * V`` (the last box may overshoot the budget), so the masked
#: fraction of one pass is at most 0.3 + 0.25**3 = 0.315625.
MAX_BOX_FRACTION = 0.25**3

# Stream path of a sample's generators: (seed, _TAG, view, stream).
_TAG = 0x7377696E  # "swin"
_ROT, _MASK, _MIX, _NOISE = 0, 1, 2, 3


@dataclass(frozen=True)
class Box:
    """A box of voxels ``[x0:x1, y0:y1, z0:z1]`` (end exclusive) in a (C, X, Y, Z) volume."""

    x0: int
    x1: int
    y0: int
    y1: int
    z0: int
    z1: int

    @property
    def slices(self) -> tuple[slice, slice, slice, slice]:
        """Index for a (C, X, Y, Z) tensor: all channels, the box's voxels."""
        return (slice(None), slice(self.x0, self.x1), slice(self.y0, self.y1), slice(self.z0, self.z1))

    @property
    def sides(self) -> tuple[int, int, int]:
        """Side lengths in voxels."""
        return (self.x1 - self.x0, self.y1 - self.y0, self.z1 - self.z0)

    @property
    def volume(self) -> int:
        """Number of voxels (per channel)."""
        sx, sy, sz = self.sides
        return sx * sy * sz


def rotate_batch(x: torch.Tensor, ks: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Rotate each sample ``x[i]`` (C, X, Y, Z) by ``ks[i] * 90`` degrees with ``rot90(k, (2, 3))``.

    Args:
        x: (B, C, X, Y, Z); Y and Z must be equal unless every k is even.
        ks: B integers in {0, 1, 2, 3}.

    Returns:
        (B, C, X, Y, Z); ``rotate_batch(rotate_batch(x, ks), [(4 - k) % 4 for k in ks])`` is ``x``.

    Example:
        >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
        >>> torch.equal(rotate_batch(x, [1])[0], x[0].rot90(1, (2, 3)))
        True
    """
    ks = [int(k) % 4 for k in (ks.tolist() if isinstance(ks, torch.Tensor) else ks)]
    if len(ks) != x.shape[0]:
        raise ValueError(f"rotate_batch: {len(ks)} rotations for a batch of {x.shape[0]}")
    if x.shape[3] != x.shape[4] and any(k % 2 for k in ks):
        raise ValueError(f"rotate_batch: a 90-degree rotation needs equal Y and Z sides, got shape {tuple(x.shape)}")
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i, k in enumerate(ks):  # one strided copy per sample, on x's device (no gather, no stack)
        out[i].copy_(x[i].rot90(k, (2, 3)))
    return out


def draw_boxes(
    shape: Sequence[int],
    rng: np.random.Generator,
    budget: tuple[float, float] = (0.0, 0.3),
    box_frac: tuple[float, float] = (0.05, 0.25),
    budget_fraction: float | None = None,
) -> list[Box]:
    """Boxes drawn until their summed volume reaches a random fraction of the volume.

    As the reference ``patch_rand_drop``: target ``f ~ U(budget)`` (or ``budget_fraction``) of the
    volume; each box has, per axis of size n, a side ``s ~ U{ceil(lo*n), ..., floor(hi*n)}`` (at least
    1) and a start ``~ U{0, ..., n - ceil(lo*n)}``, clipped at the far border (so a side is never below
    ``lo*n``, nor above ``hi*n`` unless ``hi*n < 1``); boxes may overlap and are
    drawn while the running sum of their volumes is below the target, so the last one may overshoot
    it by at most one box (see ``MAX_BOX_FRACTION``).

    Args:
        shape: spatial shape (X, Y, Z), or any shape whose last three entries are spatial.
        rng: the sample's generator.
        budget: range of the voxel budget, as fractions of the volume.
        box_frac: range of each box side, as fractions of its dimension.
        budget_fraction: use this budget instead of drawing one (tests, figures).

    Example:
        >>> boxes = draw_boxes((32, 32, 32), np.random.default_rng(0), budget_fraction=0.2)
        >>> total = sum(b.volume for b in boxes)
        >>> total >= 0.2 * 32**3 > total - boxes[-1].volume
        True
    """
    spatial = [int(n) for n in shape[-3:]]
    volume = float(np.prod(spatial))
    fraction = rng.uniform(*budget) if budget_fraction is None else float(budget_fraction)
    target = fraction * volume
    # Integer sides within [lo * n, hi * n] (the 1e-9 absorbs float error, e.g. 0.05 * 40).
    lo = [max(1, math.ceil(box_frac[0] * n - 1e-9)) for n in spatial]
    hi = [max(lo_i, math.floor(box_frac[1] * n + 1e-9)) for lo_i, n in zip(lo, spatial)]
    boxes: list[Box] = []
    total = 0
    while total < target:
        corners = []
        for n, lo_i, hi_i in zip(spatial, lo, hi):
            start = int(rng.integers(0, n - lo_i + 1))
            side = int(rng.integers(lo_i, hi_i + 1))
            corners += [start, min(start + side, n)]
        box = Box(*corners)
        boxes.append(box)
        total += box.volume
    return boxes


def box_noise(boxes: Sequence[Box], channels: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """Per box, Gaussian noise (C, sx, sy, sz) min-max scaled to [0, 1] (as the reference), float32 CPU.

    Example:
        >>> n = box_noise([Box(0, 2, 0, 3, 0, 4)], 2, np.random.default_rng(0))[0]
        >>> tuple(n.shape), float(n.min()), float(n.max())
        ((2, 2, 3, 4), 0.0, 1.0)
    """
    out = []
    for box in boxes:
        noise = rng.standard_normal((channels, *box.sides)).astype(np.float32)
        span = noise.max() - noise.min()
        noise = (noise - noise.min()) / span if span > 0 else np.zeros_like(noise)
        out.append(torch.from_numpy(noise))
    return out


def mask_volume(x: torch.Tensor, boxes: Sequence[Box], noise: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` (C, X, Y, Z) with each box replaced.

    Args:
        x: one sample (C, X, Y, Z).
        boxes: where to write.
        noise: either one tensor per box (C, *box.sides), e.g. from :func:`box_noise`, or a volume of
            ``x``'s shape whose voxels are pasted at the same locations (the partner pass).

    Example:
        >>> x = torch.zeros(1, 4, 4, 4)
        >>> out = mask_volume(x, [Box(0, 2, 0, 2, 0, 2)], torch.ones(1, 4, 4, 4))
        >>> int(out.sum())
        8
    """
    out = x.clone()
    if isinstance(noise, torch.Tensor):
        if noise.shape != x.shape:
            raise ValueError(f"mask_volume: source volume {tuple(noise.shape)} does not match x {tuple(x.shape)}")
        for box in boxes:
            out[box.slices] = noise[box.slices]
        return out
    if len(noise) != len(boxes):
        raise ValueError(f"mask_volume: {len(noise)} noise blocks for {len(boxes)} boxes")
    for box, fill in zip(boxes, noise):
        out[box.slices] = fill.to(device=out.device, dtype=out.dtype)
    return out


def box_mask(shape: Sequence[int], boxes: Sequence[Box]) -> torch.Tensor:
    """Boolean (1, X, Y, Z) mask of the voxels covered by ``boxes``.

    Example:
        >>> int(box_mask((4, 4, 4), [Box(0, 2, 0, 2, 0, 2), Box(1, 3, 0, 1, 0, 1)]).sum())
        9
    """
    mask = torch.zeros((1, *[int(n) for n in shape[-3:]]), dtype=torch.bool)
    for box in boxes:
        mask[box.slices] = True
    return mask


def boxes_mask(
    shape: Sequence[int],
    boxes_per_row: Sequence[Sequence[Box]],
    device: torch.device | str = "cpu",
    method: str = "auto",
) -> torch.Tensor:
    """Boolean (N, 1, X, Y, Z) masks, row ``r`` covering the union of ``boxes_per_row[r]``, built on ``device``.

    On a GPU, one pass for all rows whatever the number of boxes: +1/-1 at each box's 8 corners of
    a difference array (one ``index_put_``), then a cumulative sum along each axis counts the boxes
    covering each voxel (a 3D summed-area table), instead of one kernel launch per box. Elsewhere
    (where strided cumulative sums are slow and launches cheap) each box's voxels are set directly.
    Equal to stacking :func:`box_mask` per row. ``method``: 'auto' (as above), 'summed_area' or 'paint'.

    Example:
        >>> m = boxes_mask((4, 4, 4), [[Box(0, 2, 0, 2, 0, 2), Box(1, 3, 0, 1, 0, 1)], []])
        >>> m.shape, m[0].sum().item(), m[1].sum().item()
        (torch.Size([2, 1, 4, 4, 4]), 9, 0)
    """
    sx, sy, sz = (int(n) for n in shape[-3:])
    if method not in ("auto", "summed_area", "paint"):
        raise ValueError(f"boxes_mask: method must be 'auto', 'summed_area' or 'paint', got {method!r}")
    if method == "paint" or (method == "auto" and torch.device(device).type != "cuda"):
        mask = torch.zeros((len(boxes_per_row), 1, sx, sy, sz), dtype=torch.bool, device=device)
        for row, boxes in enumerate(boxes_per_row):
            for box in boxes:
                mask[row][box.slices] = True
        return mask
    rows = [(r, b.x0, b.x1, b.y0, b.y1, b.z0, b.z1) for r, boxes in enumerate(boxes_per_row) for b in boxes]
    counts = torch.zeros((len(boxes_per_row), sx + 1, sy + 1, sz + 1), dtype=torch.int32, device=device)
    if rows:
        table = np.asarray(rows, dtype=np.int64)  # (n_boxes, 7): row, x0, x1, y0, y1, z0, z1
        corner = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, 8).T  # (8, 3): 0 = start, 1 = end
        # Corner (cx, cy, cz) of a box sits at (x0 or x1, y0 or y1, z0 or z1), sign (-1) ** (number of ends).
        index = [np.repeat(table[:, 0], 8)]
        for axis in range(3):
            starts_ends = table[:, 1 + 2 * axis: 3 + 2 * axis]  # (n_boxes, 2)
            index.append(starts_ends[:, corner[:, axis]].reshape(-1))
        signs = np.tile(np.where(corner.sum(axis=1) % 2 == 0, 1, -1), len(rows)).astype(np.int32)
        packed = torch.from_numpy(np.concatenate([np.stack(index), signs[None].astype(np.int64)]))
        packed = packed.to(counts.device)  # one small host-to-device copy
        counts.index_put_(tuple(packed[:4]), packed[4].to(torch.int32), accumulate=True)
        for dim in (1, 2, 3):
            counts = counts.cumsum(dim, dtype=torch.int32)
    return (counts[:, :sx, :sy, :sz] > 0).unsqueeze(1)


def resolve_mix_prob(mix_prob: float | str, batch_size: int) -> float:
    """Probability of the partner pass: ``'auto'`` is (B-1)/B (the reference); 0 for a batch of one.

    Example:
        >>> resolve_mix_prob("auto", 4), resolve_mix_prob(0.5, 1)
        (0.75, 0.0)
    """
    if mix_prob != "auto" and (isinstance(mix_prob, str) or not 0.0 <= float(mix_prob) <= 1.0):
        raise ValueError(f"mix_prob must be 'auto' or a float in [0, 1], got {mix_prob!r}")
    if batch_size < 2:
        return 0.0
    return (batch_size - 1) / batch_size if mix_prob == "auto" else float(mix_prob)


@torch.no_grad()
def make_views(
    x: torch.Tensor,
    seeds: torch.Tensor | Sequence[int],
    *,
    n_views: int = 2,
    mix_prob: float | str = "auto",
    mask_budget: tuple[float, float] = (0.0, 0.3),
    box_frac: tuple[float, float] = (0.05, 0.25),
) -> dict[str, Any]:
    """The rotated, inpainting-masked views of a batch, every draw from each sample's seed.

    View ``v`` of sample ``i`` uses generators ``sample_rng(seeds[i], TAG, v, stream)`` for the
    rotation, the noise boxes, the partner pass and the seed of its noise, so with ``mix_prob=0`` a
    sample's views do not depend on the rest of the batch (DDP splits give the same views).

    The draws (a few integers per box) happen on the host; the volumes are then made on ``x``'s
    device, each touched once: one rotated copy per row, one mask per pass for all rows
    (:func:`boxes_mask`), Gaussian noise drawn only for the masked voxels from a ``torch.Generator``
    seeded by the sample (on the GPU for CUDA inputs, else on the CPU), min-max scaled to [0, 1] over
    the view's noise boxes and written with one ``masked_scatter_``, then the partner's voxels with
    one ``torch.where`` per mixed row. Noise values therefore depend on the device type (CPU or
    CUDA); boxes, rotations, partners and masks do not.

    Args:
        x: (B, C, X, Y, Z) float batch (Y == Z for the 90-degree rotations).
        seeds: (B,) integers, one per sample.
        n_views: views per sample (2 for the contrastive term).
        mix_prob: probability of the partner pass, or 'auto' = (B-1)/B.
        mask_budget, box_frac: see :func:`draw_boxes`.

    Returns:
        dict with, for N = n_views * B (view-major: rows ``v*B : (v+1)*B`` are view v):
        ``views`` (N, C, X, Y, Z) masked inputs; ``targets`` (N, C, X, Y, Z) rotated unmasked volumes;
        ``rot_labels`` (N,) int64; ``masks`` (N, 1, X, Y, Z) bool, voxels replaced by either pass;
        ``boxes`` list of N dicts ``{'noise': [Box], 'partner': int | None, 'pasted': [Box]}``.

    Example:
        >>> out = make_views(torch.rand(2, 1, 16, 16, 16), torch.tensor([1, 2]), mix_prob=0.0)
        >>> out["views"].shape, out["rot_labels"].shape
        (torch.Size([4, 1, 16, 16, 16]), torch.Size([4]))
    """
    seeds = check_batch(x, torch.as_tensor(seeds))
    if x.shape[3] != x.shape[4]:
        raise ValueError(f"make_views: the rotation plane needs equal Y and Z sides, got shape {tuple(x.shape)}")
    batch, channels = x.shape[:2]
    mix = resolve_mix_prob(mix_prob, batch)
    # 1. Every random choice, on the host, from the sample's generators (a few small integers per box).
    ks, noise_boxes, pasted_boxes, partner_rows, noise_seeds, details = [], [], [], [], [], []
    for view in range(n_views):
        for i, seed in enumerate(seeds):
            ks.append(int(sample_rng(seed, _TAG, view, _ROT).integers(4)))
            noise = draw_boxes(x.shape, sample_rng(seed, _TAG, view, _MASK), mask_budget, box_frac)
            partner, pasted = None, []
            mix_rng = sample_rng(seed, _TAG, view, _MIX)
            if mix > 0 and mix_rng.random() < mix:
                other = int(mix_rng.integers(batch - 1))
                partner = other if other < i else other + 1
                pasted = draw_boxes(x.shape, mix_rng, mask_budget, box_frac)
            noise_boxes.append(noise)
            pasted_boxes.append(pasted)
            partner_rows.append(view * batch + (i if partner is None else partner))
            noise_seeds.append(int(sample_rng(seed, _TAG, view, _NOISE).integers(2**63)))
            details.append({"noise": noise, "partner": partner, "pasted": pasted})
    # 2. A few operations on x's device, each touching a volume once.
    targets = torch.empty((n_views * batch, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for row, k in enumerate(ks):  # view-major: row = view * B + i
        targets[row].copy_(x[row % batch].rot90(k, (2, 3)))
    noise_mask = boxes_mask(x.shape, noise_boxes, x.device)
    views = _with_noise(targets.clone(), noise_mask, noise_seeds)
    masks = noise_mask
    if any(pasted_boxes):
        pasted_mask = boxes_mask(x.shape, pasted_boxes, x.device)
        # The partner's rotated, unmasked voxels, pasted after the noise (they win where both apply).
        for row, source in enumerate(partner_rows):
            if pasted_boxes[row]:
                torch.where(pasted_mask[row], targets[source], views[row], out=views[row])
        masks = noise_mask | pasted_mask
    return {
        "views": views,
        "targets": targets,
        "rot_labels": torch.tensor(ks, dtype=torch.long).to(x.device),
        "masks": masks,
        "boxes": details,
    }


def _with_noise(views: torch.Tensor, mask: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Write Gaussian noise into ``views`` (N, C, X, Y, Z) where ``mask`` (N, 1, X, Y, Z), in place.

    Row ``r`` gets ``C * mask[r].sum()`` values from a ``torch.Generator`` seeded with ``seeds[r]``,
    min-max scaled to [0, 1] over the row, so only masked voxels cost anything. They are drawn on
    the GPU for CUDA tensors, else on the CPU (then one copy), so the values depend on the seeds and
    the device type only (identical across ranks). One device-to-host sync (the per-row counts).
    """
    channels = views.shape[1]
    counts = (mask.flatten(1).sum(dim=1) * channels).tolist()
    if not any(counts):
        return views
    source = views.device if views.device.type == "cuda" else torch.device("cpu")
    values = torch.empty(int(sum(counts)), dtype=torch.float32, device=source)
    start = 0
    for count, seed in zip(counts, seeds):
        if count:
            segment = values[start:start + count]
            segment.normal_(generator=torch.Generator(device=source).manual_seed(seed))
            lo, hi = segment.aminmax()
            # A single masked value has no span: it becomes 0 (as a constant box in the reference).
            segment.sub_(lo).div_((hi - lo).clamp_min(torch.finfo(torch.float32).tiny))
        start += count
    # masked_scatter_ fills the masked positions in memory order: row by row, channel by channel.
    return views.masked_scatter_(mask, values.to(device=views.device, dtype=views.dtype))


@register_objective("swin_trio")
class SwinTrio(SSLObjective):
    """Swin UNETR pretraining objective (rotation + contrastive + inpainting reconstruction).

    Args:
        model: a ``kit.models`` network; its ``encode`` output feeds an :class:`~kit.models.heads.SSLHead`.
        weights: ``{'rot', 'contrast', 'recon'}`` weights (default 1 each); a 0 weight skips the term.
        mix_prob: partner-pass probability, 'auto' = (B-1)/B; 0 makes views batch-independent.
        mask_budget: range of the per-pass voxel budget (fraction of the volume).
        box_frac: range of a box side (fraction of its dimension).
        temperature: NT-Xent temperature.
        contrast_dim: size of the contrastive embedding.
        upsample: reconstruction decoder style, 'vae' or 'deconv'.

    Only ``model.encode`` is used: the rest of the segmentation network and the heads of skipped
    terms are frozen (``requires_grad=False``, undo with :meth:`unfreeze`), so every trainable
    parameter receives a gradient and DDP needs no ``find_unused_parameters``.

    Example:
        >>> from kit.models import create_model
        >>> obj = SwinTrio(create_model("segresnet_small", 1), weights={"contrast": 0})
        >>> obj.active_terms
        ('rot', 'recon')
    """

    term_names = ("rot", "contrast", "recon")

    def __init__(
        self,
        model: nn.Module,
        weights: dict[str, float] | None = None,
        mix_prob: float | str = "auto",
        mask_budget: tuple[float, float] = (0.0, 0.3),
        box_frac: tuple[float, float] = (0.05, 0.25),
        temperature: float = 0.5,
        contrast_dim: int = 512,
        upsample: str = "vae",
    ) -> None:
        super().__init__(model, weights)
        resolve_mix_prob(mix_prob, 2)  # validate early
        if not 0.0 <= mask_budget[0] <= mask_budget[1] < 1.0:
            raise ValueError(f"swin_trio: mask_budget must satisfy 0 <= lo <= hi < 1, got {mask_budget}")
        if not 0.0 < box_frac[0] <= box_frac[1] <= 1.0:
            raise ValueError(f"swin_trio: box_frac must satisfy 0 < lo <= hi <= 1, got {box_frac}")
        self.mix_prob = mix_prob
        self.mask_budget = (float(mask_budget[0]), float(mask_budget[1]))
        self.box_frac = (float(box_frac[0]), float(box_frac[1]))
        self.temperature = float(temperature)
        self.contrast_dim = int(contrast_dim)
        self.upsample = upsample
        self.heads = SSLHead(
            model.feature_dim, model.in_channels, model.downsample, contrast_dim=contrast_dim, upsample=upsample
        )
        self.contrast_loss = ContrastiveLoss(temperature=self.temperature)
        used = {
            "rot": self.heads.rotation_head,
            "contrast": self.heads.contrastive_head,
            "recon": self.heads.decoder,
        }
        self.freeze_unused([used[t] for t in self.active_terms])

    @property
    def config(self) -> dict[str, Any]:
        return {
            **super().config,
            "mix_prob": self.mix_prob,
            "mask_budget": self.mask_budget,
            "box_frac": self.box_frac,
            "temperature": self.temperature,
            "contrast_dim": self.contrast_dim,
            "upsample": self.upsample,
        }

    def views(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, Any]:
        """:func:`make_views` with this objective's settings."""
        return make_views(
            x, seeds, mix_prob=self.mix_prob, mask_budget=self.mask_budget, box_frac=self.box_frac
        )

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``{'loss', 'rot', 'contrast', 'recon'}`` (skipped terms absent).

        Args:
            x: (B, C, X, Y, Z) float crops (sides multiples of ``model.downsample``, Y == Z).
            seeds: (B,) int64 per-sample seeds.
        """
        self.model.check_input(x)
        batch = x.shape[0]
        v = self.views(x, seeds)
        features = self.model.encode(v["views"])  # (2B, F, d, h, w), both views in one pass
        terms: dict[str, torch.Tensor] = {}
        if self.weights["rot"] > 0:
            logits = self.heads.rotation_logits(features)
            terms["rot"] = F.cross_entropy(logits.float(), v["rot_labels"])
        if self.weights["contrast"] > 0:
            z = self.heads.projection(features).float()
            # Global-batch NT-Xent under DDP. Every rank gathers both views' embeddings of all ranks
            # (in rank order = global sample order) and computes the same loss L on the global batch.
            # all_gather's backward sums, into each rank's own embeddings, the gradients of L computed
            # on every rank, i.e. world_size * dL/dz_local; DDP then averages parameter gradients over
            # ranks (divides by world_size), which leaves exactly dL/dtheta of the 1-process run with
            # the same global batch. The local-mean CE and L1 terms average to the global mean as well
            # (equal local batch sizes), so 2 processes x B == 1 process x 2B.
            z1 = gather_across_ranks(z[:batch])
            z2 = gather_across_ranks(z[batch:])
            terms["contrast"] = self.contrast_loss(z1, z2)
        if self.weights["recon"] > 0:
            recon = self.heads.reconstruct(features)
            terms["recon"] = F.l1_loss(recon.float(), v["targets"].float())
        return self.combine(terms)

    @torch.no_grad()
    def preview(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, np.ndarray]:
        """First view of each sample, as numpy arrays for figures.

        ``x`` may be on any device: it is moved to the model's (e.g. CPU crops for a model trained on a GPU).

        Returns:
            ``input`` (B, C, X, Y, Z) the crops; ``masked`` the network input (rotated + masked);
            ``target`` the rotated unmasked volume; ``reconstruction`` the decoder output;
            ``mask`` (B, 1, X, Y, Z) bool; ``rot_labels`` (B,) the applied k; ``rot_pred`` (B,) predicted k.
        """
        x = to_module_device(x, self.model)  # crops come from the CPU; the model may live on a GPU
        with eval_mode(self):
            batch = x.shape[0]
            v = self.views(x, seeds)
            features = self.model.encode(v["views"][:batch])
            recon = self.heads.reconstruct(features)
            rot_pred = self.heads.rotation_logits(features).argmax(dim=1)
        return {
            "input": to_numpy(x.float()),
            "masked": to_numpy(v["views"][:batch]),
            "target": to_numpy(v["targets"][:batch]),
            "reconstruction": to_numpy(recon),
            "mask": to_numpy(v["masks"][:batch]),
            "rot_labels": to_numpy(v["rot_labels"][:batch]),
            "rot_pred": to_numpy(rot_pred),
        }
