"""Inference of a segmentation network on a whole volume: sliding windows or one whole-volume pass.

Whole-volume inference (:func:`predict_whole_volume`): a volume that fits in memory is padded to
the network's multiple and run in one forward pass, about 3x cheaper than 32^3 windows with
overlap 0.25 on a 3 mm brain (52 x 62 x 52 voxels). It is only *equivalent* when the network
was trained on inputs of about that size: SegResNet normalises with GroupNorm, whose statistics
are taken over the whole input, so a model trained on 32^3 crops sees different feature
statistics on a whole brain. Measured on one scratch model (3 mm, 27 training subjects, 20 test
subjects): mean Dice 0.67 with 32^3 windows, 0.58 on whole volumes. Hence ``inference='auto'``
uses the whole volume only when it fits in the training window ``roi`` (and in
``max_whole_voxels``), and sliding windows otherwise; ``'whole'`` forces it (``roi=None`` too).

Example:
    >>> from torch import nn
    >>> predict_volume(nn.Conv3d(1, 2, 1), torch.zeros(1, 20, 20, 20), roi=16).shape
    torch.Size([2, 20, 20, 20])
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.devices import resolve_amp
from kit.tensors import eval_mode

__all__ = ["GPU_SW_BATCH_SIZE", "MAX_WHOLE_VOXELS", "predict_volume", "predict_whole_volume", "use_whole_volume"]

#: Sliding-window batch of :func:`predict_volume` on a GPU when none is given.
GPU_SW_BATCH_SIZE = 4
# 'auto' inference runs the whole volume in one pass up to this many (padded) voxels: ~ 126^3.
MAX_WHOLE_VOXELS = 2_000_000


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter of ``model`` (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def eval_autocast(model: nn.Module, device: torch.device, amp: str):
    """Eval mode and autocast (when ``amp`` resolves to a dtype on ``device``); restores the mode."""
    amp_dtype = resolve_amp(amp, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with eval_mode(model), autocast:
        yield


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: Any,
    roi: int | Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int | None = None,
    *,
    amp: str = "auto",
    mode: str = "gaussian",
    activation: str = "sigmoid",
) -> torch.Tensor:
    """Region probabilities of a whole volume by sliding-window inference.

    ``monai.inferers.sliding_window_inference`` runs ``model`` on ``roi`` windows overlapping by
    ``overlap`` (volumes smaller than ``roi`` are padded) and blends them (``mode`` 'gaussian'
    weights window centres more than borders, 'constant' averages). The model runs on its own device
    in eval mode, under autocast when ``amp`` resolves to a dtype there ('auto': bf16 on a CUDA GPU
    that supports it, float32 on a CPU); kit's SwinUNETR runs its window attention through SDPA.

    Args:
        model: network ``(B, C, *roi) -> (B, R, *roi)`` logits.
        image: (C, X, Y, Z) array or tensor (the cached, normalised volume).
        roi: window size in voxels (one int or 3); must suit the model (e.g. multiples of 32 for swinunetr).
        overlap: fraction of a window shared with its neighbour along each axis.
        sw_batch_size: windows per forward pass; None = 4 on a GPU, 1 on a CPU (more windows per
            pass only help a device with parallelism to spare, and cost memory).
        amp: 'auto' | 'bf16' | 'fp16' | 'off' (see kit.devices.resolve_amp).
        mode: window blending, 'gaussian' or 'constant'.
        activation: 'sigmoid' (region channels), 'softmax' or 'none' (logits).

    Returns:
        float32 CPU tensor (R, X, Y, Z).

    Example:
        >>> net = nn.Conv3d(2, 3, 1)
        >>> predict_volume(net, torch.zeros(2, 40, 36, 30), roi=32).shape
        torch.Size([3, 40, 36, 30])
    """
    from monai.inferers import sliding_window_inference

    volume = image.float() if torch.is_tensor(image) else torch.from_numpy(np.array(image, dtype=np.float32))
    if volume.ndim != 4:
        raise ValueError(f"predict_volume: expected an image (C, X, Y, Z), got shape {tuple(volume.shape)}")
    roi_size = (int(roi),) * 3 if np.isscalar(roi) else tuple(int(r) for r in roi)
    device = model_device(model)
    if sw_batch_size is None:
        sw_batch_size = GPU_SW_BATCH_SIZE if device.type == "cuda" else 1
    with eval_autocast(model, device, amp):
        logits = sliding_window_inference(
            volume[None].to(device), roi_size, int(sw_batch_size), model,
            overlap=float(overlap), mode=mode, device=device,
        )
    return _activate(logits, activation, "predict_volume")


def _activate(logits: Any, activation: str, where: str, crop: Sequence[int] | None = None) -> torch.Tensor:
    """The first item of a batch of logits as a float32 CPU tensor (cropped to ``crop``), through ``activation``."""
    if hasattr(logits, "as_tensor"):  # a MONAI MetaTensor: keep the plain tensor
        logits = logits.as_tensor()
    logits = logits.float()[0]
    if crop is not None:
        logits = logits[(slice(None),) + tuple(slice(0, s) for s in crop)]
    if activation == "sigmoid":
        logits = torch.sigmoid(logits)
    elif activation == "softmax":
        logits = torch.softmax(logits, dim=0)
    elif activation != "none":
        raise ValueError(f"{where}: activation must be 'sigmoid', 'softmax' or 'none', got {activation!r}")
    return logits.detach().cpu()


def _padded_shape(shape: Sequence[int], multiple: int, minimum: int) -> tuple[int, ...]:
    return tuple(max(int(minimum), -(-int(s) // multiple) * multiple) for s in shape)


def use_whole_volume(model: nn.Module, shape: Sequence[int], max_voxels: int = MAX_WHOLE_VOXELS,
                     roi: int | Sequence[int] | None = None) -> bool:
    """True when a volume of spatial ``shape``, padded to what ``model`` accepts, has at most
    ``max_voxels`` voxels and, with ``roi`` (the training crop), fits inside it on every side:
    then one whole-volume pass sees what training saw (see the module docstring on GroupNorm).

    Example:
        >>> from kit.models import create_model
        >>> net = create_model("segresnet_small", in_channels=1)
        >>> use_whole_volume(net, (52, 62, 52)), use_whole_volume(net, (52, 62, 52), roi=32), use_whole_volume(net, (30, 28, 31), roi=32)
        (True, False, True)
    """
    multiple, minimum = int(getattr(model, "downsample", 1)), int(getattr(model, "min_input_size", 1))
    padded = _padded_shape(shape, multiple, minimum)
    if roi is not None:
        window = (int(roi),) * 3 if np.isscalar(roi) else tuple(int(r) for r in roi)
        if any(p > w for p, w in zip(padded, window)):
            return False
    return int(np.prod(padded)) <= int(max_voxels)


@torch.no_grad()
def predict_whole_volume(model: nn.Module, image: Any, *, amp: str = "auto", activation: str = "sigmoid") -> torch.Tensor:
    """Region probabilities of a whole volume in one forward pass (no windows).

    The volume is zero-padded at the end of each axis to the model's multiple (``model.downsample``,
    at least ``model.min_input_size``; 1 for other networks), run once, and cropped back. Zero is
    the cache's background after z-scoring, so the padding looks like air outside the brain.

    Args:
        model: network ``(B, C, D, H, W) -> (B, R, D, H, W)`` logits.
        image: (C, X, Y, Z) array or tensor.
        amp, activation: see :func:`predict_volume`.

    Returns:
        float32 CPU tensor (R, X, Y, Z).

    Example:
        >>> from kit.models import create_model
        >>> net = create_model("segresnet_small", in_channels=2, out_channels=3)
        >>> predict_whole_volume(net, torch.zeros(2, 20, 27, 17)).shape
        torch.Size([3, 20, 27, 17])
    """
    volume = image.float() if torch.is_tensor(image) else torch.from_numpy(np.array(image, dtype=np.float32))
    if volume.ndim != 4:
        raise ValueError(f"predict_whole_volume: expected an image (C, X, Y, Z), got shape {tuple(volume.shape)}")
    spatial = tuple(int(s) for s in volume.shape[1:])
    multiple, minimum = int(getattr(model, "downsample", 1)), int(getattr(model, "min_input_size", 1))
    padded = _padded_shape(spatial, multiple, minimum)
    pad = []
    for s, p in zip(reversed(spatial), reversed(padded)):
        pad += [0, p - s]
    device = model_device(model)
    with eval_autocast(model, device, amp):
        logits = model(torch.nn.functional.pad(volume, pad)[None].to(device))
    return _activate(logits, activation, "predict_whole_volume", spatial)
