"""Masked image modelling for both backbones: SparK-style for the CNN, masked tokens for SwinUNETR.

The objective that measured best for 3D brain-MRI segmentation at scale (Wald et al., "An OpenMind
for 3D medical vision self-supervised learning", ICCV 2025, and the nnssl repository,
github.com/MIC-DKFZ/nnssl; "Revisiting MAE pre-training for 3D medical image segmentation", 2024).
Each crop is cut into ``patch_size^3`` patches and a fixed share ``mask_ratio`` of them is hidden
(exactly ``round(mask_ratio * n_patches)`` per sample, drawn from ``sample_rng(seed, TAG)``):

- ``segresnet_small`` (CNN, SparK: Tian et al., ICLR 2023): masked patches are zeroed at the input
  and the mask is re-applied after the stem and after every encoder stage, so masked positions stay
  empty as with sparse convolutions (no information leaks into them through overlapping kernels);
  before decoding, masked positions of the deepest map are filled with a learned mask embedding
  (SparK's densifying). ``patch_size`` must be a multiple of the encoder stride. Inside the encoder
  every ``GroupNorm`` takes its statistics over the **visible voxels only** and writes 0 into masked
  ones (``masked_norm=True``, :func:`kit.ssl.masking.masked_group_norm`), as SparK's sparse batch
  norm does (github.com/keyu-tian/SparK ``pretrain/encoder.py``): with dense statistics 60 % zeros
  would pull every group's mean and variance towards the hole pattern, so the visible features
  would depend on how much is hidden, and a fine-tuned (unmasked) encoder would see other
  statistics. The norms are patched only while the objective's forward runs (a context manager), so
  the backbone itself, its state dict and its fine-tuning are unchanged.
- ``swinunetr`` (transformer, masked tokens as SimMIM / MAE-style): after ``swinViT.patch_embed``
  the embeddings of masked patches are replaced by a learned mask token; the input itself is left as
  is (the non-overlapping 2^3 patch embedding cannot see across patches). ``patch_size`` must be a
  multiple of the patch embedding's size (2).

Both decode the deepest feature map with the reconstruction decoder of
:class:`kit.models.heads.SSLHead` (the nnssl MAE for CNNs uses the U-Net decoder; a light decoder
keeps the encoder doing the work). The loss (``recon``) is the squared error on the **masked voxels
only**, as a per-sample mean then a batch mean, against targets normalised per patch over **all
channels together**: MAE's and SparK's ``norm_pix_loss`` flatten a patch with its channels (``p^2 *
3`` values for RGB) and take one mean and variance (github.com/facebookresearch/mae
``models_mae.py``, ``forward_loss``; SparK ``pretrain/spark.py``), so the target keeps how the
contrasts of a patch differ (e.g. a lesion bright in FLAIR and dark in T1). ``norm_per_channel=True``
normalises each contrast of a patch on its own (it removes the between-contrast offsets of the patch,
so the task only asks for each contrast's pattern, not clearly better for z-scored MRI: kept as an
option); ``norm_targets=False`` uses the raw crop.

**Patch size and crop size.** SparK and nnssl use 16^3 patches and ratios of 0.6-0.75 at 160^3 /
96^3 crops (216-1000 patches); the defaults here are 16 and 0.6. At **32^3 crops use**
``patch_size=8``: 16 would cut the crop into 8 octants (5 hidden, 3 shown), a pretext task of
guessing most of the crop from three corners; 8 gives 64 patches (38 hidden), one voxel of the
deepest map of ``segresnet_small`` (stride 8) per patch, which is SparK's own granularity (patch =
encoder stride). 4 is below that stride and is refused. The mask is exact per sample (``round(ratio *
n)`` patches) and a function of the sample's seed only.

Example:
    >>> import torch
    >>> from kit.models import create_model
    >>> from kit.ssl import create_objective
    >>> obj = create_objective("mim", create_model("segresnet_small", in_channels=2), patch_size=8)
    >>> sorted(obj(torch.rand(2, 2, 32, 32, 32), torch.tensor([1, 2])))
    ['loss', 'recon']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.models.heads import SSLHead
from kit.ssl.base import SSLObjective, check_batch, register_objective, sample_rng
from kit.ssl.masking import expand_mask, masked_group_norm, masked_mean, patch_mask, patch_normalise
from kit.tensors import eval_mode, to_module_device, to_numpy

__all__ = ["patch_masks", "MaskedImageModelling"]

_TAG = 0x6D696D30  # "mim0"


def patch_masks(x: torch.Tensor, seeds: torch.Tensor | Sequence[int], patch_size: int, mask_ratio: float) -> torch.Tensor:
    """Per-sample patch masks (B, 1, X/p, Y/p, Z/p) bool, True = masked, from each sample's seed.

    Example:
        >>> m = patch_masks(torch.zeros(2, 1, 32, 32, 32), [1, 2], 16, 0.75)
        >>> m.shape, m.flatten(1).sum(1).tolist()
        (torch.Size([2, 1, 2, 2, 2]), [6, 6])
    """
    seeds = check_batch(x, torch.as_tensor(seeds))
    spatial = [int(s) for s in x.shape[2:]]
    if any(s % patch_size for s in spatial):
        raise ValueError(f"mim: crop {tuple(spatial)} is not a multiple of patch_size {patch_size}")
    grid = [s // patch_size for s in spatial]
    if int(np.prod(grid)) < 2:
        raise ValueError(f"mim: a crop of {tuple(spatial)} holds a single {patch_size}^3 patch; use a smaller "
                         "patch_size or a larger crop")
    masks = np.stack([patch_mask(grid, mask_ratio, sample_rng(s, _TAG)) for s in seeds])
    return torch.from_numpy(masks).unsqueeze(1).to(x.device)


class _MaskToken(nn.Module):
    """A learned embedding written into masked positions (SparK's mask embedding / SimMIM's mask token)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
        nn.init.trunc_normal_(self.token, std=0.02)

    def fill(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``features`` (B, F, ...) with positions where ``mask`` (B, 1, ...) is true replaced by the token."""
        keep = (~expand_mask(mask, features.shape[2:])).to(features.dtype)
        return features * keep + self.token.to(features.dtype) * (1 - keep)


@contextlib.contextmanager
def _output_hooks(modules: Sequence[nn.Module], rewrite) -> Iterator[None]:
    """Rewrite the outputs of ``modules`` with ``rewrite(output)`` while the context is open."""
    # prepend: other hooks (e.g. feature probes) see the rewritten output
    handles = [m.register_forward_hook(lambda _m, _i, out: rewrite(out), prepend=True) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _masked_group_norms(modules: Sequence[nn.Module], mask: torch.Tensor) -> Iterator[None]:
    """While open, every ``nn.GroupNorm`` inside ``modules`` normalises with the statistics of the
    voxels outside ``mask`` (B, 1, gx, gy, gz) only (:func:`masked_group_norm`, the mask expanded
    to each norm's input), and writes 0 into masked voxels."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)]

    def masked_forward(norm: nn.GroupNorm):
        return lambda x: masked_group_norm(norm, x, ~expand_mask(mask, x.shape[2:]))

    for norm in norms:
        norm.forward = masked_forward(norm)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


@register_objective("mim")
class MaskedImageModelling(SSLObjective):
    """Masked image modelling: SparK-style for ``segresnet_small``, masked tokens for ``swinunetr``.

    Args:
        model: a ``kit.models`` network.
        weights: ``{'recon': 1}``.
        mask_ratio: share of patches hidden, in (0, 1).
        patch_size: side of a masked patch, in voxels.
        norm_targets: normalise the targets per patch (``norm_pix_loss``).
        norm_per_channel: normalise each channel of a patch on its own instead of all its channels
            together (the papers').
        masked_norm: ``segresnet_small``: encoder GroupNorms take statistics of visible voxels only
            (SparK); ``False``: dense statistics over the zeroed input.
        upsample: decoder style, 'vae' or 'deconv' (:class:`~kit.models.heads.SSLHead`).

    Example:
        >>> from kit.models import create_model
        >>> MaskedImageModelling(create_model("swinunetr", 1, feature_size=12)).mode
        'token'
    """

    term_names = ("recon",)
    min_crop = 32  # at least two patches of the default patch_size (16) per crop

    def __init__(
        self,
        model: nn.Module,
        weights: dict[str, float] | None = None,
        mask_ratio: float = 0.6,
        patch_size: int = 16,
        norm_targets: bool = True,
        upsample: str = "vae",
        norm_per_channel: bool = False,
        masked_norm: bool = True,
    ) -> None:
        super().__init__(model, weights)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mim: mask_ratio must be in (0, 1), got {mask_ratio}")
        backbone = model.config["name"]
        self.mode = "token" if backbone == "swinunetr" else "sparse"
        stride = int(model.config.get("patch_size", 2)) if self.mode == "token" else int(model.downsample)
        if patch_size < 1 or patch_size % stride:
            what = "the patch embedding" if self.mode == "token" else "the encoder stride"
            raise ValueError(f"mim: patch_size {patch_size} must be a multiple of {what} ({stride}) for {backbone}")
        self.mask_ratio = float(mask_ratio)
        self.patch_size = int(patch_size)
        self.norm_targets = bool(norm_targets)
        self.norm_per_channel = bool(norm_per_channel)
        self.masked_norm = bool(masked_norm) and self.mode == "sparse"
        if self.masked_norm:
            other = sorted({type(m).__name__ for m in self._encoder_stages() for m in m.modules()
                            if isinstance(m, nn.modules.batchnorm._NormBase)})
            if other:
                raise ValueError(f"mim: masked_norm handles GroupNorm encoders, this one has {other}; pass masked_norm=False")
        self.upsample = upsample
        self.heads = SSLHead(model.feature_dim, model.in_channels, model.downsample, upsample=upsample)
        token_dim = int(model.config["feature_size"]) if self.mode == "token" else int(model.feature_dim)
        self.mask_token = _MaskToken(token_dim)
        self.freeze_unused([self.heads.decoder, self.mask_token])

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "mask_ratio": self.mask_ratio, "patch_size": self.patch_size,
                "norm_targets": self.norm_targets, "norm_per_channel": self.norm_per_channel,
                "masked_norm": self.masked_norm, "upsample": self.upsample, "mode": self.mode}

    def _encoder_stages(self) -> list[nn.Module]:
        return [self.model.convInit, *self.model.down_layers]

    def masks(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Patch masks (B, 1, X/p, Y/p, Z/p) of this batch (:func:`patch_masks`)."""
        return patch_masks(x, seeds, self.patch_size, self.mask_ratio)

    def encode_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Deepest features of ``x`` with the patches of ``mask`` hidden (see the module doc)."""
        if self.mode == "token":
            embed = self.model.swinViT.patch_embed
            with _output_hooks([embed], lambda out: self.mask_token.fill(out, mask)):
                return self.model.encode(x)
        # SparK: zero masked patches at the input and after every encoder stage, then densify.
        keep_input = ~expand_mask(mask, x.shape[2:])
        stages = self._encoder_stages()
        norms = _masked_group_norms(stages, mask) if self.masked_norm else contextlib.nullcontext()
        with norms, _output_hooks(stages, lambda out: out * (~expand_mask(mask, out.shape[2:])).to(out.dtype)):
            features = self.model.encode(x * keep_input.to(x.dtype))
        return self.mask_token.fill(features, mask)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """What the decoder must output (B, C, X, Y, Z): ``x`` normalised per patch (or ``x``)."""
        if not self.norm_targets:
            return x.float()
        return patch_normalise(x.float(), self.patch_size, per_channel=self.norm_per_channel)[0]

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{'loss', 'recon'}``: squared error on masked voxels. x: (B, C, X, Y, Z), sides multiples of
        ``patch_size`` and ``model.downsample``; seeds: (B,) int64."""
        self.model.check_input(x)
        mask = self.masks(x, seeds)
        recon = self.heads.reconstruct(self.encode_masked(x, mask)).float()
        error = (recon - self.targets(x)) ** 2
        return self.combine({"recon": masked_mean(error, expand_mask(mask, x.shape[2:]))})

    @torch.no_grad()
    def preview(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, np.ndarray]:
        """``input``, ``masked`` (input with hidden patches zeroed), ``target`` (normalised),
        ``reconstruction`` (mapped back to intensities with the true patch statistics, visible
        patches copied from the input) as (B, C, X, Y, Z), and ``mask`` (B, 1, X, Y, Z) bool."""
        x = to_module_device(x, self.model)  # crops from the host, a model on any device
        with eval_mode(self):
            mask = self.masks(x, seeds)
            recon = self.heads.reconstruct(self.encode_masked(x, mask)).float()
        full = expand_mask(mask, x.shape[2:])
        xf = x.detach().float()
        if self.norm_targets:
            target, mean, std = patch_normalise(xf, self.patch_size, per_channel=self.norm_per_channel)
            shown = recon * std + mean
        else:
            target, shown = xf, recon
        return {
            "input": to_numpy(xf),
            "masked": to_numpy(xf * (~full)),
            "target": to_numpy(target),
            "reconstruction": to_numpy(torch.where(full, shown, xf)),
            "mask": to_numpy(full),
        }
