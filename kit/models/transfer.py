"""Weight transfer from a checkpoint into a network: one path for every stage, task and contrast set.

:func:`init_from_checkpoint` is the only place where a checkpoint's weights meet another network:
stage 2 of pretraining starting from stage 1, fine-tuning starting from an SSL stage or an earlier
fine-tune, and :func:`build_from_checkpoint` (rebuild a saved network for other input contrasts).
It

1. finds the backbone inside the stored state dict (bare, under ``model.`` for an SSL objective,
   under ``backbone.`` for a classification fine-tune) and sets the rest aside (SSL heads);
2. maps the layers that read the input channels (the backbone's ``input_conv_keys``) by contrast
   name when the checkpoint's contrasts differ from the wanted ones (:func:`transfer_input_channels`),
   never re-initialising them;
3. loads ``'all'`` keys, ``'full'`` (all but the backbone's ``output_keys``, the layer whose shape
   follows the number of output channels) or ``'encoder'`` (the backbone's ``encoder_prefixes``);
4. never silently: ``strict=True`` raises on anything else that does not fit; ``strict=False``
   leaves it at its initial value, lists it in the returned :class:`LoadReport` and warns;
5. refuses SwinUNETR weights trained with another patch-merging order than the model's
   (``model_config['patch_merging']``, :mod:`kit.models.patch_merging`; a config without the key
   means ``'current'``): the same tensors would compute other features.

Backbones declare ``input_conv_keys``, ``output_keys`` and ``encoder_prefixes`` themselves
(:mod:`kit.models.backbones`), so a new backbone needs no change here.

Example:
    >>> import tempfile
    >>> from kit.models import create_model, save_checkpoint
    >>> net = create_model("segresnet_small", in_channels=2)
    >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "ckpt.pt", model_config=net.config, state_dict=net.state_dict(),
    ...                     extra={"modalities": ["t1", "flair"], "step": 10})
    >>> net4, report = build_from_checkpoint(p, modalities=["flair", "t1ce", "t1", "t2"])
    >>> net4.in_channels, report.transferred
    (4, ['convInit.conv.weight'])
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kit.models.backbones import complete_config, create_model
from kit.models.checkpoints import (CheckpointError, KeyMismatchError, LoadReport, load_checkpoint, load_weights,
                                    model_from_config, normalize_state_dict)

__all__ = [
    "TRANSFER_KEYS",
    "canonical_modality",
    "channel_sources",
    "transfer_input_channels",
    "output_key_patterns",
    "init_from_checkpoint",
    "build_from_checkpoint",
]

#: What :func:`init_from_checkpoint` loads: every key, all but the output layer, or the encoder.
TRANSFER_KEYS = ("all", "full", "encoder")

_MODALITY_ALIASES = {
    "t1w": "t1", "t1n": "t1",
    "t1c": "t1ce", "t1gd": "t1ce", "t1-ce": "t1ce", "t1_ce": "t1ce",
    "t2w": "t2",
    "t2f": "flair", "t2flair": "flair", "t2-flair": "flair", "t2_flair": "flair",
}  # fmt: skip
# Closest relative of each contrast, in order of preference: the pre/post-contrast T1 pair and the
# T2 / FLAIR pair show the same tissue contrast apart from enhancement and CSF suppression.
_RELATIVES = {"t1ce": ("t1",), "t1": ("t1ce",), "t2": ("flair",), "flair": ("t2",)}


def canonical_modality(name: str) -> str:
    """Lower-case canonical contrast name (``'T1Gd'`` -> ``'t1ce'``, ``'T2-FLAIR'`` -> ``'flair'``).

    Example:
        >>> canonical_modality("T1w"), canonical_modality("T2_FLAIR")
        ('t1', 'flair')
    """
    key = str(name).strip().lower()
    return _MODALITY_ALIASES.get(key, key)


def transfer_input_channels(weight: torch.Tensor, src_modalities: list[str], dst_modalities: list[str]) -> torch.Tensor:
    """Map a first-layer weight ``(out, len(src), *kernel)`` to ``(out, len(dst), *kernel)`` by contrast name.

    Each destination channel takes the source filter of the same contrast; a contrast the source
    lacks takes the filter of its closest relative (t1ce<-t1, t1<-t1ce, t2<-flair, flair<-t2), or else
    the mean of all source filters. All filters are then multiplied by ``len(src) / len(dst)``.

    Why the rescale: the layer's response to a (z-scored) input is a sum over input channels. For an
    input that is 1 in every channel, output unit ``o`` receives ``sum_i sum_kernel W[o, i]``. Copying
    filters into ``len(dst)`` channels, each about as large as the average source filter, multiplies
    that expected sum by ``len(dst) / len(src)``; scaling by the inverse keeps the activation
    magnitudes that the following (pretrained) layers and norms were trained on. With the same
    contrasts in a new order the scale is 1 and the result is a pure permutation.

    Args:
        weight: ``(out_channels, in_channels, k, k, k)`` (any kernel rank).
        src_modalities: names of the weight's input channels, in order.
        dst_modalities: names of the wanted input channels, in order.

    Example:
        >>> w = torch.stack([torch.full((8, 3, 3, 3), 1.0), torch.full((8, 3, 3, 3), 2.0)], dim=1)  # t1, flair
        >>> out = transfer_input_channels(w, ["t1", "flair"], ["flair", "t1ce", "t1", "t2"])
        >>> out.shape, out[0, :, 0, 0, 0].tolist()  # flair, t1ce<-t1, t1, t2<-flair; times 2/4
        (torch.Size([8, 4, 3, 3, 3]), [1.0, 0.5, 0.5, 1.0])
    """
    src = [canonical_modality(m) for m in src_modalities]
    dst = [canonical_modality(m) for m in dst_modalities]
    if weight.ndim < 2 or weight.shape[1] != len(src):
        raise ValueError(
            f"transfer_input_channels: weight of shape {tuple(weight.shape)} does not have "
            f"{len(src)} input channels for src_modalities {list(src_modalities)}"
        )
    for names, label in ((src, "src_modalities"), (dst, "dst_modalities")):
        if not names or len(set(names)) != len(names):
            raise ValueError(f"transfer_input_channels: {label} must be non-empty and unique, got {names}")
    columns = [weight[:, src.index(source)] if source is not None else weight.mean(dim=1)
               for source in channel_sources(src, dst)]
    return torch.stack(columns, dim=1) * (len(src) / len(dst))


def channel_sources(src_modalities: Sequence[str], dst_modalities: Sequence[str]) -> list[str | None]:
    """Which source contrast each destination channel takes in :func:`transfer_input_channels`.

    The same contrast (canonical names), else its closest relative, else ``None`` (the mean of all
    source filters).

    Example:
        >>> channel_sources(["flair", "t1ce", "t1", "t2"], ["t1", "T2w", "flair", "t1ce"])
        ['t1', 't2', 'flair', 't1ce']
        >>> channel_sources(["t1", "flair"], ["t1ce", "dwi"])
        ['t1', None]
    """
    src = [canonical_modality(m) for m in src_modalities]
    sources: list[str | None] = []
    for name in (canonical_modality(m) for m in dst_modalities):
        sources.append(name if name in src else next((r for r in _RELATIVES.get(name, ()) if r in src), None))
    return sources


# ----------------------------------------------------------------------------- one transfer path


def output_key_patterns(model: nn.Module) -> tuple[str, ...]:
    """fnmatch patterns of the keys of ``model``'s output layer (the backbone's ``output_keys``).

    A backbone registered without ``output_keys`` gets the keys whose shape changes with
    ``out_channels`` (found by building the same network with one more output channel).

    Example:
        >>> output_key_patterns(create_model("segresnet_small", in_channels=1))
        ('conv_final.2.conv.*',)
    """
    declared = getattr(model, "output_keys", None)
    if declared:
        return tuple(declared)
    other = create_model(**{**model.config, "out_channels": model.out_channels + 1}).state_dict()
    return tuple(k for k, v in model.state_dict().items() if k in other and other[k].shape != v.shape)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _backbone_prefix(state: Mapping[str, torch.Tensor], target_keys: set[str]) -> str:
    """The prefix under which ``state`` holds the backbone ('' for a bare backbone, 'model.' for an
    SSL objective's state dict, 'backbone.' for a classification fine-tune): the one that maps the
    most keys onto the backbone's, the shortest on a tie."""
    candidates = {""} | {k.split(".", 1)[0] + "." for k in state if "." in k}
    scored = [(sum(1 for k in state if k.startswith(p) and k[len(p) :] in target_keys), -len(p), p) for p in candidates]
    hits, _, prefix = max(scored)
    return prefix if hits else ""


def _same_contrasts(src: Sequence[str] | None, dst: Sequence[str] | None) -> bool:
    if src is None or dst is None:
        return True
    return [canonical_modality(m) for m in src] == [canonical_modality(m) for m in dst]


def _check_patch_merging(model: nn.Module, stored: Mapping[str, Any], path: Path) -> None:
    """Refuse weights trained with another patch-merging order than ``model``'s (kit.models.patch_merging)."""
    mine = getattr(model, "config", {})
    if mine.get("name") != "swinunetr" or stored.get("name") != "swinunetr":
        return
    want, have = complete_config(stored)["patch_merging"], complete_config(mine)["patch_merging"]
    if want != have:
        raise CheckpointError(
            f"{path}: its weights were trained with patch_merging={want!r} but this swinunetr model uses "
            f"{have!r}; build the model with the model setting patch_merging: {want} (the voxel order of "
            "SwinUNETR's patch merging, see kit.models.patch_merging)"
        )


def init_from_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    modalities: Sequence[str] | None = None,
    keys: str = "all",
    strict: bool = True,
    source: str | os.PathLike | None = None,
) -> LoadReport:
    """Load a checkpoint's backbone weights into the kit backbone ``model`` (in place).

    Args:
        model: a :func:`kit.models.create_model` network (declares ``input_conv_keys``,
            ``output_keys``, ``encoder_prefixes``).
        checkpoint: a file written by :func:`kit.models.save_checkpoint`, or its loaded dict.
        modalities: ``model``'s input contrasts in order. When they differ from the checkpoint's
            ``extra['modalities']`` (names, order or count) the input layers are mapped by name
            (:func:`transfer_input_channels`); without names on either side, a change of channel
            count gives every input channel the (rescaled) mean source filter.
        keys: 'all', 'full' (all but the output layer) or 'encoder' (``encoder_prefixes`` only);
            the keys left out keep their initial values and are listed in ``report.dropped``.
        strict: True: every wanted key must fit (:class:`KeyMismatchError` otherwise, a
            :class:`CheckpointError` naming the file); False: what does not fit keeps its initial
            value, is reported and warned about, and only an encoder that gets nothing is an error.
        source: the file name for messages when ``checkpoint`` is a dict.

    Returns:
        :class:`LoadReport`: ``loaded``, ``missing`` (wanted keys left at init), ``dropped``
        (stored keys left out on purpose: other layers, SSL heads), ``transferred`` (input layers
        mapped by contrast) and ``notes``.

    Example:
        >>> import tempfile
        >>> from kit.models import save_checkpoint
        >>> one = create_model("segresnet_small", in_channels=1)
        >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "c.pt", model_config=one.config,
        ...                     state_dict=one.state_dict(), extra={"modalities": ["t1"]})
        >>> two = create_model("segresnet_small", in_channels=2, out_channels=3)
        >>> report = init_from_checkpoint(two, p, modalities=["t1", "flair"], keys="full")
        >>> report.transferred, report.dropped
        (['convInit.conv.weight'], ['conv_final.2.conv.weight', 'conv_final.2.conv.bias'])
    """
    if keys not in TRANSFER_KEYS:
        raise ValueError(f"init_from_checkpoint: keys must be one of {TRANSFER_KEYS}, got {keys!r}")
    if isinstance(checkpoint, Mapping):
        path = Path(source) if source is not None else Path("<checkpoint>")
    else:
        path = Path(checkpoint)
        checkpoint = load_checkpoint(path, map_location="cpu")
    _check_patch_merging(model, checkpoint.get("model_config") or {}, path)
    target = model.state_dict()
    state, notes = normalize_state_dict(checkpoint["state_dict"])
    prefix = _backbone_prefix(state, set(target))
    outside = [k for k in state if not k.startswith(prefix)]  # SSL heads, momentum encoders ...
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if prefix:
        notes.append(f"took the backbone from keys under {prefix!r}")
    if outside:
        notes.append(f"left out {len(outside)} tensors outside the backbone (SSL heads)")

    # Input layers: map the checkpoint's contrasts onto ours by name (never re-initialise them).
    extra = checkpoint.get("extra") or {}
    src_names = extra.get("modalities")
    src_in = int(checkpoint["model_config"].get("in_channels", model.in_channels))
    if src_names is not None and len(src_names) != src_in:
        raise CheckpointError(f"{path}: extra['modalities'] {list(src_names)} does not match in_channels={src_in}")
    transferred = []
    if src_in != model.in_channels or not _same_contrasts(src_names, modalities):
        if src_names is not None and modalities is not None:
            src_list, dst_list = list(src_names), list(modalities)
        else:
            src_list = [f"input{i}" for i in range(src_in)]
            dst_list = [f"new{i}" for i in range(model.in_channels)]
            notes.append("input contrast names unknown: every input channel starts from the mean source filter")
        for key in model.input_conv_keys:
            if key in state and state[key].ndim >= 2 and state[key].shape[1] == len(src_list):
                state[key] = transfer_input_channels(state[key], src_list, dst_list)
                transferred.append(key)
        notes.append(f"input channels {src_list} -> {dst_list}")

    encoder = tuple(model.encoder_prefixes)
    if keys == "encoder":
        wanted = lambda k: k.startswith(encoder)  # noqa: E731
    elif keys == "full":
        output = output_key_patterns(model)
        wanted = lambda k: not _matches(k, output)  # noqa: E731
    else:
        wanted = lambda k: True  # noqa: E731
    not_wanted = [k for k in state if not wanted(k)]
    expected = {k for k in target if wanted(k)}
    state = {k: v for k, v in state.items() if wanted(k)}
    if strict:
        try:
            report = load_weights(model, state, allow_missing=tuple(k for k in target if k not in expected))
        except KeyMismatchError as err:
            raise CheckpointError(
                f"{path}: its weights do not fit this {model.config['name']} backbone: {err}") from err
    else:
        report = load_weights(model, state, allow_missing=("*",), allow_unexpected=("*",))
        # Keys the transfer does not ask for are not "missing": they keep their initialisation on purpose.
        report.missing = [k for k in report.missing if k in expected]
    report.dropped = [f"{prefix}{k}" for k in not_wanted] + outside
    report.transferred = [k for k in transferred if k in report.loaded]
    report.notes = notes + report.notes + [f"{keys} transfer from {path}"]
    if not strict:
        if not any(k.startswith(encoder) for k in report.loaded):
            raise CheckpointError(
                f"{path}: none of its tensors fits the encoder of this {model.config['name']} backbone "
                f"(prefixes {list(encoder)}); wrong architecture or options?\n{report.summary()}"
            )
        if report.missing or report.unexpected or report.shape_mismatched:
            warnings.warn(f"{path}: weights only partly transferred; these keep their initial values:\n{report.summary()}",
                          stacklevel=3)
    return report


def build_from_checkpoint(
    path: str | os.PathLike,
    in_channels: int | None = None,
    modalities: list[str] | None = None,
    encoder_only: bool = False,
) -> tuple[nn.Module, LoadReport]:
    """Rebuild the network saved at ``path`` for ``modalities`` and load its weights (:func:`init_from_checkpoint`, strict).

    Args:
        path: a file written by :func:`kit.models.save_checkpoint`.
        in_channels: wanted input channels (default: the checkpoint's; implied by ``modalities``).
        modalities: wanted input contrasts in order (the input layers are mapped by name).
        encoder_only: load only ``model.encoder_prefixes`` keys; the rest keeps its initialisation
            (the report lists it as missing / dropped).

    Returns:
        ``(model, report)``.

    Example:
        >>> import tempfile
        >>> from kit.models import save_checkpoint
        >>> net = create_model("segresnet_small", in_channels=1)
        >>> out = save_checkpoint(Path(tempfile.mkdtemp()) / "c.pt", model_config=net.config, state_dict=net.state_dict())
        >>> net, report = build_from_checkpoint(out, encoder_only=True)
        >>> report.missing[:1]
        ['up_layers.0.0.norm1.weight']
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    config = dict(checkpoint["model_config"])
    if modalities is not None:
        modalities = list(modalities)
        if in_channels is not None and int(in_channels) != len(modalities):
            raise ValueError(f"in_channels={in_channels} contradicts modalities {modalities}")
        config["in_channels"] = len(modalities)
    elif in_channels is not None:
        config["in_channels"] = int(in_channels)
    model = model_from_config(config, path)
    report = init_from_checkpoint(model, checkpoint, modalities=modalities, keys="encoder" if encoder_only else "all",
                                  source=path)
    return model, report
