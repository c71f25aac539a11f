"""Crossing devices: the one path from a tensor (on any device, any dtype) to numpy, and back to a model.

Every figure, table or ``numpy`` array the kit makes from a tensor goes through :func:`to_numpy`, so
a model trained on a GPU can be previewed and plotted by the same code as on a CPU (``.numpy()`` on
a CUDA tensor raises; numpy has no bfloat16). :func:`module_device` and :func:`to_module_device`
move inputs to where a model's weights live, so callers may pass CPU tensors to a CUDA model.

Example:
    >>> import torch
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype.name
    'float32'
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["eval_mode", "to_numpy", "module_device", "to_module_device"]

#: Half-precision dtypes numpy cannot hold (bfloat16) or that figures should not keep (float16).
_WIDENED = (torch.bfloat16, torch.float16)


def to_numpy(t: Any) -> np.ndarray:
    """A numpy copy (or view, for a CPU tensor) of ``t``: detached, on the CPU, bf16/fp16 as float32.

    Args:
        t: a tensor on any device (MONAI MetaTensors included), or anything ``np.asarray`` takes.

    Returns:
        ``np.ndarray`` of the same shape; float32 for half-precision tensors, otherwise the tensor's dtype.

    Example:
        >>> to_numpy(torch.arange(3, requires_grad=False)).tolist()
        [0, 1, 2]
        >>> to_numpy(torch.zeros(2, 2, requires_grad=True)).shape
        (2, 2)
    """
    if not isinstance(t, torch.Tensor):
        return np.asarray(t)
    if hasattr(t, "as_tensor"):  # a MONAI MetaTensor: the plain tensor
        t = t.as_tensor()
    t = t.detach().cpu()
    if t.dtype in _WIDENED:
        t = t.float()
    return t.numpy()


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU for a module without either.

    Example:
        >>> module_device(nn.Linear(2, 2))
        device(type='cpu')
    """
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def to_module_device(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x`` on ``module``'s device (no copy when it is already there).

    Example:
        >>> to_module_device(torch.zeros(1, 2), nn.Linear(2, 2)).device
        device(type='cpu')
    """
    return x.to(module_device(module), non_blocking=True)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module.eval()`` inside the block, its previous train/eval mode restored after (also on error).

    Example:
        >>> net = torch.nn.Dropout()
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
