"""The contract between SSL objectives and the one training loop, and the objective registry.

An objective is an ``nn.Module`` that owns the backbone (``self.model``, built by
``kit.models.create_model``) and its own heads, and turns a batch of crops into losses::

    objective = create_objective("swin_trio", model, weights={"rot": 1, "contrast": 1, "recon": 1})
    out = objective(x, seeds)      # x (B, C, D, H, W) float, seeds (B,) int64
    out["loss"].backward()         # out also holds every unweighted term, e.g. out["rot"]

How to add an objective (cross-contrast context restoration, MoCo v3 on 2D slices,
anatomy-hierarchical contrastive, ...): write one module ``kit/ssl/NAME.py`` that

1. subclasses :class:`SSLObjective`, sets ``name`` and ``term_names`` and registers itself with
   ``@register_objective("NAME")`` (and is imported in ``kit/ssl/__init__.py``);
2. builds its heads in ``__init__`` from ``model.feature_dim``, ``model.downsample`` and
   ``model.in_channels`` (e.g. ``kit.models.heads.SSLHead`` or its own projector/predictor), and calls
   :meth:`SSLObjective.freeze_unused` with the heads its active terms use, so that every trainable
   parameter gets a gradient (DDP then runs without ``find_unused_parameters``);
3. in ``forward(x, seeds)`` draws every random choice of sample ``i`` from
   ``sample_rng(seeds[i], TAG, view, stream)`` only (never from global RNGs or from the batch
   composition), so a sample is augmented identically on any number of ranks; computes the
   unweighted terms and returns ``self.combine(terms)``;
4. for terms that couple samples (contrastive negatives), gathers embeddings with
   :func:`gather_across_ranks` so the loss is the global-batch loss (see swin_trio for why the
   gradient scale is then right under DDP's averaging);
5. keeps state that is not trained by the optimizer (a MoCo momentum encoder, a queue) as frozen
   submodules / buffers, updated in :meth:`SSLObjective.on_step_end`, which the loop calls after
   each optimizer step;
6. offers ``preview(x, seeds)`` returning ``{name: numpy array}`` for the notebook figures (``x`` may be
   on any device: move it with ``kit.tensors.to_module_device(x, self.model)``; every array comes out
   through ``kit.tensors.to_numpy``): volumes
   as (B, C, D, H, W) arrays (``'input'`` first, the crops as given; then the network's inputs,
   targets, outputs, masks as (B, 1 or C, ...) booleans, at any spatial size), plus optional
   per-sample values as (B,) arrays; ``kit.viz.plot_ssl_preview`` draws every volume of it;
7. sets the class attribute ``uses_total_steps = True`` if it takes a ``total_steps`` option (a
   schedule over training): kit's pretraining then passes the stage's number of steps;
8. sets ``spatial_dims = 2`` if it trains on 2D slices (moco_v3): notebooks 04-05 then run the 2D
   slice task and slice saliency on its checkpoints instead of the 3D tasks;
9. declares what it needs of the data in one class attribute line each, when it differs from the
   defaults here: ``min_channels`` (cross_contrast: 2 contrasts), ``min_crop`` (mim: 32 voxels),
   ``spatial_dims``. ``kit pretrain`` and ``kit reproduce`` refuse a datalist or profile that cannot
   satisfy them before writing anything (:func:`kit.train.checks.check_objective_fits`).

Registered here: ``swin_trio`` (rotation + inpainting + contrastive), ``cross_contrast`` (per-contrast
coarse dropout and restoration), ``mim`` (masked image modelling) and ``anatomy_hierarchy`` (grid-cell
views, momentum teacher and queue); shared masks live in ``kit.ssl.masking``. The loop needs nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "SSLObjective",
    "register_objective",
    "create_objective",
    "list_objectives",
    "objective_class",
    "sample_rng",
    "check_batch",
    "gather_across_ranks",
]

_REGISTRY: dict[str, type[SSLObjective]] = {}


def register_objective(name: str) -> Callable[[type], type]:
    """Class decorator registering an :class:`SSLObjective` subclass under ``name``.

    Example:
        >>> @register_objective("my_objective")  # doctest: +SKIP
        ... class MyObjective(SSLObjective): ...
    """

    def decorator(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"SSL objective {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def create_objective(name: str, model: nn.Module, **cfg: Any) -> SSLObjective:
    """Build the registered objective ``name`` around ``model`` with options ``cfg``.

    Example:
        >>> from kit.models import create_model
        >>> obj = create_objective("swin_trio", create_model("segresnet_small", 1), mix_prob=0.0)
        >>> obj.name, obj.term_names
        ('swin_trio', ('rot', 'contrast', 'recon'))
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown SSL objective {name!r}; registered: {list_objectives()}")
    return _REGISTRY[name](model, **cfg)


def objective_class(name: str) -> type[SSLObjective]:
    """The class registered as ``name`` (e.g. to read class attributes such as ``uses_total_steps``).

    Example:
        >>> objective_class("swin_trio").term_names
        ('rot', 'contrast', 'recon')
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown SSL objective {name!r}; registered: {list_objectives()}")
    return _REGISTRY[name]


def list_objectives() -> list[str]:
    """Names of the registered objectives, sorted."""
    return sorted(_REGISTRY)


def sample_rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent generator for one sample's seed and a stream path (tag, view, purpose...).

    ``SeedSequence`` hashing keeps different streams of one sample, and nearby seeds, unrelated.

    Example:
        >>> a = sample_rng(7, 1, 0).integers(1000); b = sample_rng(7, 1, 0).integers(1000)
        >>> bool(a == b)
        True
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *map(int, stream)]))


def check_batch(x: torch.Tensor, seeds: torch.Tensor, *, spatial_dims: int = 3, who: str = "SSL") -> list[int]:
    """Validate an SSL batch and return the seeds as Python ints.

    Raises ``ValueError`` unless ``x`` is a floating ``(B, C, D, H, W)`` tensor (``(B, C, H, W)`` slices with
    ``spatial_dims=2``) and ``seeds`` has B integers; ``who`` starts the message.

    Example:
        >>> check_batch(torch.zeros(2, 1, 16, 16, 16), torch.tensor([3, 4]))
        [3, 4]
    """
    layout = "(B, C, D, H, W)" if spatial_dims == 3 else "of slices (B, C, H, W)"
    if x.ndim != spatial_dims + 2 or not x.is_floating_point():
        raise ValueError(f"{who}: batch must be a float tensor {layout}, got {x.dtype} {tuple(x.shape)}")
    seeds = torch.as_tensor(seeds)
    if seeds.ndim != 1 or seeds.shape[0] != x.shape[0] or seeds.is_floating_point():
        raise ValueError(f"{who}: seeds must be an integer tensor of shape ({x.shape[0]},), got {seeds.dtype} {tuple(seeds.shape)}")
    return [int(s) for s in seeds.tolist()]


def gather_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (B, ...) from every rank in rank order, keeping the autograd graph.

    Uses ``torch.distributed.nn.functional.all_gather``, whose backward sums the gradients that
    every rank computes for this rank's slice. Without an initialised process group (or with one
    rank) returns ``t`` unchanged. Every rank must pass the same B.

    Example:
        >>> gather_across_ranks(torch.ones(2, 3)).shape  # single process
        torch.Size([2, 3])
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # Deprecated in favour of a private API (torch.distributed._functional_collectives); still the
        # public autograd-aware all_gather in torch 2.x.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*", category=FutureWarning)
        gathered = all_gather(t.contiguous())
    return torch.cat(gathered, dim=0)


class SSLObjective(nn.Module):
    """Owns the model (backbone) and its heads. ``forward(x, seeds) -> dict of losses``.

    Args:
        model: a ``kit.models`` network (exposes ``encode``, ``feature_dim``, ``downsample``...).
        weights: weight of each term (keys from ``term_names``; missing keys default to 1). A term
            weighted 0 is not computed and its head is frozen.

    ``forward`` contract:
        x: (B, C, D, H, W) float batch of crops; seeds: (B,) int64, one per sample, chosen by the
        loop from the run seed and the sample's global position, so a sample's augmentations are
        the same whether the batch is split across DDP ranks or not.
        Returns ``{'loss': weighted total (scalar, requires grad), '<term>': unweighted scalar per term}``.
    """

    name: str = ""
    term_names: tuple[str, ...] = ()
    #: The loop may pass this to DistributedDataParallel; objectives freeze what they do not use.
    find_unused_parameters: bool = False
    #: 3: trained on volumes (crops); 2: on 2D slices, so its checkpoints feed the 2D slice task.
    spatial_dims: int = 3
    #: Fewest input contrasts (channels) the objective works with (cross_contrast: 2).
    min_channels: int = 1
    #: Smallest crop side in voxels (slice side for a 2D objective) its views and losses need; the
    #: backbone's own ``min_input_size`` and ``downsample`` apply on top (kit.train.checks).
    min_crop: int = 16

    def __init__(self, model: nn.Module, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.model = model
        weights = dict(weights or {})
        unknown = set(weights) - set(self.term_names)
        if unknown:
            raise ValueError(f"{self.name}: unknown loss terms {sorted(unknown)}; terms are {list(self.term_names)}")
        self.weights = {t: float(weights.get(t, 1.0)) for t in self.term_names}
        if any(w < 0 for w in self.weights.values()) or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"{self.name}: weights must be >= 0 with at least one > 0, got {self.weights}")
        self._frozen: list[tuple[str, nn.Parameter]] = []

    @property
    def active_terms(self) -> tuple[str, ...]:
        """Terms with a weight > 0 (the ones computed)."""
        return tuple(t for t in self.term_names if self.weights[t] > 0)

    def combine(self, terms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{'loss': sum_t weight_t * term_t, **terms}`` over the computed terms."""
        if not terms:
            raise ValueError(f"{self.name}: no loss term was computed")
        total = sum(self.weights[t] * v for t, v in terms.items())
        return {"loss": total, **terms}

    def freeze_unused(self, used: Iterable[nn.Module]) -> list[str]:
        """Set ``requires_grad=False`` on every parameter outside the model's encoder and ``used``.

        The SSL losses read only ``model.encode`` and the heads of the active terms; freezing the rest
        (e.g. the segmentation decoder) saves optimizer memory and lets DDP run without
        ``find_unused_parameters``. :meth:`unfreeze` undoes it. Returns the frozen parameter names.
        """
        used_ids = {id(p) for m in used for p in m.parameters()}
        prefixes = tuple(f"model.{p}" for p in getattr(self.model, "encoder_prefixes", ()))
        for pname, param in self.named_parameters():
            if param.requires_grad and id(param) not in used_ids and not pname.startswith(prefixes):
                param.requires_grad_(False)
                self._frozen.append((pname, param))
        return [n for n, _ in self._frozen]

    def unfreeze(self) -> None:
        """Restore ``requires_grad=True`` on what :meth:`freeze_unused` froze (e.g. before fine-tuning the same model)."""
        for _, param in self._frozen:
            param.requires_grad_(True)
        self._frozen.clear()

    def on_step_end(self, step: int) -> None:
        """Hook the loop calls after each optimizer step (momentum encoders, schedules); default: nothing."""

    @property
    def config(self) -> dict[str, Any]:
        """Plain-value description for logs and checkpoints (subclasses add their options)."""
        return {"name": self.name, "weights": dict(self.weights)}

    def checkpoint_extra(self) -> dict[str, Any]:
        """What to keep in a checkpoint's ``extra`` besides the model: the objective's config and the
        state of its own (non-model) parameters and buffers, e.g. for resuming pretraining."""
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}
        return {"ssl_objective": self.config, "ssl_state": own}

    def load_checkpoint_extra(self, extra: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_extra` saved (strict: every head key must be present)."""
        own = extra["ssl_state"]
        missing = [k for k in self.state_dict() if not k.startswith("model.") and k not in own]
        unexpected = [k for k in own if k not in self.state_dict()]
        if missing or unexpected:
            raise KeyError(f"{self.name}: SSL head state does not fit (missing {missing}, unexpected {unexpected})")
        self.load_state_dict({**{f"model.{k}": v for k, v in self.model.state_dict().items()}, **own}, strict=True)

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def preview(self, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, np.ndarray]:  # pragma: no cover
        """Numpy arrays for the notebook's figures: ``{'input': x as (B, C, D, H, W), <view, target,
        output or mask>: (B, C', D', H', W'), <per-sample value>: (B,)}`` (see the module doc, item 6)."""
        raise NotImplementedError
