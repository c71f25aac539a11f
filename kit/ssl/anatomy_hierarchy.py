"""Anatomy-hierarchical contrastive learning, a 3D port of Adam (Hosseinzadeh Taher, Gotway and Liang,
"Towards foundation models learned from anatomy in medical imaging via self-supervision", MICCAI
DART 2023, arXiv:2309.15358; code github.com/JLiangLab/Eden; 2D chest X-ray in the paper).

- **Views of one anchor are two crops of the same grid cell.** The crop is split into ``n^3`` cells
  (:func:`kit.ssl.masking.grid_edges`); each sample draws one cell, and each of its two views is a
  random sub-crop of that cell (side ``U(crop_scale)`` of the cell side per axis), resized
  trilinearly to ``view_size`` and randomly flipped. The paper's whole image, 2x2 and 4x4 grids are
  ``n = 1, 2, 4`` here (1, 8, 64 cells).
- **Coarse to fine**: ``grid_sizes`` are visited in order over training, switching at
  ``level_steps`` (default: ``total_steps`` split evenly, which kit's pretraining sets to the stage's
  steps); the loop's :meth:`on_step_end` advances the step counter, which is a buffer, so a resumed
  run continues at the right level.
- **MoCo-style teacher and queue** (MoCo v2 as in the paper's code): the student is the backbone's
  encoder with an MLP projector; the teacher is a momentum copy (``momentum`` 0.999), synced to the
  student on the first training step and updated after every optimizer step; a queue of
  ``queue_size`` teacher keys (both views of the global batch, gathered across ranks) provides the
  negatives. InfoNCE with temperature ``temperature`` (0.2), symmetric over the two views.
- **False-negative pruning**: queue entries whose cosine similarity to the query is ``>=
  prune_threshold`` (0.8) are removed from the denominator (:func:`pruned_info_nce`); the positive is
  never pruned, and a query prunes at most ``max_pruned`` (half) of the queue, because pruning without
  a cap makes collapse a minimum (measured: loss 0.0, gradient 0.0 on aligned whole brains).

**Inputs: the whole brain, aligned, not random crops.** Adam's pretext task assumes roughly aligned
images (chest X-rays): a grid cell is then the same anatomy in every image, so the coarse-to-fine
cells teach anatomy and its part-whole hierarchy. A grid over a random crop would sit on a different
part of the brain in every sample. This objective therefore declares ``input_mode = "brain"``: kit's
pretraining feeds it each whole brain resized to a fixed cube (the kit's brains are MNI-aligned);
objectives without the attribute get random crops (``getattr(cls, "input_mode", "crop")``). At a
**32^3 whole-brain input** with the defaults (``view_size`` = the input, ``grid_sizes`` (1, 2, 4)):
level 1 views are 19-32 voxel sub-crops of the whole brain, level 2 of 16^3 octants (10-16 voxels),
level 4 of 8^3 cells (5-8 voxels), each resized to 32^3: at most 6.4x upsampling, the paper's 4x4
grid on a 224 px image enlarges its 56 px cells 4x; cells below 4 voxels per side are refused. The
32^3 views give ``segresnet_small`` a 4^3 deepest map at every level.

Every random choice of sample ``i`` comes from ``sample_rng(seeds[i], TAG, n, ...)``; the loss is a
per-sample mean and the queue holds the global batch in global order, so 2 DDP ranks train exactly
as one process with the same global batch.

Example:
    >>> import torch
    >>> from kit.models import create_model
    >>> from kit.ssl import create_objective
    >>> obj = create_objective("anatomy_hierarchy", create_model("segresnet_small", 1), queue_size=16, total_steps=30)
    >>> sorted(obj(torch.rand(2, 1, 32, 32, 32), torch.tensor([1, 2]))), obj.grid_size
    (['contrast', 'loss'], 1)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kit.models.heads import global_pool
from kit.ssl.base import SSLObjective, check_batch, gather_across_ranks, register_objective, sample_rng
from kit.ssl.masking import grid_edges
from kit.tensors import eval_mode, to_module_device, to_numpy

__all__ = ["level_boundaries", "hierarchy_views", "pruned_info_nce", "AnatomyHierarchy"]

_TAG = 0x6164616D  # "adam"
_MIN_CELL = 4  # smallest cell side in voxels: below, a view is a resized blob of a few voxels


def level_boundaries(n_levels: int, total_steps: int | None = None, level_steps: Sequence[int] | None = None) -> tuple[int, ...]:
    """Steps at which the grid becomes finer: ``level_steps`` if given, else ``total_steps`` split evenly
    (a fallback of one level per 1000 steps when neither is given).

    Example:
        >>> level_boundaries(3, total_steps=30), level_boundaries(3, level_steps=[5, 50])
        ((10, 20), (5, 50))
    """
    if level_steps is not None:
        bounds = tuple(int(s) for s in level_steps)
        if len(bounds) != n_levels - 1 or list(bounds) != sorted(bounds) or any(b < 0 for b in bounds):
            raise ValueError(f"anatomy_hierarchy: level_steps must be {n_levels - 1} increasing steps, got {level_steps}")
        return bounds
    if total_steps is not None:
        return tuple(int(round(total_steps * i / n_levels)) for i in range(1, n_levels))
    return tuple(1000 * i for i in range(1, n_levels))


@torch.no_grad()
def hierarchy_views(
    x: torch.Tensor,
    seeds: torch.Tensor | Sequence[int],
    grid: int,
    view_size: Sequence[int] | None = None,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    flip: bool = True,
) -> dict[str, Any]:
    """Two views per sample, both cropped from one grid cell drawn from the sample's seed.

    Args:
        x: (B, C, X, Y, Z) whole brains, aligned (see the module doc).
        seeds: (B,) per-sample seeds.
        grid: cells per axis (n; n^3 cells); a cell must be at least 4 voxels per side.
        view_size: (X, Y, Z) of the views (default: the input's).
        crop_scale: range of a view's side as a fraction of the cell's side, per axis.
        flip: flip each view along each axis with probability 1/2.

    Returns:
        ``views`` (2B, C, *view_size), view-major; ``cells`` B tuples (x0, x1, y0, y1, z0, z1);
        ``crops`` 2B such tuples (view-major), each inside its sample's cell; ``flips`` 2B tuples of axes.

    Example:
        >>> out = hierarchy_views(torch.rand(2, 1, 32, 32, 32), [4, 5], grid=2, view_size=(16, 16, 16))
        >>> out["views"].shape, out["cells"][0][1] - out["cells"][0][0]
        (torch.Size([4, 1, 16, 16, 16]), 16)
    """
    seeds = check_batch(x, torch.as_tensor(seeds))
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"anatomy_hierarchy: crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
    spatial = [int(s) for s in x.shape[2:]]
    if any(n // grid < _MIN_CELL for n in spatial):
        raise ValueError(f"anatomy_hierarchy: a {grid}^3 grid on an input of {tuple(spatial)} voxels gives cells under "
                         f"{_MIN_CELL} voxels per side; use a coarser grid or a larger input")
    size = tuple(int(s) for s in (view_size or spatial))
    edges = [grid_edges(n, grid) for n in spatial]
    counts = [len(e) - 1 for e in edges]
    cells, crops, flips, views = [], [], [], [[], []]
    for i, seed in enumerate(seeds):
        idx = np.unravel_index(int(sample_rng(seed, _TAG, grid, 0).integers(int(np.prod(counts)))), counts)
        cell = sum(([int(e[j]), int(e[j + 1])] for e, j in zip(edges, idx)), [])
        cells.append(tuple(cell))
        for v in range(2):
            rng = sample_rng(seed, _TAG, grid, 1 + v)
            box = []
            for a in range(3):
                lo, hi = cell[2 * a], cell[2 * a + 1]
                side = min(hi - lo, max(2, int(round(rng.uniform(*crop_scale) * (hi - lo)))))
                start = lo + int(rng.integers(0, hi - lo - side + 1))
                box += [start, start + side]
            axes = tuple(a + 1 for a in range(3) if flip and rng.random() < 0.5)
            patch = x[i, :, box[0]:box[1], box[2]:box[3], box[4]:box[5]].unsqueeze(0)
            view = F.interpolate(patch, size=size, mode="trilinear", align_corners=False)[0]
            views[v].append(view.flip(axes) if axes else view)
            crops.append((v, i, tuple(box)))
            flips.append((v, i, axes))
    order = lambda items: [t[2] for t in sorted(items, key=lambda t: (t[0], t[1]))]  # noqa: E731 (view-major)
    return {"views": torch.stack(views[0] + views[1]), "cells": cells, "crops": order(crops), "flips": order(flips)}


def pruned_info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float, threshold: float | None = 0.8,
    max_pruned: float | None = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of queries against their positive key and the queue's negatives, false negatives pruned.

    Pruning has a failure mode of its own: when every embedding is the same (collapse), every
    negative is above the threshold, all are pruned, and the loss is exactly 0 with no gradient, so
    collapse becomes a minimum. Measured here: anatomy_hierarchy on aligned whole brains, where all
    subjects' views look alike, reached loss 0.0 and gradient norm 0.0 by step ~600 and never left it.
    ``max_pruned`` caps the share of the queue a query may prune (its most similar negatives first),
    so a collapsed representation keeps a loss and a gradient that push it apart.

    Args:
        q: (N, D) L2-normalised queries; k: (N, D) normalised positive keys; queue: (K, D) normalised negatives.
        temperature: softmax temperature.
        threshold: negatives with cosine similarity ``>= threshold`` to the query leave the denominator
            (None: no pruning).
        max_pruned: at most this share of the K negatives is pruned per query (None: no cap).

    Returns:
        ``(loss, pruned)``: the mean loss over the N queries and the (N, K) boolean mask of pruned negatives.

    Example:
        >>> q = torch.tensor([[1.0, 0.0]]); k = q.clone(); queue = torch.tensor([[0.9, 0.436], [0.0, 1.0]])
        >>> loss, pruned = pruned_info_nce(q, k, queue, 1.0)
        >>> pruned.tolist(), round(float(loss), 4)
        ([[True, False]], 0.3133)
        >>> collapsed = torch.tensor([[1.0, 0.0]] * 4)
        >>> [round(float(pruned_info_nce(q, k, collapsed, 1.0, max_pruned=m)[0]), 4) for m in (None, 0.5)]
        [0.0, 1.0986]
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.t()
    pruned = negative >= threshold if threshold is not None else torch.zeros_like(negative, dtype=torch.bool)
    if threshold is not None and max_pruned is not None:
        cap = int(max_pruned * negative.shape[1])
        allowed = torch.zeros_like(pruned)
        if cap > 0:  # only each query's `cap` most similar negatives may go
            allowed.scatter_(1, negative.topk(cap, dim=1).indices, True)
        pruned = pruned & allowed
    logits = torch.cat([positive, negative.masked_fill(pruned, float("-inf"))], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), pruned


def _projector(feature_dim: int, hidden_dim: int, dim: int) -> nn.Sequential:
    # MoCo v2's MLP head (no batch norm, so the loss of a sample does not depend on its batch)
    return nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))


@register_objective("anatomy_hierarchy")
class AnatomyHierarchy(SSLObjective):
    """Coarse-to-fine grid-cell contrastive learning with a momentum teacher, a queue and false-negative pruning.

    Args:
        model: a ``kit.models`` network (its ``encode`` is the student encoder).
        weights: ``{'contrast': 1}``.
        grid_sizes: cells per axis, coarse to fine (the paper: whole image, 2x2, 4x4).
        total_steps, level_steps: the schedule (see :func:`level_boundaries`).
        view_size: (X, Y, Z) of the views, or an int; default the input crop's shape.
        crop_scale: view side as a fraction of the cell side.
        flip: random flips of the views.
        dim, hidden_dim: projector output and hidden sizes (MoCo v2: 128, 2048).
        queue_size: negatives kept (MoCo: 65536).
        momentum: teacher EMA momentum.
        temperature: InfoNCE temperature (MoCo v2: 0.2).
        prune_threshold: cosine similarity from which negatives are pruned (0.8); None disables pruning.
        max_pruned: the largest share of the queue one query may prune (0.5; :func:`pruned_info_nce`:
            without a cap, a collapsed representation prunes every negative and scores loss 0).
        queue_seed: seed of the queue's random initial keys.

    Example:
        >>> from kit.models import create_model
        >>> obj = AnatomyHierarchy(create_model("segresnet_small", 1), total_steps=90)
        >>> obj.boundaries, [obj.grid_for_step(s) for s in (0, 29, 30, 60, 89)]
        ((30, 60), [1, 1, 2, 4, 4])
    """

    term_names = ("contrast",)
    #: kit's pretraining passes the stage's steps as ``total_steps`` (the coarse-to-fine schedule).
    uses_total_steps = True
    #: kit's pretraining feeds whole, aligned brains resized to a cube, not random crops (module doc).
    input_mode = "brain"

    def __init__(
        self,
        model: nn.Module,
        weights: dict[str, float] | None = None,
        grid_sizes: Sequence[int] = (1, 2, 4),
        total_steps: int | None = None,
        level_steps: Sequence[int] | None = None,
        view_size: int | Sequence[int] | None = None,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        flip: bool = True,
        dim: int = 128,
        hidden_dim: int = 512,
        queue_size: int = 4096,
        momentum: float = 0.999,
        temperature: float = 0.2,
        prune_threshold: float | None = 0.8,
        max_pruned: float | None = 0.5,
        queue_seed: int = 0,
    ) -> None:
        super().__init__(model, weights)
        self.grid_sizes = tuple(int(g) for g in grid_sizes)
        if not self.grid_sizes or any(g < 1 for g in self.grid_sizes):
            raise ValueError(f"anatomy_hierarchy: grid_sizes must be positive, got {grid_sizes}")
        if not 0.0 <= momentum < 1.0 or queue_size < 1 or temperature <= 0:
            raise ValueError("anatomy_hierarchy: need 0 <= momentum < 1, queue_size >= 1 and temperature > 0")
        self.total_steps = None if total_steps is None else int(total_steps)
        self.level_steps = None if level_steps is None else tuple(int(s) for s in level_steps)
        self.boundaries = level_boundaries(len(self.grid_sizes), self.total_steps, self.level_steps)
        self.view_size = (view_size,) * 3 if isinstance(view_size, int) else (tuple(view_size) if view_size else None)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.flip = bool(flip)
        self.dim, self.hidden_dim, self.queue_size = int(dim), int(hidden_dim), int(queue_size)
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.prune_threshold = None if prune_threshold is None else float(prune_threshold)
        self.max_pruned = None if max_pruned is None else float(max_pruned)
        if self.max_pruned is not None and not 0.0 <= self.max_pruned <= 1.0:
            raise ValueError(f"anatomy_hierarchy: max_pruned must be in [0, 1], got {max_pruned}")
        self.queue_seed = int(queue_seed)

        self.projector = _projector(model.feature_dim, self.hidden_dim, self.dim)
        # The teacher: a momentum copy of the encoder and projector, never trained by the optimizer.
        self.teacher = copy.deepcopy(model)
        self.teacher_projector = copy.deepcopy(self.projector)
        for p in [*self.teacher.parameters(), *self.teacher_projector.parameters()]:
            p.requires_grad_(False)
        queue = torch.randn(self.queue_size, self.dim, generator=torch.Generator().manual_seed(self.queue_seed))
        self.register_buffer("queue", F.normalize(queue, dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # Training progress, not weights: kept out of the state dict so that a later stage initialised
        # from this checkpoint starts its own schedule and re-syncs its teacher; a resumed run gets
        # them back through checkpoint_extra.
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("teacher_synced", torch.zeros((), dtype=torch.bool), persistent=False)
        self.freeze_unused([self.projector])

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "grid_sizes": self.grid_sizes, "total_steps": self.total_steps,
                "level_steps": self.level_steps, "view_size": self.view_size, "crop_scale": self.crop_scale,
                "flip": self.flip, "dim": self.dim, "hidden_dim": self.hidden_dim, "queue_size": self.queue_size,
                "momentum": self.momentum, "temperature": self.temperature,
                "prune_threshold": self.prune_threshold, "max_pruned": self.max_pruned, "queue_seed": self.queue_seed}

    def checkpoint_extra(self) -> dict[str, Any]:
        """The base's extra plus ``ssl_progress``: the schedule's step and whether the teacher was synced."""
        return {**super().checkpoint_extra(),
                "ssl_progress": {"step": int(self.step), "teacher_synced": bool(self.teacher_synced)}}

    def load_checkpoint_extra(self, extra) -> None:
        """Resume: heads, teacher and queue, then the schedule's step and the teacher's sync flag."""
        super().load_checkpoint_extra(extra)
        progress = extra.get("ssl_progress") or {}
        self.step.fill_(int(progress.get("step", 0)))
        self.teacher_synced.fill_(bool(progress.get("teacher_synced", False)))

    def grid_for_step(self, step: int) -> int:
        """Cells per axis at optimizer step ``step`` (steps done so far)."""
        return self.grid_sizes[sum(int(step) >= b for b in self.boundaries)]

    @property
    def grid_size(self) -> int:
        """Cells per axis now."""
        return self.grid_for_step(int(self.step))

    def _teacher_pairs(self):
        prefixes = tuple(getattr(self.model, "encoder_prefixes", ("",)))
        student = dict(self.model.named_parameters())
        pairs = [(p, student[n]) for n, p in self.teacher.named_parameters() if n.startswith(prefixes)]
        return pairs + list(zip(self.teacher_projector.parameters(), self.projector.parameters()))

    @torch.no_grad()
    def sync_teacher(self) -> None:
        """Copy the student's encoder and projector into the teacher (at the start of training, after
        the weights were initialised from an earlier stage)."""
        for t, s in self._teacher_pairs():
            t.copy_(s.detach())
        self.teacher_synced.fill_(True)

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """After optimizer step ``step``: set the schedule's step and move the teacher towards the student."""
        self.step.fill_(int(step))
        for t, s in self._teacher_pairs():
            t.mul_(self.momentum).add_(s.detach(), alpha=1.0 - self.momentum)

    def views(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, Any]:
        """:func:`hierarchy_views` at the current grid size."""
        return hierarchy_views(x, seeds, self.grid_size, self.view_size, self.crop_scale, self.flip)

    def _embed(self, encoder: nn.Module, projector: nn.Module, views: torch.Tensor) -> torch.Tensor:
        return F.normalize(projector(global_pool(encoder.encode(views))).float(), dim=1)

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{'loss', 'contrast'}``; in training mode also enqueues the teacher keys of the global batch.

        Args:
            x: (B, C, X, Y, Z) whole aligned brains (``input_mode``); views must have sides that the
                backbone accepts. seeds: (B,) int64.
        """
        check_batch(x, torch.as_tensor(seeds))
        if self.training and not bool(self.teacher_synced):
            self.sync_teacher()
        batch = x.shape[0]
        views = self.views(x, seeds)["views"]
        self.model.check_input(views)
        q = self._embed(self.model, self.projector, views)
        with torch.no_grad():
            k = self._embed(self.teacher, self.teacher_projector, views)
        k_swapped = torch.cat([k[batch:], k[:batch]])  # query of view 1 <-> key of view 2, and back
        queue = self.queue.clone()
        loss, _ = pruned_info_nce(q, k_swapped, queue, self.temperature, self.prune_threshold, self.max_pruned)
        if self.training:
            self._enqueue(torch.cat([gather_across_ranks(k[:batch]), gather_across_ranks(k[batch:])]))
        return self.combine({"contrast": loss})

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        n = keys.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue[idx[-self.queue_size:]] = keys[-self.queue_size:].to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % self.queue_size)

    @torch.no_grad()
    def preview(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, np.ndarray]:
        """``input`` (B, C, X, Y, Z), ``cell`` (B, 1, X, Y, Z) the drawn grid cell, ``view_1`` / ``view_2``
        (B, C, *view_size) the two crops of it, ``similarity`` (B,) student-teacher cosine of the pair,
        ``pruned_share`` (B,) share of queue negatives pruned for the first view's query."""
        x = to_module_device(x, self.model)  # crops from the host, a model on any device
        with eval_mode(self):
            batch = x.shape[0]
            v = self.views(x, seeds)
            q = self._embed(self.model, self.projector, v["views"])
            k = self._embed(self.teacher, self.teacher_projector, v["views"])
            _, pruned = pruned_info_nce(q[:batch], k[batch:], self.queue, self.temperature, self.prune_threshold,
                                        self.max_pruned)
        cell = torch.zeros((batch, 1, *x.shape[2:]), dtype=torch.bool)
        for i, (x0, x1, y0, y1, z0, z1) in enumerate(v["cells"]):
            cell[i, 0, x0:x1, y0:y1, z0:z1] = True
        views = to_numpy(v["views"])
        return {
            "input": to_numpy(x.detach()),
            "cell": cell.numpy(),
            "view_1": views[:batch],
            "view_2": views[batch:],
            "similarity": to_numpy((q[:batch] * k[batch:]).sum(1)),
            "pruned_share": to_numpy(pruned.float().mean(1)),
        }
