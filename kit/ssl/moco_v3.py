"""MoCo v3 on 2D slices (Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021; code github.com/facebookresearch/moco-v3, ``moco/builder.py``).

Two augmented views of each slice go through the base encoder (the kit backbone, globally pooled),
a projector MLP and a predictor MLP (queries ``q1, q2``), and through a momentum encoder and its
momentum projector (keys ``k1, k2``, no gradient). The loss is symmetric InfoNCE::

    loss = ctr(q1, k2) + ctr(q2, k1),   ctr(q, k) = 2T * CE(normalize(q) @ normalize(k_all).T / T, labels)

where ``k_all`` are the keys of every rank (:func:`kit.ssl.base.gather_across_ranks`) and the
positive of query ``i`` on rank ``r`` is key ``i + r * B``. No queue. The momentum encoder is an
exponential moving average of the base encoder and projector, updated after each optimizer step
(:meth:`MoCoV3.on_step_end`) with a momentum raised from ``momentum`` (0.99) to 1 by a half cosine
over ``total_steps``, as ``adjust_moco_momentum`` in the official ``main_moco.py``.

MLPs follow the official ``_build_mlp``: Linear (no bias) + BatchNorm1d + ReLU between layers and a
BatchNorm1d without affine at the end of the projector. The paper's projector has 3 layers (the
default here); the official ResNet code uses 2 (``projector_layers=2``). The ResNet predictor has 2
layers and no final BatchNorm. The official code converts BatchNorm to SyncBatchNorm under DDP; here
BatchNorm statistics are per rank (per-rank batch statistics, as MoCo v1/v2 did).

Augmentations (per sample and view, from :func:`kit.ssl.base.sample_rng` only): the official BYOL
recipe without what makes no sense for MRI slices (colour jitter, grayscale, solarize) and with
flips restricted to left-right (anatomy is not up-down symmetric):

- random resized crop (area ``crop_scale``, aspect ratio 3/4..4/3, torchvision's sampling), resized
  to ``view_size`` pixels;
- left-right flip with p = 0.5 on the in-plane dimension ``lr_dim`` (None disables it, e.g. for
  sagittal slices);
- intensity jitter with p = ``jitter_prob`` on brain pixels (nonzero) of each channel: gamma,
  contrast (scale around the mean) and brightness (shift, z-score units);
- Gaussian blur with p = ``blur_prob[view]`` (1.0 and 0.1, asymmetric as the official code),
  sigma drawn in ``blur_sigma`` pixels of a 224-pixel view, scaled to ``view_size``.

Example:
    >>> import torch
    >>> from kit.models import create_model
    >>> from kit.ssl import create_objective
    >>> net = create_model("resnet18_2d", in_channels=2, widen_factor=0.25)
    >>> obj = create_objective("moco_v3", net, dim=32, mlp_dim=64, total_steps=10)
    >>> out = obj(torch.randn(4, 2, 32, 32), torch.arange(4))
    >>> sorted(out), out["loss"].ndim
    (['contrast', 'loss'], 0)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kit.models.heads import global_pool
from kit.ssl.base import SSLObjective, check_batch, gather_across_ranks, register_objective, sample_rng
from kit.tensors import to_module_device, to_numpy

__all__ = ["MoCoV3", "ViewAugment", "build_mlp", "contrastive_loss", "momentum_at", "make_view", "check_slice_batch"]

_TAG = 3  # sample_rng stream tag of this objective (swin_trio uses its own)


def check_slice_batch(x: torch.Tensor, seeds: torch.Tensor) -> list[int]:
    """Validate a batch of 2D slices and return the seeds as Python ints.

    Raises ``ValueError`` unless ``x`` is a floating ``(B, C, H, W)`` tensor and ``seeds`` has B integers.

    Example:
        >>> check_slice_batch(torch.zeros(2, 1, 16, 16), torch.tensor([3, 4]))
        [3, 4]
    """
    return check_batch(x, seeds, spatial_dims=2, who="moco_v3")


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """The official MoCo v3 MLP: Linear(no bias) + BN + ReLU between layers; optional BN (no affine) at the end.

    Example:
        >>> [type(m).__name__ for m in build_mlp(3, 8, 16, 4)]
        ['Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d']
    """
    if num_layers < 1:
        raise ValueError(f"build_mlp: num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*layers)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries ``q`` (B, D) against the keys of every rank, times ``2 * temperature``.

    ``k`` (B, D) is gathered across ranks (no gradient flows into keys); the positive of query ``i``
    on rank ``r`` is global key ``i + r * B``.

    Example:
        >>> q = torch.eye(3); round(float(contrastive_loss(q, q, 1.0)), 4)   # 2 * CE of logits eye(3)
        1.1029
    """
    # float32 logits even under autocast: bf16 keeps ~3 digits, too few for similarities / T
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        keys = gather_across_ranks(k)
        logits = q @ keys.t() / temperature
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
    return F.cross_entropy(logits, labels) * (2 * temperature)


def momentum_at(step: int, total_steps: int, base: float = 0.99) -> float:
    """Momentum after ``step`` of ``total_steps``: ``1 - (1 - base) * (1 + cos(pi * step / total)) / 2``.

    Example:
        >>> momentum_at(0, 100), momentum_at(50, 100), momentum_at(100, 100)
        (0.99, 0.995, 1.0)
    """
    if total_steps < 1:
        raise ValueError(f"momentum_at: total_steps must be >= 1, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return round(1.0 - 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - base), 12)


def _crop_box(rng: np.random.Generator, h: int, w: int, scale: Sequence[float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, height, width): 10 tries, then a centre crop."""
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` (C, H, W), reflect padding, kernel radius ceil(3 sigma)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


@dataclass(frozen=True)
class ViewAugment:
    """The augmentation settings of a MoCo v3 view (:func:`make_view`; the module docstring describes each step).

    Attributes:
        crop_scale: (lo, hi) share of the slice's area a random crop keeps (0 < lo <= hi <= 1).
        lr_dim: the in-plane axis (0 or 1) flipped with probability 0.5 (left-right), or None: no flip.
        jitter_prob, brightness, contrast, gamma: probability and strengths of the per-channel intensity jitter.
        blur_prob: Gaussian blur probability of view 0 and view 1; blur_sigma: its (lo, hi) sigma at 224 pixels.

    Example:
        >>> ViewAugment(lr_dim=None).config()["crop_scale"]
        [0.2, 1.0]
        >>> ViewAugment(crop_scale=(0.5, 0.2))
        Traceback (most recent call last):
        ...
        ValueError: moco_v3: crop_scale must satisfy 0 < lo <= hi <= 1, got (0.5, 0.2)
    """

    crop_scale: Sequence[float] = (0.2, 1.0)
    lr_dim: int | None = 0
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: float = 0.4
    blur_prob: Sequence[float] = (1.0, 0.1)
    blur_sigma: Sequence[float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        typed = {"crop_scale": tuple(float(v) for v in self.crop_scale), "jitter_prob": float(self.jitter_prob),
                 "brightness": float(self.brightness), "contrast": float(self.contrast), "gamma": float(self.gamma),
                 "blur_prob": tuple(float(v) for v in self.blur_prob), "blur_sigma": tuple(float(v) for v in self.blur_sigma)}
        for name, value in typed.items():
            object.__setattr__(self, name, value)
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"moco_v3: crop_scale must satisfy 0 < lo <= hi <= 1, got {tuple(self.crop_scale)}")
        if self.lr_dim not in (None, 0, 1):
            raise ValueError(f"moco_v3: lr_dim must be None, 0 or 1, got {self.lr_dim!r}")

    def config(self) -> dict[str, Any]:
        """The settings as plain JSON values (tuples as lists), as the objective's config records them."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def make_view(
    image: torch.Tensor,
    seed: int,
    view: int,
    *,
    view_size: int,
    augment: ViewAugment | None = None,
    **settings: Any,
) -> torch.Tensor:
    """One augmented view ``(C, view_size, view_size)`` of a slice ``image`` (C, H, W), drawn from
    ``sample_rng(seed, TAG, view)`` only (see the module docstring for each step).

    Example:
        >>> x = torch.rand(2, 40, 36)
        >>> a, b = make_view(x, 5, 0, view_size=32), make_view(x, 5, 0, view_size=32)
        >>> a.shape, bool(torch.equal(a, b)), bool(torch.equal(a, make_view(x, 5, 1, view_size=32)))
        (torch.Size([2, 32, 32]), True, False)
    """
    aug = augment if augment is not None else ViewAugment()
    if settings:
        aug = replace(aug, **settings)
    rng = sample_rng(seed, _TAG, view)
    c, h, w = image.shape
    top, left, ch, cw = _crop_box(rng, h, w, aug.crop_scale)
    out = F.interpolate(image[None, :, top : top + ch, left : left + cw].float(), size=(view_size, view_size),
                        mode="bilinear", align_corners=False)[0]
    if aug.lr_dim is not None and rng.random() < 0.5:
        out = out.flip(1 + int(aug.lr_dim))
    if rng.random() < aug.jitter_prob:
        # per channel: contrasts are independent images; background (0) stays background
        g = np.exp(rng.uniform(math.log(1 / (1 + aug.gamma)), math.log(1 + aug.gamma), c))
        s = rng.uniform(1 - aug.contrast, 1 + aug.contrast, c)
        b = rng.uniform(-aug.brightness, aug.brightness, c)
        jittered = []
        for i in range(c):
            x = out[i]
            brain = x != 0
            if brain.sum() > 1:
                lo, hi = x[brain].min(), x[brain].max()
                unit = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) ** float(g[i])
                y = unit * (hi - lo) + lo
                mean = y[brain].mean()
                y = (y - mean) * float(s[i]) + mean + float(b[i])
                x = torch.where(brain, y, x)
            jittered.append(x)
        out = torch.stack(jittered)
    if rng.random() < aug.blur_prob[min(view, len(aug.blur_prob) - 1)]:
        sigma = rng.uniform(aug.blur_sigma[0], aug.blur_sigma[1]) * view_size / 224
        out = _gaussian_blur(out, max(sigma, 1e-3))
    return out.contiguous()


@register_objective("moco_v3")
class MoCoV3(SSLObjective):
    """MoCo v3 around a 2D kit backbone (e.g. ``resnet18_2d``); see the module docstring.

    Args:
        model: a backbone with ``encode`` and ``feature_dim`` (2D: ``(B, C, H, W)`` input).
        weights: ``{'contrast': w}`` (one term).
        dim: output size of projector and predictor (256 in the paper).
        mlp_dim: hidden size of the MLPs (4096 in the paper; smaller on CPU).
        temperature: T (1.0 for ResNet-50 in the paper, 0.2 for ViT).
        momentum: starting momentum of the EMA (0.99), raised to 1 by a half cosine.
        total_steps: steps of the whole run (the schedule's length); the pretraining setup sets it
            from the run's ``steps`` when None.
        projector_layers, predictor_layers: MLP depths (3 and 2, the paper's).
        view_size: side of the views in pixels (default: the input's shorter side).
        **augment: the view augmentation settings by name (``crop_scale``, ``lr_dim``, ...: the fields of
            :class:`ViewAugment`, one object shared with :func:`make_view`).
    """

    term_names = ("contrast",)
    spatial_dims = 2  # trained on slices: notebooks 04-05 take the 2D slice path
    uses_total_steps = True  # the momentum schedule spans the run: kit's pretraining passes its steps

    def __init__(
        self,
        model: nn.Module,
        weights: dict | None = None,
        dim: int = 256,
        mlp_dim: int = 4096,
        temperature: float = 1.0,
        momentum: float = 0.99,
        total_steps: int | None = None,
        projector_layers: int = 3,
        predictor_layers: int = 2,
        view_size: int | None = None,
        **augment: Any,
    ) -> None:
        super().__init__(model, weights)
        if not 0.0 <= momentum <= 1.0 or temperature <= 0:
            raise ValueError(f"moco_v3: momentum must be in [0, 1] and temperature > 0, got {momentum}, {temperature}")
        self.dim, self.mlp_dim, self.temperature = int(dim), int(mlp_dim), float(temperature)
        self.base_momentum = float(momentum)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.projector_layers, self.predictor_layers = int(projector_layers), int(predictor_layers)
        self.view_size = None if view_size is None else int(view_size)
        self.augment = ViewAugment(**augment)
        self.projector = build_mlp(self.projector_layers, model.feature_dim, self.mlp_dim, self.dim, last_bn=True)
        self.predictor = build_mlp(self.predictor_layers, self.dim, self.mlp_dim, self.dim, last_bn=False)
        # the momentum branch starts as a copy and only ever changes by the EMA (never by gradients)
        self.momentum_model = copy.deepcopy(model)
        self.momentum_projector = copy.deepcopy(self.projector)
        for param in self._momentum_params():
            param.requires_grad_(False)
        self.freeze_unused([self.projector, self.predictor])
        self.momentum = self.base_momentum
        # Not in the state dict: a stage initialised from another checkpoint re-copies its (loaded) base
        # into the momentum branch at its first forward, as MoCo starts; a resumed run restores it.
        self.register_buffer("momentum_synced", torch.zeros((), dtype=torch.bool), persistent=False)

    def _base_params(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.projector.parameters()]

    def _momentum_params(self) -> list[nn.Parameter]:
        return [*self.momentum_model.parameters(), *self.momentum_projector.parameters()]

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "dim": self.dim, "mlp_dim": self.mlp_dim, "temperature": self.temperature,
                "momentum": self.base_momentum, "total_steps": self.total_steps,
                "projector_layers": self.projector_layers, "predictor_layers": self.predictor_layers,
                "view_size": self.view_size, **self.augment.config()}

    def make_views(self, x: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views ``(B, C, S, S)`` of the batch ``x`` (B, C, H, W)."""
        seed_list = check_slice_batch(x, seeds)
        size = self.view_size or min(x.shape[-2:])
        views = [torch.stack([make_view(x[i], s, v, view_size=size, augment=self.augment) for i, s in enumerate(seed_list)])
                 for v in (0, 1)]
        return views[0], views[1]

    def queries(self, view: torch.Tensor) -> torch.Tensor:
        """Predictor output of the base branch ``(B, dim)``."""
        return self.predictor(self.projector(global_pool(self.model.encode(view))))

    @torch.no_grad()
    def keys(self, view: torch.Tensor) -> torch.Tensor:
        """Momentum projector output ``(B, dim)`` (no gradient)."""
        return self.momentum_projector(global_pool(self.momentum_model.encode(view)))

    @torch.no_grad()
    def sync_momentum(self) -> None:
        """Copy the base encoder and projector into the momentum branch (MoCo's initialisation)."""
        for base, moving in zip(self._base_params(), self._momentum_params()):
            moving.copy_(base.detach())
        for base, moving in zip([*self.model.buffers(), *self.projector.buffers()],
                                [*self.momentum_model.buffers(), *self.momentum_projector.buffers()]):
            moving.copy_(base)
        self.momentum_synced.fill_(True)

    def load_checkpoint_extra(self, extra) -> None:
        """Resume: heads and the momentum branch as saved (no re-sync)."""
        super().load_checkpoint_extra(extra)
        self.momentum_synced.fill_(True)

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{'loss', 'contrast'}`` for a batch of slices ``x`` (B, C, H, W) and per-sample ``seeds`` (B,)."""
        if not bool(self.momentum_synced):
            self.sync_momentum()
        v1, v2 = self.make_views(x, seeds)
        q1, q2 = self.queries(v1), self.queries(v2)
        k1, k2 = self.keys(v1), self.keys(v2)
        loss = contrastive_loss(q1, k2, self.temperature) + contrastive_loss(q2, k1, self.temperature)
        return self.combine({"contrast": loss})

    def momentum_for(self, step: int) -> float:
        """The EMA momentum used after optimizer step ``step`` (1-based)."""
        if self.total_steps is None:
            raise ValueError("moco_v3: total_steps is not set; pass total_steps=... (the run's steps) for the momentum schedule")
        return momentum_at(step, self.total_steps, self.base_momentum)

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """EMA of the base encoder + projector into the momentum branch: ``m_p = m * m_p + (1 - m) * p``."""
        self.momentum = self.momentum_for(step)
        for base, moving in zip(self._base_params(), self._momentum_params()):
            moving.mul_(self.momentum).add_(base.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def preview(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, np.ndarray]:
        """The input slices and their two views as numpy arrays ``(B, C, H, W)``, plus ``spatial_dims`` = 2."""
        x = to_module_device(x, self.model)  # crops from the host, a model on any device
        v1, v2 = self.make_views(x, seeds)
        return {"input": to_numpy(x.detach()), "view_1": to_numpy(v1), "view_2": to_numpy(v2),
                "spatial_dims": 2}
