"""Published SwinUNETR encoder weights in, kit checkpoints out: ``kit import-weights``.

Two layouts are read:

- ``monai-ssl``: MONAI's Swin UNETR self-supervised weights (``model_swinvit.pt`` of
  Project-MONAI/research-contributions, Tang et al. CVPR 2022): ``{'state_dict': {...}}`` whose keys
  are ``module.`` + the Swin encoder's (``module.patch_embed.proj.weight``,
  ``module.layers1.0.blocks.0.attn.qkv.weight``, ...; the MLP layers spelled ``mlp.fc1`` / ``mlp.fc2``,
  as MONAI's own ``SwinUNETR.load_from`` reads them); 1 input channel, feature_size 48.
- ``brainsegfounder``: the checkpoints of lab-smile/BrainSegFounder (``pretrain/main.py``):
  ``{'global_step', 'epoch', 'state_dict': DDP(SSLHead).state_dict(), 'optimizer'}``, keys
  ``module.swinViT.*`` (MONAI's SwinTransformer, ``mlp.linear1``) plus the SSL heads
  ``module.rotation_head.*``, ``module.contrastive_head.*``, ``module.conv.*``; 2 input channels
  (T1, T2-FLAIR; UK Biobank) in stage 1, 4 (FLAIR, T1ce, T1, T2; BraTS 2021) in stage 2. A fine-tuned
  SwinUNETR state dict (``swinViT.*``, ``encoder1.*``, ..., no prefix) is read the same way.

The architecture (feature size, depths, heads) is read off the tensors. The Swin encoder must be
complete: a missing encoder tensor or one of another shape is an error, never a silent gap. The
first layer is mapped to the wanted input contrasts with
:func:`kit.models.transfer.transfer_input_channels` (the sum over input channels is kept), the
convolutional skip encoders and decoder of SwinUNETR, which these releases do not hold, keep a seeded
initialisation, and the SSL heads are
left out; the report lists each group.

Example:
    >>> report = import_weights("monai-ssl", "model_swinvit.pt", in_channels=4, out="swin_ssl.pt")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kit.interop import FORMATS  # the CLI's choices live there so that `kit --help` needs no torch
from kit.models.backbones import create_model
from kit.models.checkpoints import CheckpointError, normalize_state_dict, read_state_dict, save_checkpoint
from kit.models.transfer import transfer_input_channels

__all__ = ["FORMATS", "ImportReport", "import_weights", "swin_config_from_state", "default_modalities"]

# Input contrasts of the published weights, by format and channel count (None: not MRI-specific).
_SOURCE_MODALITIES = {
    "monai-ssl": {1: None},  # CT and MRI mixed: one unnamed channel
    "brainsegfounder": {1: ["t1"], 2: ["t1", "flair"], 4: ["flair", "t1ce", "t1", "t2"]},
}
_SSL_HEADS = ("rotation_head.", "contrastive_head.", "conv.", "rotation_pre.", "contrastive_pre.")
# The research-contributions SwinViT (timm's Mlp) names the MLP layers fc1/fc2; MONAI's SwinUNETR linear1/linear2.
_MLP_RENAMES = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))


@dataclass
class ImportReport:
    """What :func:`import_weights` did, key by key.

    Attributes:
        matched: model keys whose values come from the source file (first layer included).
        missing: model keys the source does not hold (convolutional skip encoders, decoder): seeded initialisation.
        unexpected: source keys not written (SSL heads and anything unknown).
        transferred: ``(key, source_shape, written_shape)`` of the layers mapped across input channels.
        model_config: the written checkpoint's ``model_config``.
        src_modalities, modalities: input contrasts of the source and of the written checkpoint.
        out: the checkpoint written.
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    transferred: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    model_config: dict = field(default_factory=dict)
    src_modalities: list[str] | None = None
    modalities: list[str] = field(default_factory=list)
    out: Path | None = None

    def summary(self) -> str:
        """The report as printed by ``kit import-weights``."""

        def listing(keys: Sequence[str], limit: int = 6) -> str:
            return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

        encoder = [k for k in self.matched if k.startswith("swinViT.")]
        lines = [
            f"matched: {len(self.matched)} tensors ({len(encoder)} of the Swin encoder)",
            f"missing: {len(self.missing)} (not in the source; seeded initialisation)"
            + (f": {listing(self.missing)}" if self.missing else ""),
            f"unexpected: {len(self.unexpected)} (in the source, not written)"
            + (f": {listing(self.unexpected)}" if self.unexpected else ""),
        ]
        for key, src, dst in self.transferred:
            lines.append(
                f"transferred: {key} {tuple(src)} -> {tuple(dst)}, input channels "
                f"{self.src_modalities or ['unnamed'] * src[1]} -> {self.modalities} (sum over input channels kept)"
            )
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
) -> ImportReport:
    """Convert a published SwinUNETR encoder into a kit checkpoint with ``in_channels`` inputs.

    Args:
        fmt: ``'monai-ssl'`` or ``'brainsegfounder'`` (see the module docstring).
        src: the published file (read with ``torch.load(weights_only=True)``).
        in_channels: input contrasts of the written checkpoint.
        out: the kit checkpoint to write (never overwritten unless ``overwrite``).
        modalities: names of the written input channels (default :func:`default_modalities`).
        src_modalities: names of the source's input channels (default: the release's, see the module
            docstring; MONAI's weights have one unnamed channel).
        out_channels: segmentation outputs of the (freshly initialised) decoder.
        seed: seed of the initialisation of everything the source does not hold.
        overwrite: replace an existing ``out``.

    Returns:
        :class:`ImportReport`.

    Raises:
        CheckpointError: the file holds no complete Swin encoder, or a tensor has another shape.
        FileExistsError: ``out`` exists and ``overwrite`` is False.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> net = create_model("swinunetr", in_channels=1, feature_size=12)
        >>> published = {"module." + k[len("swinViT."):].replace(".mlp.linear", ".mlp.fc"): v
        ...              for k, v in net.state_dict().items() if k.startswith("swinViT.")}
        >>> torch.save({"state_dict": published}, folder / "model_swinvit.pt")
        >>> report = import_weights("monai-ssl", folder / "model_swinvit.pt", 4, folder / "kit.pt")
        >>> len(report.matched), report.transferred[0][2]
        (126, (12, 4, 2, 2, 2))
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out (an existing file is never overwritten)")
    modalities = list(modalities) if modalities is not None else default_modalities(int(in_channels))
    if len(modalities) != int(in_channels):
        raise ValueError(f"{len(modalities)} modalities {modalities} for in_channels={in_channels}")
    raw = read_state_dict(src)
    probe = create_model("swinunetr", in_channels=1, feature_size=12)  # key names only
    state, notes = _to_kit_keys(raw, probe.state_dict().keys())
    try:
        arch = swin_config_from_state(state)
    except CheckpointError as err:
        raise CheckpointError(f"{src}: {err} (format {fmt}; keys start with {sorted(raw)[:3]})") from err
    src_in = arch.pop("in_channels")
    if src_modalities is None:
        src_modalities = _SOURCE_MODALITIES[fmt].get(src_in, None)
    src_names = list(src_modalities) if src_modalities is not None else None
    if src_names is not None and len(src_names) != src_in:
        raise ValueError(f"{src}: {src_in} input channels but src_modalities {src_names}")

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model("swinunetr", in_channels=int(in_channels), out_channels=int(out_channels), **arch)
    target = model.state_dict()
    report = ImportReport(model_config=dict(model.config), src_modalities=src_names, modalities=modalities)
    report.unexpected = [k for k in state if k not in target]
    written = dict(target)
    bad_shapes = []
    for key, value in state.items():
        if key not in target:
            continue
        if key in model.input_conv_keys and tuple(value.shape) != tuple(target[key].shape):
            # The first layer across contrasts: the kit's one transfer (names, relatives, sum kept).
            names = src_names or [f"input{i}" for i in range(value.shape[1])]
            mapped = transfer_input_channels(value, names, modalities)
            report.transferred.append((key, tuple(value.shape), tuple(mapped.shape)))
            value = mapped
        if tuple(value.shape) != tuple(target[key].shape):
            bad_shapes.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
            continue
        written[key] = value.to(target[key].dtype)
        report.matched.append(key)
    encoder_missing = [k for k in target if k.startswith("swinViT.") and k not in state]
    if bad_shapes or encoder_missing:
        raise CheckpointError(
            f"{src}: not a complete SwinUNETR encoder in the {fmt} layout: "
            + (f"{len(encoder_missing)} encoder tensors missing ({', '.join(encoder_missing[:4])}) " if encoder_missing else "")
            + (f"{len(bad_shapes)} with another shape ({'; '.join(bad_shapes[:4])})" if bad_shapes else "")
        )
    report.missing = [k for k in target if k not in state]
    save_checkpoint(
        out,
        model_config=model.config,
        state_dict=written,
        extra={
            "modalities": modalities,
            "imported": {"format": fmt, "source": str(src.resolve()), "src_modalities": src_names,
                         "notes": notes, "decoder_seed": int(seed),
                         "unexpected": report.unexpected, "missing": report.missing},
        },
    )
    report.out = out
    return report
