"""Device and mixed-precision choices shared by training, evaluation and inference.

Kept apart from :mod:`kit.train` so that inference (:mod:`kit.predict`) depends on models and data only.

Example:
    >>> resolve_device("cpu"), resolve_amp("auto", torch.device("cpu")) is None
    (device(type='cpu'), True)
"""

from __future__ import annotations

import torch

__all__ = ["AMP_CHOICES", "resolve_device", "resolve_amp"]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``device`` in {'auto', 'cpu', 'cuda'} on local process ``local_rank``.

    'auto' picks CUDA when it is available. 'cuda' without a GPU raises instead of silently
    falling back, because a run configured for a GPU would take hours on a CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested but torch sees no CUDA GPU (use device='auto' or 'cpu')")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")



def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means full float32.

    Example:
        >>> resolve_amp("auto", torch.device("cpu")) is None
        True
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16
