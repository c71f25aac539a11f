"""Published SwinUNETR encoder weights in, kit checkpoints out: ``kit import-weights``.

Two layouts are read, and recognised from the file itself (a file in the other layout, or a kit
checkpoint, is refused naming both):

- ``monai-ssl``: MONAI's Swin UNETR self-supervised weights (``model_swinvit.pt`` of
  Project-MONAI/research-contributions, Tang et al. CVPR 2022): ``{'state_dict': {...}}`` whose keys
  are ``module.`` + the bare Swin encoder's (``module.patch_embed.proj.weight``,
  ``module.layers1.0.blocks.0.attn.qkv.weight``, ...; the MLP layers spelled ``mlp.fc1`` / ``mlp.fc2``,
  as MONAI's own ``SwinUNETR.load_from`` reads them); 1 input channel, feature_size 48.
- ``brainsegfounder``: the checkpoints of lab-smile/BrainSegFounder (``pretrain/main.py``):
  ``{'global_step', 'epoch', 'state_dict': DDP(SSLHead).state_dict(), 'optimizer'}``, keys
  ``module.swinViT.*`` (MONAI's SwinTransformer, ``mlp.linear1``) plus the SSL heads
  ``module.rotation_head.*``, ``module.contrastive_head.*``, ``module.conv.*``; 2 input channels
  (T1, T2-FLAIR; UK Biobank) in stage 1, 4 (FLAIR, T1ce, T1, T2; BraTS 2021) in stage 2. A fine-tuned
  SwinUNETR state dict (``swinViT.*``, ``encoder1.*``, ..., no prefix) is read the same way.

Both releases were trained with MONAI < 1.5, whose SwinUNETR patch merging concatenates the 2x2x2
neighbours in another order than MONAI >= 1.5 (:mod:`kit.models.patch_merging`): the written
checkpoint records ``patch_merging: 'legacy'`` in its model config, so every model built from it
(fine-tuning, ``kit predict``, the study, ``kit export-bundle``) computes what the publishers'
encoder computed.

The architecture (feature size, depths, heads) is read off the tensors. The Swin encoder must be
complete: a missing encoder tensor or one of another shape is an error, never a silent gap. The
layers that read the input channels (the patch embedding; ``encoder1.layer.conv1`` / ``conv3`` of a
fine-tuned file) are mapped to the wanted contrasts by name, whatever the counts (a permutation
included), with :func:`kit.models.transfer.transfer_input_channels` (the sum over input channels is
kept); a source with several unnamed channels is refused (the order would decide which filter each
contrast gets). The convolutional skip encoders and decoder of SwinUNETR, which these releases do
not hold, keep a seeded initialisation, and the SSL heads are left out; where the file has an SSL
head, it is first run on a synthetic brain in 9 orientations (:mod:`kit.models.axis_check`) to see
which axis order the weights expect. The report lists each group.

Example:
    >>> report = import_weights("monai-ssl", "model_swinvit.pt", in_channels=4, out="swin_ssl.pt")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kit.models.backbones import create_model
from kit.models.checkpoints import (CHECKPOINT_FORMAT, CheckpointError, _torch_load, normalize_state_dict,
                                    save_checkpoint, state_dict_of)
from kit.models.transfer import canonical_modality, channel_sources, transfer_input_channels

# Published weight layouts this module reads (the docstring above documents each). A plain literal: the command
# line reads it from this file's source without importing torch (kit.cli.constants).
FORMATS = ("monai-ssl", "brainsegfounder")

__all__ = ["FORMATS", "ImportReport", "import_weights", "swin_config_from_state", "default_modalities",
           "detect_layout"]

# Input contrasts of the published weights, by format and channel count (None: not MRI-specific).
_SOURCE_MODALITIES = {
    "monai-ssl": {1: None},  # CT and MRI mixed: one unnamed channel
    "brainsegfounder": {1: ["t1"], 2: ["t1", "flair"], 4: ["flair", "t1ce", "t1", "t2"]},
}
_LAYOUT_WORDS = {
    "monai-ssl": "MONAI Swin UNETR SSL weights (bare Swin encoder keys 'module.patch_embed.*', 'module.layers1.*')",
    "brainsegfounder": "BrainSegFounder / SwinUNETR weights (keys 'module.swinViT.*' or 'swinViT.*')",
    "kit": f"kit checkpoint ({CHECKPOINT_FORMAT})",
}
# The research-contributions SwinViT (timm's Mlp) names the MLP layers fc1/fc2; MONAI's SwinUNETR linear1/linear2.
_MLP_RENAMES = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))
# The merging order of the MONAI releases that both publishers trained with (kit.models.patch_merging).
_PATCH_MERGING = {"monai-ssl": "legacy", "brainsegfounder": "legacy"}


@dataclass
class ImportReport:
    """What :func:`import_weights` did, key by key.

    Attributes:
        matched: model keys whose values come from the source file (first layer included).
        missing: model keys the source does not hold (convolutional skip encoders, decoder): seeded initialisation.
        unexpected: source keys not written (SSL heads and anything unknown).
        transferred: ``(key, source_shape, written_shape)`` of the layers mapped across input channels.
        channel_map: ``(written contrast, source contrast)`` per written channel; the source is
            ``'mean'`` where no source contrast fits, ``'unnamed'`` for a single unnamed source channel.
        model_config: the written checkpoint's ``model_config`` (``patch_merging`` included).
        src_modalities, modalities: input contrasts of the source (None: unnamed) and of the written checkpoint.
        layout: the layout recognised in the file.
        axis_check: :class:`kit.models.axis_check.AxisCheck` of the file's SSL head, None without one.
        out: the checkpoint written.
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    transferred: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    channel_map: list[tuple[str, str]] = field(default_factory=list)
    model_config: dict = field(default_factory=dict)
    src_modalities: list[str] | None = None
    modalities: list[str] = field(default_factory=list)
    layout: str = ""
    axis_check: Any = None
    out: Path | None = None

    def summary(self) -> str:
        """The report as printed by ``kit import-weights``."""

        def listing(keys: Sequence[str], limit: int = 6) -> str:
            return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

        encoder = [k for k in self.matched if k.startswith("swinViT.")]
        src_names = self.src_modalities or ["unnamed"]
        lines = [
            f"layout: {self.layout}",
            f"matched: {len(self.matched)} tensors ({len(encoder)} of the Swin encoder)",
            f"missing: {len(self.missing)} (not in the source; seeded initialisation)"
            + (f": {listing(self.missing)}" if self.missing else ""),
            f"unexpected: {len(self.unexpected)} (in the source, not written)"
            + (f": {listing(self.unexpected)}" if self.unexpected else ""),
        ]
        for key, src, dst in self.transferred:
            lines.append(
                f"transferred: {key} {tuple(src)} -> {tuple(dst)}, input channels "
                f"{src_names} -> {self.modalities} (sum over input channels kept)"
            )
        if self.channel_map:
            lines.append("channel mapping (by name): " + ", ".join(f"{d} <- {s}" for d, s in self.channel_map))
        merging = self.model_config.get("patch_merging")
        lines.append(f"patch merging: {merging}" + (
            " (MONAI < 1.5's voxel order, as the publishers trained with; kit.models.patch_merging)"
            if merging == "legacy" else " (the installed MONAI's voxel order)"))
        if self.axis_check is None:
            lines.append("axis order: not checked (the file holds no SSL head to run)")
        else:
            lines.append(f"axis order: {self.axis_check.summary()}")
        cfg = self.model_config
        lines.append(
            f"model: {cfg.get('name')} feature_size {cfg.get('feature_size')} depths {cfg.get('depths')} "
            f"heads {cfg.get('num_heads')} in_channels {cfg.get('in_channels')}"
            + (f"; wrote {self.out}" if self.out else "")
        )
        return "\n".join(lines)


def default_modalities(n: int) -> list[str]:
    """The kit's contrast names for ``n`` input channels (BraTS order for 4, UK Biobank's for 2).

    Example:
        >>> default_modalities(4), default_modalities(2)
        (['flair', 't1ce', 't1', 't2'], ['t1', 'flair'])
    """
    known = {1: ["t1"], 2: ["t1", "flair"], 4: ["flair", "t1ce", "t1", "t2"]}
    if n not in known:
        raise ValueError(f"no default contrast names for {n} input channels; pass modalities=[...] ({n} names)")
    return list(known[n])


def _to_kit_keys(state: Mapping[str, torch.Tensor], model_keys) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Source keys in the kit's (MONAI SwinUNETR) spelling; notes on what was renamed."""
    renamed = {}
    for key, value in state.items():
        for old, new in _MLP_RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    notes = ["renamed mlp.fc1/fc2 to mlp.linear1/linear2"] if list(renamed) != list(state) else []
    normalised, more = normalize_state_dict(renamed, model_keys)
    return normalised, notes + more


def swin_config_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """SwinUNETR options read off Swin encoder tensors (keys ``swinViT.*``).

    Returns ``{'in_channels', 'feature_size', 'depths', 'num_heads'}``: the embedding width and input
    channels from the patch embedding ``(feature_size, in, 2, 2, 2)``, the blocks per stage from the
    block indices, the heads from the relative-position tables ``((2w-1)^3, heads)``.

    Example:
        >>> net = create_model("swinunetr", in_channels=2, feature_size=12)
        >>> swin_config_from_state(net.state_dict())
        {'in_channels': 2, 'feature_size': 12, 'depths': (2, 2, 2, 2), 'num_heads': (3, 6, 12, 24)}
    """
    key = "swinViT.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(f"no Swin patch embedding ({key}) among the weights; not a SwinUNETR encoder")
    weight = state[key]
    depths, heads = [], []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"swinViT\.layers{stage}\.0\.blocks\.(\d+)\.", k))}
        if not blocks:
            raise CheckpointError(f"no blocks of Swin stage {stage} (swinViT.layers{stage}.0.blocks.*) among the weights")
        depths.append(max(blocks) + 1)
        table = state.get(f"swinViT.layers{stage}.0.blocks.0.attn.relative_position_bias_table")
        if table is None:
            raise CheckpointError(f"swinViT.layers{stage}.0.blocks.0.attn.relative_position_bias_table is missing")
        heads.append(int(table.shape[1]))
    return {"in_channels": int(weight.shape[1]), "feature_size": int(weight.shape[0]), "depths": tuple(depths),
            "num_heads": tuple(heads)}


def detect_layout(obj: Any) -> tuple[str | None, dict[str, torch.Tensor]]:
    """The layout of a loaded weights file: ``('kit' | 'monai-ssl' | 'brainsegfounder' | None, state dict)``.

    ``'kit'``: a kit checkpoint (``format`` is ``brainfm-kit/1``); ``'brainsegfounder'``: Swin keys
    under ``swinViT.`` / ``swin_vit.`` (an SSLHead or a SwinUNETR, after ``module.`` / ``_orig_mod.``);
    ``'monai-ssl'``: a bare Swin encoder (``patch_embed.*`` and ``layers1.*`` at the top); None: neither.

    Example:
        >>> detect_layout({"state_dict": {"module.patch_embed.proj.weight": torch.zeros(1),
        ...                               "module.layers1.0.blocks.0.norm1.weight": torch.zeros(1)}})[0]
        'monai-ssl'
        >>> detect_layout({"state_dict": {"module.swinViT.patch_embed.proj.weight": torch.zeros(1)}})[0]
        'brainsegfounder'
    """
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj.get("state_dict")
        return "kit", dict(state) if isinstance(state, Mapping) else {}
    state = state_dict_of(obj)
    if state is None:
        return None, {}
    bare, _ = normalize_state_dict(state)  # wrappers stripped, swin_vit. spelled swinViT.
    if any(k.startswith("swinViT.") for k in bare):
        return "brainsegfounder", state
    if any(k.startswith("patch_embed.") for k in bare) and any(k.startswith("layers1.") for k in bare):
        return "monai-ssl", state
    return None, state


def _check_arguments(fmt: str, src: Path, in_channels: Any, out: Path, modalities: Sequence[str] | None,
                     src_modalities: Sequence[str] | None, overwrite: bool) -> list[str]:
    """Every check that needs no file read; returns the written contrasts. One-line errors naming the argument."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: unknown format {fmt!r}; choose one of {list(FORMATS)}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"--in-channels must be a positive number of input contrasts, got {in_channels!r}")
    if src.is_dir():
        raise ValueError(f"--src {src} is a folder, not a checkpoint file")
    if not src.is_file():
        raise FileNotFoundError(f"--src {src} does not exist")
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a folder; name the checkpoint file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out (an existing file is never overwritten)")
    if out.exists() and out.resolve() == src.resolve():
        raise FileExistsError(f"--out {out} is the --src file; an input is never overwritten")
    if modalities is None:
        try:
            modalities = default_modalities(in_channels)
        except ValueError:
            raise ValueError(f"--modalities: no default contrast names for --in-channels {in_channels}; "
                             f"pass {in_channels} names") from None
    names = [str(m) for m in modalities]
    if len(names) != in_channels:
        raise ValueError(f"--modalities: {len(names)} names {names} for --in-channels {in_channels}")
    for label, given in (("--modalities", names), ("--src-modalities", src_modalities)):
        if given is not None:
            canonical = [canonical_modality(m) for m in given]
            if len(set(canonical)) != len(canonical) or not all(canonical):
                raise ValueError(f"{label}: names must be distinct and non-empty, got {list(given)}")
    return names


def import_weights(
    fmt: str,
    src: str | os.PathLike,
    in_channels: int,
    out: str | os.PathLike,
    *,
    modalities: Sequence[str] | None = None,
    src_modalities: Sequence[str] | None = None,
    out_channels: int = 3,
    seed: int = 0,
    overwrite: bool = False,
    axis_check: bool = True,
) -> ImportReport:
    """Convert a published SwinUNETR encoder into a kit checkpoint with ``in_channels`` inputs.

    Every argument and the file's layout are checked before anything is written; on any error the
    output folder is left as it was.

    Args:
        fmt: ``'monai-ssl'`` or ``'brainsegfounder'`` (see the module docstring); must be the layout
            of ``src``.
        src: the published file (read with ``torch.load(weights_only=True)``).
        in_channels: input contrasts of the written checkpoint (>= 1).
        out: the kit checkpoint to write (never overwritten unless ``overwrite``; never ``src``).
        modalities: names of the written input channels (default :func:`default_modalities`).
        src_modalities: names of the source's input channels, in the file's order (default: the
            release's, see the module docstring; MONAI's weights have one unnamed channel). Needed
            for a source with several channels of unknown names.
        out_channels: segmentation outputs of the (freshly initialised) decoder.
        seed: seed of the initialisation of everything the source does not hold.
        overwrite: replace an existing ``out``.
        axis_check: run the file's SSL head on a synthetic brain in 9 orientations
            (:func:`kit.models.axis_check.check_axis_order`) and report the one the weights prefer.

    Returns:
        :class:`ImportReport`.

    Raises:
        ValueError: a wrong argument (the message names it).
        CheckpointError: the file is in another layout than ``fmt``, holds no complete Swin encoder,
            a tensor has another shape, or its several input channels have no names.
        FileNotFoundError / FileExistsError: no ``src``; ``out`` exists and ``overwrite`` is False.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> net = create_model("swinunetr", in_channels=1, feature_size=12)
        >>> published = {"module." + k[len("swinViT."):].replace(".mlp.linear", ".mlp.fc"): v
        ...              for k, v in net.state_dict().items() if k.startswith("swinViT.")}
        >>> torch.save({"state_dict": published}, folder / "model_swinvit.pt")
        >>> report = import_weights("monai-ssl", folder / "model_swinvit.pt", 4, folder / "kit.pt")
        >>> len(report.matched), report.transferred[0][2], report.model_config["patch_merging"]
        (126, (12, 4, 2, 2, 2), 'legacy')
    """
    src, out = Path(src), Path(out)
    modalities = _check_arguments(fmt, src, in_channels, out, modalities, src_modalities, overwrite)
    with warnings.catch_warnings():  # torch / MONAI warnings would print lines before a one-line error
        warnings.simplefilter("ignore")
        obj = _torch_load(src, "cpu")
        layout, raw = detect_layout(obj)
        if layout is None:
            keys = sorted(raw)[:3]
            raise CheckpointError(f"{src}: holds no Swin encoder in a known layout (keys start with {keys}); "
                                  f"--format {fmt} expects {_LAYOUT_WORDS[fmt]}")
        if layout != fmt:
            hint = ("use it as an init directly (kit reproduce --init NAME=FILE)" if layout == "kit"
                    else f"pass --format {layout}")
            raise CheckpointError(f"{src}: is {_LAYOUT_WORDS[layout]}, not the --format {fmt} layout "
                                  f"({_LAYOUT_WORDS[fmt]}); {hint}")
        return _convert(fmt, src, raw, int(in_channels), out, modalities, src_modalities, int(out_channels),
                        int(seed), axis_check)


def _convert(fmt: str, src: Path, raw: dict[str, torch.Tensor], in_channels: int, out: Path, modalities: list[str],
             src_modalities: Sequence[str] | None, out_channels: int, seed: int, axis_check: bool) -> ImportReport:
    """:func:`import_weights` after the argument and layout checks."""
    probe = create_model("swinunetr", in_channels=1, feature_size=12)  # key names only
    state, notes = _to_kit_keys(raw, probe.state_dict().keys())
    try:
        arch = swin_config_from_state(state)
    except CheckpointError as err:
        raise CheckpointError(f"{src}: {err} (format {fmt}; keys start with {sorted(raw)[:3]})") from err
    src_in = arch.pop("in_channels")
    if arch["feature_size"] % 12:
        raise CheckpointError(
            f"{src}: its Swin embedding width (feature_size, the patch embedding's {arch['feature_size']} filters) "
            "is not a multiple of 12 as SwinUNETR needs; not a Swin UNETR encoder")
    if src_modalities is None:
        src_modalities = _SOURCE_MODALITIES[fmt].get(src_in, None)
    src_names = [str(m) for m in src_modalities] if src_modalities is not None else None
    if src_names is not None and len(src_names) != src_in:
        raise ValueError(f"--src-modalities: {len(src_names)} names {src_names} but {src} has {src_in} input channels")
    if src_names is None and src_in > 1:
        raise CheckpointError(
            f"{src}: its {src_in} input channels have no known names; pass --src-modalities ({src_in} names in the "
            "file's channel order): the order decides which filter each contrast gets")
    # The channel mapping by name (a single unnamed channel goes to every contrast).
    names_from = src_names or ["unnamed"]
    sources = channel_sources(names_from, modalities) if src_names else [None] * len(modalities)
    channel_map = [(d, s if s is not None else ("unnamed" if src_names is None else "mean"))
                   for d, s in zip(modalities, sources)]

    merging = _PATCH_MERGING[fmt]
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = create_model("swinunetr", in_channels=in_channels, out_channels=out_channels,
                                 patch_merging=merging, **arch)
    except (ValueError, TypeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{src}: its encoder ({arch}) does not build a SwinUNETR: {first}") from err
    target = model.state_dict()
    report = ImportReport(model_config=dict(model.config), src_modalities=src_names, modalities=modalities,
                          layout=_LAYOUT_WORDS[fmt], channel_map=channel_map)
    report.unexpected = [k for k in state if k not in target]
    written = dict(target)
    bad_shapes = []
    for key, value in state.items():
        if key not in target:
            continue
        if key in model.input_conv_keys and value.ndim >= 2 and value.shape[1] == src_in:
            # Layers that read the input contrasts: by name, whatever the counts (identity when the same).
            mapped = transfer_input_channels(value, names_from, modalities)
            if src_names is None or [canonical_modality(m) for m in src_names] != [canonical_modality(m) for m in modalities]:
                report.transferred.append((key, tuple(value.shape), tuple(mapped.shape)))
            value = mapped
        if tuple(value.shape) != tuple(target[key].shape):
            bad_shapes.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
            continue
        written[key] = value.to(target[key].dtype).contiguous()
        report.matched.append(key)
    encoder_missing = [k for k in target if k.startswith("swinViT.") and k not in state]
    if bad_shapes or encoder_missing:
        raise CheckpointError(
            f"{src}: not a complete SwinUNETR encoder in the {fmt} layout: "
            + (f"{len(encoder_missing)} encoder tensors missing ({', '.join(encoder_missing[:4])}) " if encoder_missing else "")
            + (f"{len(bad_shapes)} with another shape ({'; '.join(bad_shapes[:4])})" if bad_shapes else "")
        )
    report.missing = [k for k in target if k not in state]
    if axis_check:
        from kit.models.axis_check import check_axis_order

        report.axis_check = check_axis_order(state, dict(arch, in_channels=src_in, patch_merging=merging), src_names)
    save_checkpoint(
        out,
        model_config=model.config,
        state_dict=written,
        extra={
            "modalities": modalities,
            "imported": {"format": fmt, "source": str(src.resolve()), "src_modalities": src_names or ["unnamed"],
                         "channel_map": [list(p) for p in channel_map], "patch_merging": merging,
                         "axis_check": report.axis_check.as_dict() if report.axis_check is not None else "not checked",
                         "notes": notes, "decoder_seed": int(seed),
                         "unexpected": report.unexpected, "missing": report.missing},
        },
    )
    report.out = out
    return report
