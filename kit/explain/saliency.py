"""Voxel saliency maps of 3D classifiers and segmenters (and pixel maps of 2D slice classifiers),
one function for every method.

:func:`saliency_map` explains one input ``x`` of shape ``(1, C, X, Y, Z)`` and returns a float32
numpy map ``(X, Y, Z)`` on the input grid, with HIGHER = MORE IMPORTANT for every method. A 2D
classifier's slice ``(1, C, H, W)`` gets a map ``(H, W)`` the same way (MONAI's saliency classes
work in 2D too; CAMs are then upsampled bilinearly):

- ``vanilla``: |d score / d x| (monai.visualize.VanillaGrad); channels: max of abs.
- ``smoothgrad``: magnitude of the gradients of noisy copies, sqrt(sum g^2) / n
  (monai.visualize.SmoothGrad, seeded); channels: max of abs.
- ``integrated_gradients``: (x - 0) * mean gradient along the straight path from a zero
  (background) baseline (captum, optional); channels: sum of abs.
- ``gradcam``: ReLU(sum_c mean(grad_c) * A_c) at ``target_layer`` (monai.visualize.GradCAM),
  trilinearly upsampled to the input grid; one map (no channel axis).
- ``gradcampp``: Grad-CAM++ (monai.visualize.GradCAMpp), as above.
- ``occlusion``: drop of the target score when a (Gaussian) patch around the voxel is occluded
  (monai.visualize.OcclusionSensitivity); all channels are occluded together, one map.

The *score* explained is the target logit for the gradient and CAM methods and, for occlusion, the
target probability by default (sigmoid for one logit, softmax for several; ``score='logit'`` to
use the logit). ``target=None`` explains the predicted class (argmax of the logits; the single
logit of a binary K=1 classifier).

Every method runs the model in eval mode and leaves it as it found it: per-module training flags,
``requires_grad`` flags, parameter values and ``.grad`` are restored and the hooks added for
Grad-CAM are removed (MONAI's own ``ModelWithHooks`` never removes its hooks, and its full backward
hook breaks on in-place ops such as ``x += identity``; the CAMs here capture the layer gradient
with a tensor hook instead and reuse MONAI's CAM arithmetic). The input tensor is not modified.
Parameters are frozen while the map is computed, so no gradient is accumulated into them.
SmoothGrad draws its noise from a private generator state seeded by ``seed`` (the global torch RNG
is left as it was), so every method is deterministic.

Segmentation models ``(B, C, X, Y, Z) -> (B, R, X, Y, Z)`` are explained through
:class:`SegmentationScore`, which reduces one region's logits to one score per sample.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.rand(1, 1, 16, 16, 16)
    >>> saliency_map(net, x, "vanilla").shape
    (16, 16, 16)
    >>> default_target_layer(net)
    '0'
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.tensors import to_numpy

__all__ = [
    "SALIENCY_METHODS",
    "SegmentationScore",
    "default_target_layer",
    "saliency_map",
]

#: Names accepted by :func:`saliency_map`.
SALIENCY_METHODS: tuple[str, ...] = (
    "vanilla",
    "smoothgrad",
    "integrated_gradients",
    "gradcam",
    "gradcampp",
    "occlusion",
)

# Keyword arguments each method accepts (anything else is a TypeError, so typos do not pass silently).
_METHOD_KWARGS: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "smoothgrad": {"n_samples": 25, "stdev_spread": 0.15, "seed": 0},
    "integrated_gradients": {"n_steps": 32, "internal_batch_size": 8},
    "gradcam": {},
    "gradcampp": {},
    "occlusion": {"mask_size": 16, "overlap": 0.6, "mode": "gaussian", "n_batch": 16, "score": "probability"},
}

_GLOBAL_POOLS = (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_CONVS = (nn.Conv3d, nn.Conv2d)  # the CAM layer: the last convolution of a 3D or a 2D network


# ----------------------------------------------------------------------------------------------
# Segmentation models
# ----------------------------------------------------------------------------------------------
class SegmentationScore(nn.Module):
    """Wrap a segmentation model so that one region's logits become one score per sample.

    ``model(x)`` must return region logits ``(B, R, X, Y, Z)``; the wrapper returns ``(B, 1)`` so
    every saliency method (target 0) applies unchanged.

    Args:
        model: the segmentation network.
        region_index: which output channel (region) to explain, e.g. 1 for WT in TC/WT/ET outputs.
        reduction: ``'mean_logit_in_region'`` (default): mean logit of the region over the voxels of
            the *predicted* region (logit > ``threshold`` for ``activation='sigmoid'``; argmax ==
            ``region_index`` for ``'softmax'``). The region mask is a constant for gradients: the
            map explains "why is the predicted lesion called lesion". If the predicted region is
            empty the mean over the whole volume is used, so the score stays defined.
            ``'probability_sum'``: sum of the region's sigmoid (or softmax) probabilities, i.e. the
            expected predicted volume in voxels; smooth, needs no region, suits occlusion.
        activation: ``'sigmoid'`` (multi-label outputs, e.g. BraTS TC/WT/ET) or ``'softmax'``.
        threshold: logit threshold of the predicted region for ``'sigmoid'`` (0.0 = probability 0.5).
        region: optional fixed region mask ``(X, Y, Z)`` bool; see :meth:`with_region_from`.
            :func:`saliency_map` fixes the region from the explained input automatically, so that
            occluded copies and integrated-gradients path points are scored on the same voxels.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> seg = nn.Conv3d(1, 3, 3, padding=1)
        >>> score = SegmentationScore(seg, region_index=1)
        >>> score(torch.rand(2, 1, 8, 8, 8)).shape
        torch.Size([2, 1])
    """

    REDUCTIONS = ("mean_logit_in_region", "probability_sum")

    def __init__(
        self,
        model: nn.Module,
        region_index: int,
        reduction: str = "mean_logit_in_region",
        activation: str = "sigmoid",
        threshold: float = 0.0,
        region: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"SegmentationScore: reduction must be one of {self.REDUCTIONS}, got {reduction!r}")
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"SegmentationScore: activation must be 'sigmoid' or 'softmax', got {activation!r}")
        self.model = model
        self.region_index = int(region_index)
        self.reduction = reduction
        self.activation = activation
        self.threshold = float(threshold)
        self.region: torch.Tensor | None = None
        if region is not None:
            self.region = torch.as_tensor(np.asarray(region), dtype=torch.bool)
        if self.region is not None and self.region.ndim != 3:
            raise ValueError(f"SegmentationScore: region must be (X, Y, Z), got shape {tuple(self.region.shape)}")

    def _region_logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if logits.ndim != 5:
            raise ValueError(
                "SegmentationScore: the model must return region logits (B, R, X, Y, Z), "
                f"got shape {tuple(logits.shape)}"
            )
        if not 0 <= self.region_index < logits.shape[1]:
            raise ValueError(
                f"SegmentationScore: region_index {self.region_index} out of range for {logits.shape[1]} regions"
            )
        return logits

    def predicted_region(self, logits: torch.Tensor) -> torch.Tensor:
        """Bool mask ``(B, X, Y, Z)`` of the predicted region from logits ``(B, R, X, Y, Z)`` (no gradient)."""
        logits = logits.detach()
        if self.activation == "sigmoid":
            return logits[:, self.region_index] > self.threshold
        return logits.argmax(dim=1) == self.region_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, 1)`` from inputs ``(B, C, X, Y, Z)``."""
        logits = self._region_logits(x)
        region_logit = logits[:, self.region_index]
        if self.reduction == "probability_sum":
            probs = region_logit.sigmoid() if self.activation == "sigmoid" else logits.softmax(1)[:, self.region_index]
            return probs.flatten(1).sum(1, keepdim=True)
        if self.region is not None:
            if tuple(self.region.shape) != tuple(region_logit.shape[1:]):
                raise ValueError(
                    f"SegmentationScore: fixed region shape {tuple(self.region.shape)} "
                    f"!= output grid {tuple(region_logit.shape[1:])}"
                )
            mask = self.region.to(region_logit.device)[None].expand_as(region_logit)
        else:
            mask = self.predicted_region(logits)
        mask = mask.to(region_logit.dtype)
        count = mask.flatten(1).sum(1)
        inside = (region_logit * mask).flatten(1).sum(1) / count.clamp_min(1.0)
        # empty prediction: fall back to the mean over the volume so the score is still defined
        score = torch.where(count > 0, inside, region_logit.flatten(1).mean(1))
        return score[:, None]

    @torch.no_grad()
    def with_region_from(self, x: torch.Tensor) -> "SegmentationScore":
        """A copy (same underlying model) whose region is fixed to the prediction for ``x`` (1, C, X, Y, Z).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> fixed = SegmentationScore(nn.Conv3d(1, 2, 1), 0).with_region_from(torch.rand(1, 1, 4, 4, 4))
            >>> fixed.region.shape
            torch.Size([4, 4, 4])
        """
        with _frozen_model(self.model):
            region = self.predicted_region(self._region_logits(x))[0].cpu()
        return SegmentationScore(self.model, self.region_index, self.reduction, self.activation, self.threshold, region)


# ----------------------------------------------------------------------------------------------
# Target layer for CAM methods
# ----------------------------------------------------------------------------------------------
def default_target_layer(model: nn.Module, example_input: torch.Tensor | None = None) -> str:
    """Name of the last convolution (3D, or 2D for a slice classifier) before global pooling: the usual Grad-CAM layer.

    With ``example_input`` (1, C, X, Y, Z) the model is run once (no gradients) and the choice
    follows *execution* order: the last ``nn.Conv3d`` (``nn.Conv2d``) whose output still has more than one voxel
    (a conv after global pooling, or a registered but unused decoder, is skipped). Without it the
    *registration* order is used: the last ``nn.Conv3d`` registered before the first
    ``nn.AdaptiveAvgPool3d`` / ``nn.AdaptiveMaxPool3d`` (or the last one if there is none).

    Raises:
        ValueError: the model has no (executed) ``nn.Conv3d``; pass ``target_layer`` explicitly.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv3d(2, 4, 3), nn.AdaptiveAvgPool3d(1),
        ...                     nn.Conv3d(4, 3, 1), nn.Flatten())
        >>> default_target_layer(net)
        '1'
    """
    if example_input is not None:
        executed: list[str] = []
        handles = []
        for name, module in model.named_modules():
            if isinstance(module, _CONVS):

                def record(_m, _inp, out, name=name):
                    if isinstance(out, torch.Tensor) and out.ndim in (4, 5) and out.shape[2:].numel() > 1:
                        executed.append(name)

                handles.append(module.register_forward_hook(record))
        try:
            with _frozen_model(model), torch.no_grad():
                model(example_input)
        finally:
            for handle in handles:
                handle.remove()
        if executed:
            return executed[-1]
        raise ValueError(
            f"default_target_layer: {type(model).__name__} ran no nn.Conv3d or nn.Conv2d with a spatial output; "
            "pass target_layer= (a name from model.named_modules())"
        )
    last = None
    for name, module in model.named_modules():
        if isinstance(module, _GLOBAL_POOLS) and last is not None:
            return last
        if isinstance(module, _CONVS):
            last = name
    if last is None:
        raise ValueError(
            f"default_target_layer: {type(model).__name__} has no nn.Conv3d or nn.Conv2d; pass target_layer= "
            "(a name from model.named_modules())"
        )
    return last


def _resolve_layer(model: nn.Module, target_layer: str) -> str:
    names = {name for name, _ in model.named_modules()}
    if target_layer in names:
        return target_layer
    # allow the inner model's names for a SegmentationScore wrapper
    if isinstance(model, SegmentationScore) and f"model.{target_layer}" in names:
        return f"model.{target_layer}"
    convs = [name for name, m in model.named_modules() if isinstance(m, _CONVS)]
    raise ValueError(
        f"target_layer {target_layer!r} is not a module of {type(model).__name__}; its convolutions: {convs[-10:]}"
    )


# ----------------------------------------------------------------------------------------------
# Leave the model as it was found
# ----------------------------------------------------------------------------------------------
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def _frozen_model(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters; restore training flags, requires_grad, grads, hooks, ``inplace``."""
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks = [{attr: dict(getattr(m, attr, {})) for attr in _HOOK_DICTS} for m in modules]
    full_backward = [m._is_full_backward_hook for m in modules]
    inplace = [m.__dict__.get("inplace") for m in modules]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, flag, saved, full, inp in zip(modules, training, hooks, full_backward, inplace):
            m.training = flag
            for attr, before in saved.items():
                current = getattr(m, attr, None)
                if current is not None:
                    for key in [k for k in current if k not in before]:
                        del current[key]
            m._is_full_backward_hook = full
            if inp is not None:
                m.__dict__["inplace"] = inp
        for p, flag, grad in zip(params, requires_grad, grads):
            p.requires_grad_(flag)
            p.grad = grad


# ----------------------------------------------------------------------------------------------
# Methods: each returns a (X, Y, Z) torch tensor, higher = more important
# ----------------------------------------------------------------------------------------------
def _input_leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _vanilla(model, x, target, **_):
    from monai.visualize import VanillaGrad

    grad = VanillaGrad(model)(_input_leaf(x), index=target)
    return grad.abs().amax(dim=1)[0]


def _smoothgrad(model, x, target, n_samples, stdev_spread, seed):
    from monai.visualize import SmoothGrad

    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        grad = SmoothGrad(model, stdev_spread=stdev_spread, n_samples=int(n_samples), magnitude=True, verbose=False)(
            x.detach().clone(), index=target
        )
    return grad.abs().amax(dim=1)[0]


def _integrated_gradients(model, x, target, n_steps, internal_batch_size):
    try:
        from captum.attr import IntegratedGradients
    except ImportError as err:  # optional dependency
        raise ImportError(
            "saliency method 'integrated_gradients' needs captum: `pip install captum` "
            "(or `pip install brainfm-kit[explain]`)"
        ) from err
    xin = _input_leaf(x)
    attr = IntegratedGradients(model).attribute(
        xin,
        baselines=torch.zeros_like(xin),
        target=target,
        n_steps=int(n_steps),
        internal_batch_size=internal_batch_size,
    )
    return attr.detach().abs().sum(dim=1)[0]


def _tensor_hook_model(model: nn.Module, target_layer: str):
    """MONAI ``ModelWithHooks`` that captures the layer's gradient with a tensor hook.

    MONAI registers a *full* module backward hook, which makes autograd refuse any later in-place
    op on the layer's output (``x += identity`` in ResNet/SegResNet blocks, ``ReLU(inplace=True)``).
    Here a forward hook stores a copy of the activation, hooks the gradient on the output tensor
    and hands the rest of the network a clone, so in-place ops downstream are harmless.
    """
    from monai.visualize.class_activation_maps import ModelWithHooks

    class TensorHookModel(ModelWithHooks):
        def __init__(self) -> None:  # no super().__init__: it would register the module hooks
            self.model = model
            self.target_layers = (target_layer,)
            self.gradients: dict[str, torch.Tensor] = {}
            self.activations: dict[str, torch.Tensor] = {}
            self.score = None
            self.class_idx = None
            self.register_forward = self.register_backward = True

            def capture(_module, _inputs, output):
                if not isinstance(output, torch.Tensor):
                    raise ValueError(f"target_layer {target_layer!r} must return a tensor, got {type(output).__name__}")
                self.activations[target_layer] = output.detach().clone()
                if output.requires_grad:
                    output.register_hook(lambda grad: self.gradients.__setitem__(target_layer, grad))
                return output.clone()

            model.get_submodule(target_layer).register_forward_hook(capture)

    return TensorHookModel()


def _cam(cam_class, model, x, target, target_layer):
    # identity postprocessing: MONAI's default_normalizer maps (min, max) -> (1, 0), i.e. it flips the map
    hooked = _tensor_hook_model(model, target_layer)
    cam = cam_class(nn_module=hooked, target_layers=target_layer, postprocessing=lambda t: t)
    # parameters are frozen, so the input must require grad for the backward hook to fire
    out = cam(_input_leaf(x), class_idx=target)
    if tuple(out.shape[2:]) != tuple(x.shape[2:]):  # MONAI upsamples trilinearly; guard the contract
        raise RuntimeError(f"{cam_class.__name__} returned grid {tuple(out.shape[2:])} for input {tuple(x.shape[2:])}")
    return out.detach()[0, 0]


def _gradcam(model, x, target, target_layer, **_):
    from monai.visualize import GradCAM

    return _cam(GradCAM, model, x, target, target_layer)


def _gradcampp(model, x, target, target_layer, **_):
    from monai.visualize import GradCAMpp

    return _cam(GradCAMpp, model, x, target, target_layer)


def _occlusion(model, x, target, mask_size, overlap, mode, n_batch, score):
    from monai.visualize import OcclusionSensitivity

    if score not in ("probability", "logit"):
        raise ValueError(f"occlusion: score must be 'probability' or 'logit', got {score!r}")

    def activate(logits: torch.Tensor) -> torch.Tensor:
        # explicit, because MONAI's activate=True picks sigmoid/softmax from the INPUT channel count
        if score == "logit":
            return logits
        return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)

    occluder = OcclusionSensitivity(
        model, mask_size=mask_size, n_batch=int(n_batch), verbose=False, mode=mode, overlap=overlap, activate=activate
    )
    with torch.no_grad(), warnings.catch_warnings():
        # MONAI 1.6 indexes with lists of slices internally; torch warns on every call
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        reference = activate(model(x))[0, target]
        # MONAI 1.6 returns (B, K, X, Y, Z): the class-K score with a patch around each voxel
        # occluded (lower = more important). Saliency = drop = reference - occluded score.
        occluded, _ = occluder(x.detach())
    if occluded.ndim != x.ndim or tuple(occluded.shape[2:]) != tuple(x.shape[2:]):
        raise RuntimeError(f"OcclusionSensitivity returned shape {tuple(occluded.shape)} for input {tuple(x.shape)}")
    return (reference - occluded[0, target]).detach()


_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "vanilla": _vanilla,
    "smoothgrad": _smoothgrad,
    "integrated_gradients": _integrated_gradients,
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "occlusion": _occlusion,
}


def saliency_map(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: int | None = None,
    *,
    target_layer: str | None = None,
    **kw: Any,
) -> np.ndarray:
    """Saliency of ``model``'s ``target`` score for one input, on the input grid.

    Args:
        model: classifier ``(B, C, X, Y, Z) -> (B, K)`` logits (K=1 binary or K classes), or a
            :class:`SegmentationScore` around a segmenter; or a 2D slice classifier ``(B, C, H, W) -> (B, K)``.
        x: input ``(1, C, X, Y, Z)`` (2D: ``(1, C, H, W)``) float tensor (moved to the model's device; not modified).
        method: one of :data:`SALIENCY_METHODS` (see the module docstring for each definition).
        target: class index to explain; ``None`` = the predicted class (argmax; 0 when K=1).
        target_layer: module name for ``gradcam`` / ``gradcampp`` (``dict(model.named_modules())``
            keys; for a SegmentationScore the inner model's names work too). Default:
            :func:`default_target_layer` traced on ``x``.
        **kw: method options, with defaults:
            smoothgrad ``n_samples=25, stdev_spread=0.15`` (noise sd as a fraction of the
            intensity range), ``seed=0``; integrated_gradients ``n_steps=32,
            internal_batch_size=8``; occlusion ``mask_size=16`` (voxels, int or per axis),
            ``overlap=0.6``, ``mode='gaussian'`` (MONAI: patch multiplied by 1 - Gaussian, i.e.
            pulled towards 0 = background; or a float fill value, 'mean_patch', 'mean_img'),
            ``n_batch=16``, ``score='probability'`` or ``'logit'`` (for a SegmentationScore the
            default is ``'logit'``: its output is used as is, since a sigmoid of a volume-sized
            sum would saturate).

    Returns:
        float32 array ``(X, Y, Z)`` (2D: ``(H, W)``); higher = more important. Gradient methods and CAMs are >= 0;
        occlusion can be negative where occluding *raises* the score. Not normalised (the
        localisation metrics are scale-free).

    Raises:
        ValueError: unknown method (lists the names), bad input shape, target out of range.
        TypeError: an option the method does not take.
        ImportError: ``integrated_gradients`` without captum installed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
        ...                     nn.Flatten(), nn.Linear(2, 1))
        >>> m = saliency_map(net, torch.rand(1, 1, 12, 12, 12), "gradcam")
        >>> m.shape, m.dtype.name
        ((12, 12, 12), 'float32')
        >>> net2d = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                       nn.Flatten(), nn.Linear(4, 1))
        >>> saliency_map(net2d, torch.rand(1, 2, 16, 16), "gradcam").shape
        (16, 16)
    """
    if method not in _METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(SALIENCY_METHODS)}")
    unknown = set(kw) - set(_METHOD_KWARGS[method])
    if unknown:
        raise TypeError(
            f"saliency method {method!r} got unexpected options {sorted(unknown)}; "
            f"it takes {sorted(_METHOD_KWARGS[method])}"
        )
    options = {**_METHOD_KWARGS[method], **kw}
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5) or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"saliency_map: x must be a (1, C, X, Y, Z) tensor (2D: (1, C, H, W)), got {shape}")
    convs = {3 if isinstance(m, nn.Conv3d) else 2 for m in model.modules() if isinstance(m, _CONVS)}
    if len(convs) == 1 and x.ndim - 2 not in convs:  # e.g. a volume's channel dropped by mistake
        want = "(1, C, X, Y, Z) volume" if convs == {3} else "(1, C, H, W) slice"
        raise ValueError(f"saliency_map: {type(model).__name__} convolves in {convs.pop()}D; x must be a {want}, "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"saliency_map: x must be a float tensor, got {x.dtype}")
    param = next(model.parameters(), None)
    x = x.detach().to(param.device if param is not None else x.device)

    if isinstance(model, SegmentationScore):
        if model.reduction == "mean_logit_in_region" and model.region is None:
            model = model.with_region_from(x)
        if method == "occlusion" and "score" not in kw:
            options["score"] = "logit"  # the wrapper's score is already the quantity to explain

    with _frozen_model(model):
        with torch.no_grad():
            logits = model(x)
        if logits.ndim != 2 or logits.shape[0] != 1:
            raise ValueError(
                f"saliency_map: {type(model).__name__} must return logits (1, K), got shape {tuple(logits.shape)}; "
                "wrap segmentation models in SegmentationScore"
            )
        n_classes = logits.shape[1]
        if target is None:
            target = int(logits.argmax(dim=1).item())
        if not 0 <= int(target) < n_classes:
            raise ValueError(f"saliency_map: target {target} out of range for {n_classes} logits")
        target = int(target)
        if method in ("gradcam", "gradcampp"):
            layer = default_target_layer(model, x) if target_layer is None else _resolve_layer(model, target_layer)
            options["target_layer"] = layer
        result = _METHODS[method](model, x, target, **options)
    out = to_numpy(result.float())
    if out.shape != tuple(x.shape[2:]):
        raise RuntimeError(f"saliency method {method!r} produced shape {out.shape}, expected {tuple(x.shape[2:])}")
    return np.ascontiguousarray(out, dtype=np.float32)
