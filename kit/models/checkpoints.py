"""Checkpoints: atomic save, safe load, loud weight loading, and input-channel transfer.

File format (``torch.save`` of a plain dict, readable with ``torch.load(weights_only=True)``)::

    {'format': 'brainfm-kit/1',
     'model_config': {...},          # create_model(**model_config) rebuilds the network
     'state_dict': {key: Tensor},    # the network's weights (CPU tensors)
     'extra': {...}}                 # optimizer/scheduler state, step, RNG states, metrics,
                                     # 'modalities' (input channel names, in order), ...

``extra`` may hold tensors, numbers, strings, None and dicts/lists/tuples of those; a value that
``weights_only`` loading refuses (a numpy array, e.g. ``np.random.get_state()``) is rejected at save
time, naming its key, so that no unloadable checkpoint is ever written.

Fixes for the defects users hit with the public BrainSegFounder code (github.com/lab-smile/BrainSegFounder):
weights are never loaded with a silent ``strict=False`` (:func:`load_weights` raises on any
missing, unexpected or shape-mismatched key that was not explicitly allowed and reports what it did);
the ``module.`` / ``_orig_mod.`` / ``swinViT.`` prefix differences between releases are normalised;
a change of input contrasts transfers the pretrained first layer
(:func:`kit.models.transfer.transfer_input_channels`) instead of re-initialising it.

Every transfer of weights between checkpoints and networks (another set of input contrasts, encoder
only, a new output layer) goes through :func:`kit.models.transfer.init_from_checkpoint`.

Example:
    >>> import tempfile
    >>> from kit.models import create_model
    >>> net = create_model("segresnet_small", in_channels=2)
    >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "ckpt.pt", model_config=net.config, state_dict=net.state_dict(),
    ...                     extra={"modalities": ["t1", "flair"], "step": 10})
    >>> load_checkpoint(p)["extra"]["modalities"]
    ['t1', 'flair']
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kit.models.backbones import create_model, list_models
from kit.tempfiles import atomic_write, remove_stale_temporaries

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "KeyMismatchError",
    "LoadReport",
    "save_checkpoint",
    "load_checkpoint",
    "read_state_dict",
    "state_dict_of",
    "normalize_state_dict",
    "load_weights",
    "model_from_config",
]

CHECKPOINT_FORMAT = "brainfm-kit/1"
_REQUIRED_KEYS = ("format", "model_config", "state_dict", "extra")
# Wrappers that prepend to every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Spellings of the Swin encoder prefix seen in other ports / releases.
_KEY_ALIASES = {"swin_vit.": "swinViT.", "swinvit.": "swinViT."}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or is not a brainfm-kit checkpoint."""


class KeyMismatchError(ValueError):
    """State-dict keys that do not fit the model and were not explicitly allowed.

    Attributes ``missing``, ``unexpected`` (lists of keys) and ``shape_mismatched``
    (list of ``(key, checkpoint_shape, model_shape)``).
    """

    def __init__(self, missing: list[str], unexpected: list[str], shape_mismatched: list[tuple], notes: list[str]):
        self.missing, self.unexpected, self.shape_mismatched = missing, unexpected, shape_mismatched

        def listing(keys: Sequence[Any], limit: int = 20) -> str:
            shown = ", ".join(str(k) for k in keys[:limit])
            return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (in the model, not in the weights): {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (in the weights, not in the model): {listing(unexpected)}")
        if shape_mismatched:
            shapes = [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in shape_mismatched]
            parts.append(f"{len(shape_mismatched)} with another shape: {listing(shapes)}")
        if notes:
            parts.append("key normalisation applied: " + "; ".join(notes))
        super().__init__(
            "weights do not fit the model; "
            + " | ".join(parts)
            + " (pass allow_missing / allow_unexpected patterns to accept them deliberately)"
        )


@dataclass
class LoadReport:
    """What :func:`load_weights` / :func:`kit.models.transfer.init_from_checkpoint` did.

    Attributes:
        loaded: model keys whose values came from the weights.
        missing: model keys left at their initial values (allowed by ``allow_missing``).
        unexpected: weight keys not used (allowed by ``allow_unexpected``).
        shape_mismatched: ``(key, weights_shape, model_shape)`` left at init (allowed by ``allow_missing``).
        dropped: weight keys deliberately not loaded (e.g. the decoder with ``encoder_only=True``).
        transferred: input-layer keys whose channels were mapped by :func:`transfer_input_channels`.
        notes: key renamings and other decisions, in words.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    transferred: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        """Every key that was not loaded, whatever the reason."""
        return self.missing + self.unexpected + [k for k, _, _ in self.shape_mismatched] + self.dropped

    def summary(self) -> str:
        """One line per category, for notebooks and logs."""
        lines = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "dropped", "transferred"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name} ({len(keys)}): " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        if self.shape_mismatched:
            lines.append(f"shape_mismatched ({len(self.shape_mismatched)}): " + ", ".join(k for k, _, _ in self.shape_mismatched[:8]))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- save / load


def _first_refused(obj: Any, path: str = "extra") -> str | None:
    """Best-effort location of a value that weights_only loading refuses (for the error message)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found = _first_refused(v, f"{path}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _first_refused(v, f"{path}[{i}]")
            if found:
                return found
        return None
    if obj is None or isinstance(obj, (torch.Tensor, bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)):
        return None
    return f"{path} ({type(obj).__module__}.{type(obj).__name__})"


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: a temp file in the same folder, verified, then ``os.replace``.

    A crash or an error mid-write leaves any previous file at ``path`` intact and no temp file behind.

    Args:
        path: destination file (parent folders are created).
        model_config: ``model.config`` (must contain 'name').
        state_dict: network weights; tensors are stored detached on the CPU, values bit-exact.
        extra: anything else to keep (optimizer/scheduler state, step, RNG states as tensors or
            lists, metrics, 'modalities'); must be loadable with ``weights_only=True``.

    Returns:
        the path written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "w.pt"
        >>> save_checkpoint(out, model_config={"name": "segresnet_small", "in_channels": 1},
        ...                 state_dict={"w": torch.ones(2)}) == out
        True
    """
    path = Path(path)
    if "name" not in model_config:
        raise ValueError(f"{path}: model_config needs a 'name' (use model.config), got keys {sorted(model_config)}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": dict(model_config),
        "state_dict": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()},
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # left by a writer killed mid-write
    with atomic_write(path, fsync=True) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
        try:
            # Check that the file can be read back the safe way; mmap keeps this cheap for big weights.
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            where = _first_refused(payload["extra"]) or _first_refused(payload["model_config"], "model_config")
            raise CheckpointError(
                f"{path}: not written, because torch.load(weights_only=True) could not read it back"
                + (f"; offending value: {where}" if where else "")
                + f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "Store numpy arrays and RNG states as tensors or lists."
            ) from err
    return path


def _torch_load(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {first})") from err


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a brainfm-kit checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is corrupt, unsafe to unpickle, or not in the brainfm-kit format;
            the message names the file.

    Example:
        >>> import tempfile
        >>> out = save_checkpoint(Path(tempfile.mkdtemp()) / "w.pt", model_config={"name": "segresnet_small",
        ...                       "in_channels": 1}, state_dict={"w": torch.ones(2)})
        >>> ckpt = load_checkpoint(out)
        >>> ckpt["format"], sorted(ckpt)
        ('brainfm-kit/1', ['extra', 'format', 'model_config', 'state_dict'])
    """
    path = Path(path)
    obj = _torch_load(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r}); "
            "for weights from other releases use read_state_dict() and load_weights()"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return obj


def read_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The weights of any checkpoint: a brainfm-kit file, a dict holding 'state_dict' / 'model' / 'net'
    (e.g. the BrainSegFounder and Swin UNETR releases), or a bare state dict. Loaded with weights_only.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "release.pt"
        >>> torch.save({"epoch": 3, "state_dict": {"module.w": torch.ones(2)}}, out)
        >>> sorted(read_state_dict(out))
        ['module.w']
    """
    path = Path(path)
    state = state_dict_of(_torch_load(path, map_location))
    if state is None:
        raise CheckpointError(f"{path}: found no state dict (a mapping of names to tensors) in the file")
    return state


def state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside a loaded weights file (under 'state_dict' / 'model' / 'net' /
    'model_state_dict', or the object itself), or None when there is none.

    Example:
        >>> sorted(state_dict_of({"epoch": 3, "net": {"w": torch.ones(2)}})), state_dict_of({"epoch": 3})
        (['w'], None)
    """
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    return dict(obj)


# ----------------------------------------------------------------------------- key normalisation


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _rename(state: Mapping[str, torch.Tensor], fn, what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = fn(key)
        if new in out:
            raise KeyMismatchError([], [], [], [f"{what} maps two keys onto {new!r}"])
        out[new] = value
    return out


def normalize_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model_keys: Iterable[str] | None = None,
    prefix_map: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Bring checkpoint keys to the model's spelling; returns ``(state_dict, notes)``.

    In order: strip ``module.`` (DDP) and ``_orig_mod.`` (torch.compile); apply ``prefix_map``
    (``{old_prefix: new_prefix}``, longest first); map ``swin_vit.`` to ``swinViT.``; then, when
    ``model_keys`` are given and fewer keys match than could, add the model's top-level prefix the
    weights lack (a bare Swin encoder such as the Swin UNETR ``model_swinvit.pt`` gets ``swinViT.``)
    or drop one leading component they have in excess (``backbone.``, ``model.``), whichever matches most.

    Example:
        >>> sd = {"module.patch_embed.proj.weight": torch.zeros(1)}
        >>> normalize_state_dict(sd, ["swinViT.patch_embed.proj.weight"])[0].keys()
        dict_keys(['swinViT.patch_embed.proj.weight'])
    """
    notes: list[str] = []
    state = dict(state_dict)
    stripped = _rename(state, _strip_wrappers, "stripping module./_orig_mod.")
    if list(stripped) != list(state):
        notes.append("stripped 'module.' / '_orig_mod.' wrapper prefixes")
    state = stripped
    if prefix_map:
        ordered = sorted(prefix_map.items(), key=lambda kv: -len(kv[0]))

        def mapped(key: str) -> str:
            for old, new in ordered:
                if key.startswith(old):
                    return new + key[len(old) :]
            return key

        state = _rename(state, mapped, "prefix_map")
        notes.append(f"applied prefix_map {dict(prefix_map)}")
    aliased = _rename(
        state,
        lambda k: next((new + k[len(old) :] for old, new in _KEY_ALIASES.items() if k.startswith(old)), k),
        "alias",
    )
    if list(aliased) != list(state):
        notes.append("renamed 'swin_vit.' to 'swinViT.'")
    state = aliased
    if model_keys is not None:
        targets = set(model_keys)
        best, best_hits, best_note = state, len(targets.intersection(state)), ""
        if best_hits < min(len(state), len(targets)):
            candidates = []
            for top in sorted({k.split(".", 1)[0] for k in targets}):
                candidates.append((lambda k, t=top: f"{t}.{k}", f"added prefix '{top}.'"))
            if all("." in k for k in state):
                candidates.append((lambda k: k.split(".", 1)[1], "dropped the first key component"))
            for fn, note in candidates:
                try:
                    renamed = _rename(state, fn, note)
                except KeyMismatchError:
                    continue
                hits = len(targets.intersection(renamed))
                if hits > best_hits:
                    best, best_hits, best_note = renamed, hits, note
        if best_note:
            notes.append(best_note)
        state = best
    return state, notes


def _allowed(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
    prefix_map: dict[str, str] | None = None,
) -> LoadReport:
    """Load ``state_dict`` into ``model``, never silently.

    Keys are first normalised (:func:`normalize_state_dict`). Every model key absent from the
    weights (missing), every weight key absent from the model (unexpected) and every key whose shape
    differs must match an fnmatch pattern of ``allow_missing`` (missing and shape-mismatched: they
    keep the model's initial values) or ``allow_unexpected``; otherwise :class:`KeyMismatchError`
    lists them all and the model is left untouched.

    Returns:
        a :class:`LoadReport` of what was loaded and skipped.

    Example:
        >>> from kit.models import create_model
        >>> a, b = create_model("segresnet_small", 1), create_model("segresnet_small", 1, out_channels=2)
        >>> report = load_weights(b, a.state_dict(), allow_missing=("conv_final.*",))
        >>> [k for k, _, _ in report.shape_mismatched]
        ['conv_final.2.conv.weight', 'conv_final.2.conv.bias']
    """
    target = model.state_dict()
    state, notes = normalize_state_dict(state_dict, target.keys(), prefix_map)
    loaded, mismatched, unexpected = [], [], []
    for key, value in state.items():
        if key not in target:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        else:
            loaded.append(key)
    missing = [k for k in target if k not in state]
    bad_missing = [k for k in missing if not _allowed(k, allow_missing)]
    bad_mismatched = [m for m in mismatched if not _allowed(m[0], allow_missing)]
    bad_unexpected = [k for k in unexpected if not _allowed(k, allow_unexpected)]
    if bad_missing or bad_mismatched or bad_unexpected:
        raise KeyMismatchError(bad_missing, bad_unexpected, bad_mismatched, notes)
    merged = dict(target)
    merged.update({k: state[k] for k in loaded})
    model.load_state_dict(merged, strict=True)
    return LoadReport(loaded=loaded, missing=missing, unexpected=unexpected, shape_mismatched=mismatched, notes=notes)


def model_from_config(model_config: Mapping[str, Any], path: str | os.PathLike) -> nn.Module:
    """``create_model(**model_config)`` with one-line errors naming the checkpoint ``path``.

    Every setting of the stored config reaches the model, ``patch_merging`` of a ``swinunetr``
    included (``'legacy'``: MONAI < 1.5's voxel order, as imported published weights need;
    :mod:`kit.models.patch_merging`). A checkpoint written before that setting existed has no
    ``patch_merging`` key and builds ``'current'`` (the installed MONAI's layer), as it always did.

    Raises:
        CheckpointError: no or an unknown model name, or a setting the model does not take.

    Example:
        >>> model_from_config({"name": "unet9", "in_channels": 1}, "c.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kit.models.checkpoints.CheckpointError: c.pt: model_config names an unknown model 'unet9' (known: ...)
    """
    config = dict(model_config)
    name = config.pop("name", None)
    if name not in list_models():
        raise CheckpointError(f"{path}: model_config names an unknown model {name!r} (known: {', '.join(list_models())})")
    try:
        return create_model(name, **config)
    except TypeError as err:  # an unexpected or missing keyword: a checkpoint from another version
        raise CheckpointError(f"{path}: model_config does not fit model {name!r}: {err}") from err
