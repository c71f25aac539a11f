"""A CPU stand-in for a GPU in tests: tensors flagged as living "on the accelerator" raise where CUDA would.

CUDA bugs of the kind "a CPU input meets CUDA weights" or "``.numpy()`` on a CUDA tensor" cannot be
seen by CPU-only tests. Under :class:`AcceleratorShim` (a ``TorchFunctionMode``), tensors of type
:class:`OnAccelerator` hold ordinary CPU data but behave like CUDA tensors:

- an op mixing them with plain CPU tensors (other than 0-dim ones, or a copy) raises RuntimeError;
- ``.numpy()`` / ``np.asarray`` on them raises TypeError;
- ``.cpu()`` / ``.to('cpu')`` returns a plain tensor; their ``.device`` reads ``ACCELERATOR``, and
  ``.to(ACCELERATOR)`` or ``device=ACCELERATOR`` in a factory makes a flagged tensor.

``ACCELERATOR`` is ``torch.device('meta')`` only as a distinct device object (no meta tensor is
ever made: the shim intercepts every use of it). :func:`to_accelerator` moves a module's
parameters and buffers there, like ``module.cuda()``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

ACCELERATOR = torch.device("meta")
_CPU = torch.device("cpu")
# Ops that legitimately take tensors on two devices (a cross-device copy).
_MAY_MIX = (Tensor.copy_, Tensor.__setitem__)


class OnAccelerator(Tensor):
    """CPU data flagged as living on the (simulated) accelerator."""

    __torch_function__ = torch._C._disabled_torch_function_impl


def _flag(t):
    return t.as_subclass(OnAccelerator) if type(t) is Tensor else t


def _unflag(t):
    return t.as_subclass(Tensor) if isinstance(t, OnAccelerator) else t


def _is_accelerator(device) -> bool:
    return isinstance(device, (torch.device, str)) and torch.device(device) == ACCELERATOR


class AcceleratorShim(TorchFunctionMode):
    """Within this mode, :class:`OnAccelerator` tensors fail the way CUDA tensors fail."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, Tensor)]
        on_accelerator = any(isinstance(t, OnAccelerator) for t in tensors)
        if on_accelerator and func in (Tensor.numpy, Tensor.__array__):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")
        if func == Tensor.device.__get__:
            return ACCELERATOR if on_accelerator else func(*args, **kwargs)
        if func is Tensor.cpu:
            return _unflag(func(*args, **kwargs))
        if func is Tensor.to:
            target = None
            for a in (*args[1:], kwargs.get("device")):
                if isinstance(a, (torch.device, str)):
                    target = torch.device(a)
                elif isinstance(a, Tensor):
                    target = ACCELERATOR if isinstance(a, OnAccelerator) else _CPU
            if target is not None:
                args = tuple(_CPU if _is_accelerator(a) else a for a in args)
                if "device" in kwargs:
                    kwargs = {**kwargs, "device": _CPU}
                out = func(*args, **kwargs)
                return _flag(out) if target == ACCELERATOR else _unflag(out)
        elif _is_accelerator(kwargs.get("device")):  # a factory: torch.zeros(..., device=ACCELERATOR)
            out = func(*args, **{**kwargs, "device": _CPU})
            return tree_map(lambda t: _flag(t) if isinstance(t, Tensor) else t, out)
        if on_accelerator and func not in _MAY_MIX:
            cpu = [t for t in tensors if not isinstance(t, OnAccelerator) and t.ndim > 0]
            if cpu:
                name = getattr(func, "__name__", str(func))
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
                    f"({name} got a CPU tensor of shape {tuple(cpu[0].shape)})"
                )
        out = func(*args, **kwargs)
        if on_accelerator:
            out = tree_map(lambda t: _flag(t) if type(t) is Tensor else t, out)
        return out


def to_accelerator(module: nn.Module) -> nn.Module:
    """Flag every parameter and buffer of ``module`` as on the accelerator (in place), like ``.cuda()``."""
    with AcceleratorShim():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None:
                    flagged = nn.Parameter(param.detach().as_subclass(OnAccelerator), requires_grad=param.requires_grad)
                    sub._parameters[name] = flagged
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    sub._buffers[name] = buffer.as_subclass(OnAccelerator)
    return module
