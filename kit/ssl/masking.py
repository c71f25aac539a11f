"""Masks shared by the masking objectives: grid-cell dropout, patch masks, per-patch normalisation.

- :func:`grid_edges` / :func:`cell_dropout_mask`: a volume split into ``k`` cells per axis, a fixed
  share of the cells dropped (cross-contrast context restoration, one mask per contrast).
- :func:`patch_mask` / :func:`expand_mask`: a fixed share of ``p^3`` patches masked (masked image
  modelling), expanded to any resolution of the network.
- :func:`patch_normalise`: targets normalised per patch, over all its channels together (MAE's and
  SparK's ``norm_pix_loss``) or per channel.
- :func:`masked_group_norm`: GroupNorm whose statistics come from the visible voxels only (SparK's
  sparse normalisation, emulated densely), masked voxels set to 0.
- :func:`masked_mean`: per-sample mean over masked voxels, averaged over the batch, so the loss of a
  global batch is the mean of equal-sized local batches' losses (DDP == one process).

Example:
    >>> import numpy as np
    >>> m = cell_dropout_mask((24, 24, 24), 6, 86 / 216, np.random.default_rng(0))
    >>> m.shape, round(float(m.mean()), 3)
    ((24, 24, 24), 0.398)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["grid_edges", "cell_dropout_mask", "patch_mask", "expand_mask", "patch_normalise", "masked_group_norm",
           "masked_mean"]


def grid_edges(n: int, cells: int) -> np.ndarray:
    """Boundaries of ``min(cells, n)`` near-equal cells along an axis of ``n`` voxels.

    Example:
        >>> grid_edges(32, 6).tolist()
        [0, 5, 11, 16, 21, 27, 32]
    """
    cells = max(1, min(int(cells), int(n)))
    return np.round(np.linspace(0, int(n), cells + 1)).astype(int)


def cell_dropout_mask(
    spatial: Sequence[int], cells: int | Sequence[int], fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask (X, Y, Z) of ``round(fraction * n_cells)`` grid cells drawn without replacement.

    The volume is split into ``cells`` near-equal cells per axis (:func:`grid_edges`); ``n_cells`` is
    the product of the cells of the three axes.

    Args:
        spatial: (X, Y, Z) in voxels.
        cells: cells per axis, one int for all axes or one per axis (clipped to the side in voxels).
        fraction: share of the cells dropped, in [0, 1].
        rng: the generator of one sample, view and contrast.

    Example:
        >>> m = cell_dropout_mask((8, 8, 8), 2, 0.5, np.random.default_rng(1))
        >>> int(m.sum()), m[:4, :4, :4].all() or not m[:4, :4, :4].any()
        (256, True)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"cell_dropout_mask: fraction must be in [0, 1], got {fraction}")
    per_axis = [cells] * len(spatial) if isinstance(cells, (int, np.integer)) else list(cells)
    edges = [grid_edges(n, k) for n, k in zip(spatial, per_axis)]
    counts = [len(e) - 1 for e in edges]
    n_cells = int(np.prod(counts))
    chosen = rng.choice(n_cells, size=int(round(fraction * n_cells)), replace=False)
    mask = np.zeros([int(n) for n in spatial], dtype=bool)
    for flat in chosen:
        i, j, k = np.unravel_index(int(flat), counts)
        mask[edges[0][i] : edges[0][i + 1], edges[1][j] : edges[1][j + 1], edges[2][k] : edges[2][k + 1]] = True
    return mask


def patch_mask(grid: Sequence[int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask over a patch grid with exactly ``round(ratio * n)`` patches masked (at least 1, at most n-1).

    Example:
        >>> m = patch_mask((2, 2, 2), 0.75, np.random.default_rng(0))
        >>> m.shape, int(m.sum())
        ((2, 2, 2), 6)
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"patch_mask: ratio must be in (0, 1), got {ratio}")
    n = int(np.prod(grid))
    if n < 2:
        raise ValueError(f"patch_mask: a grid of {tuple(grid)} patches cannot hide some and show others")
    k = min(max(int(round(ratio * n)), 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=k, replace=False)] = True
    return mask.reshape(tuple(int(g) for g in grid))


def expand_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, 1, gx, gy, gz) mask to (B, 1, *size), any dtype kept.

    Example:
        >>> expand_mask(torch.tensor([[[[[True, False]]]]]), (2, 2, 4))[0, 0, 0, 0].tolist()
        [True, True, False, False]
    """
    if tuple(mask.shape[2:]) == tuple(size):
        return mask
    out = F.interpolate(mask.float(), size=tuple(int(s) for s in size), mode="nearest")
    return out.to(mask.dtype)


def patch_normalise(
    x: torch.Tensor, patch: int, eps: float = 1e-6, per_channel: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise ``x`` (B, C, X, Y, Z) per ``patch^3`` patch: ``(x - mean) / sqrt(var + eps)``.

    By default the mean and (biased) variance of a patch are taken over its ``C * patch^3`` values, all
    channels together, as MAE's and SparK's ``norm_pix_loss`` do on the flattened patch of all
    channels (github.com/facebookresearch/mae ``models_mae.py``; github.com/keyu-tian/SparK
    ``pretrain/spark.py``): the target keeps how the contrasts of a patch differ from each other.
    ``per_channel=True`` takes them per patch and channel (each contrast's own pattern in the patch).

    Returns ``(normalised, mean, std)``, mean and std broadcast to ``x``'s shape (to undo it for figures).

    Example:
        >>> x = torch.rand(1, 2, 8, 8, 8)
        >>> z, mean, std = patch_normalise(x, 4)
        >>> abs(float(z[0, :, :4, :4, :4].mean())) < 1e-5 and torch.allclose(z * std + mean, x, atol=1e-5)
        True
        >>> z = patch_normalise(x, 4, per_channel=True)[0]
        >>> abs(float(z[0, 1, :4, :4, :4].mean())) < 1e-5
        True
    """
    b, c, *spatial = x.shape
    if any(s % patch for s in spatial):
        raise ValueError(f"patch_normalise: spatial size {tuple(spatial)} is not a multiple of the patch {patch}")
    g = [s // patch for s in spatial]
    p = x.reshape(b, c, g[0], patch, g[1], patch, g[2], patch)
    dims = (3, 5, 7) if per_channel else (1, 3, 5, 7)
    mean = p.mean(dim=dims, keepdim=True)
    var = p.var(dim=dims, keepdim=True, unbiased=False)
    std = (var + eps).sqrt()
    z = (p - mean) / std
    full = lambda t: t.expand_as(p).reshape(x.shape)  # noqa: E731
    return z.reshape(x.shape), full(mean), full(std)


def masked_group_norm(norm: torch.nn.GroupNorm, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``norm`` applied to ``x`` (B, C, ...) with statistics over the voxels where ``keep`` (B, 1, ...) is true.

    Per sample and group, mean and biased variance come from the kept voxels of the group's channels
    only (at least one must be kept); the affine of ``norm`` follows; voxels not kept are set to 0.
    This is SparK's sparse normalisation (github.com/keyu-tian/SparK ``pretrain/encoder.py``,
    ``SparseBatchNorm``: statistics of the active positions, output scattered back into zeros) for
    a GroupNorm. Computed in float32, returned in ``x``'s dtype.

    Example:
        >>> gn = torch.nn.GroupNorm(2, 4)
        >>> x = torch.randn(1, 4, 4, 4, 4); keep = torch.rand(1, 1, 4, 4, 4) > 0.5
        >>> y = masked_group_norm(gn, x, keep)
        >>> y2 = masked_group_norm(gn, torch.where(keep, x, 100.0), keep)  # hidden values do not matter
        >>> torch.equal(y, y2), bool((y[0, :, ~keep[0, 0]] == 0).all())
        (True, True)
    """
    b, c = x.shape[:2]
    g = norm.num_groups
    k = keep.to(torch.float32).expand(b, c, *x.shape[2:]).reshape(b, g, -1)
    v = x.float().reshape(b, g, -1).masked_fill(k == 0, 0.0)  # hidden values never enter the statistics
    n = k.sum(dim=2, keepdim=True)
    if bool((n == 0).any()):
        raise ValueError("masked_group_norm: a sample has no kept voxel to take statistics from")
    mean = v.sum(dim=2, keepdim=True) / n
    var = (((v - mean) * k) ** 2).sum(dim=2, keepdim=True) / n
    y = ((v - mean) / torch.sqrt(var + norm.eps) * k).reshape(x.shape)
    if norm.affine:
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = (y * norm.weight.view(shape) + norm.bias.view(shape)) * keep.to(y.dtype)
    return y.to(x.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, ...) over the voxels where ``mask`` (broadcastable) is true, per sample, then over B.

    A sample without masked voxels contributes 0.

    Example:
        >>> v = torch.tensor([[1.0, 3.0], [5.0, 7.0]]); m = torch.tensor([[True, False], [True, True]])
        >>> float(masked_mean(v, m))
        3.5
    """
    m = mask.expand_as(values).to(values.dtype)
    dims = tuple(range(1, values.ndim))
    per_sample = (values * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1.0)
    return per_sample.mean()
