"""Command-line parsers of ``kit import-weights``, ``kit export-bundle`` and ``kit pretrain``.

The work is done in :mod:`kit.models.imports`, :mod:`kit.bundle` and :mod:`kit.train.pretrain`;
this module only turns arguments into calls and errors into one line and an exit code.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="kit")
    >>> add_interop_parsers(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["pretrain", "--profile", "smoke", "--stage", "1", "--out", "runs/x"]).stage
    1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Published weight layouts that kit import-weights reads (kit.models.imports documents each).
FORMATS = ("monai-ssl", "brainsegfounder")

__all__ = ["FORMATS", "add_interop_parsers", "import_main", "export_main", "pretrain_main", "parse_overrides",
           "checked_overrides"]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict; values are read as JSON when they parse, else kept as text.

    Example:
        >>> parse_overrides(["steps=3", "crop=16", "lr=1e-3", "objective=swin_trio"])
        {'steps': 3, 'crop': 16, 'lr': 0.001, 'objective': 'swin_trio'}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def checked_overrides(items: list[str] | None) -> dict[str, Any]:
    """:func:`parse_overrides` with each setting typed against the stage schema
    (:func:`kit.train.checks.check_setting`); a refusal names the ``--set`` item as typed.

    Example:
        >>> checked_overrides(["steps=3"])
        {'steps': 3}
        >>> checked_overrides(["steps=abc"])
        Traceback (most recent call last):
        ...
        ValueError: --set steps=abc: steps must be a positive integer
    """
    from kit.train.checks import check_setting

    out: dict[str, Any] = {}
    for item in items or []:
        for key, value in parse_overrides([item]).items():
            try:
                check_setting(key, value)
            except ValueError as err:
                raise ValueError(f"--set {item}: {err}") from None
            out[key] = value
    return out


def import_main(args: argparse.Namespace) -> int:
    """``kit import-weights``: convert, print the key report; exit 1 with one line on bad input."""
    from kit.models.checkpoints import CheckpointError
    from kit.models.imports import import_weights

    try:
        report = import_weights(
            args.format, args.src, args.in_channels, args.out,
            modalities=args.modalities, src_modalities=args.src_modalities, seed=args.seed,
        )
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointError) as err:
        print(f"kit import-weights: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def export_main(args: argparse.Namespace) -> int:
    """``kit export-bundle``: write the MONAI bundle; exit 1 with one line on bad input."""
    from kit.bundle import export_bundle
    from kit.models.checkpoints import CheckpointError

    try:
        out = export_bundle(args.checkpoint, args.out, spacing=args.spacing)
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointError) as err:
        print(f"kit export-bundle: {err}", file=sys.stderr)
        return 1
    print(f"wrote a MONAI bundle to {out}; run it with:\n"
          f"python -m monai.bundle run --bundle_root {out} --config_file {out}/configs/inference.json "
          f"--meta_file {out}/configs/metadata.json --dataset_dir SUBJECTS --output_dir OUT")
    return 0


def pretrain_main(args: argparse.Namespace) -> int:
    """``kit pretrain``: one SSL stage from the run's datalist (under torchrun or not)."""
    from kit.models.checkpoints import CheckpointError
    from kit.train.distributed import cleanup, is_main
    from kit.train.pretrain import pretrain_stage

    try:
        summary = pretrain_stage(
            args.profile, args.stage, args.out, objective=args.objective, device=args.device, seed=args.seed,
            overrides=checked_overrides(args.set), init_checkpoint=args.init, progress=not args.quiet,
        )
    except (FileNotFoundError, KeyError, ValueError, CheckpointError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError's str() adds quotes
        print(f"kit pretrain: {message}", file=sys.stderr)
        cleanup()
        return 1
    if is_main():
        keep = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
        print(json.dumps(keep, default=str))
    cleanup()
    return 0


def add_interop_parsers(sub: Any) -> None:
    """Add ``import-weights``, ``export-bundle`` and ``pretrain`` to the ``kit`` subparsers."""
    from kit.pipeline import PROFILES

    p = sub.add_parser("import-weights", help="convert published SwinUNETR weights into a kit checkpoint")
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument("--src", required=True, type=Path, help="the published file (e.g. model_swinvit.pt)")
    p.add_argument("--in-channels", required=True, type=int, help="input contrasts of the kit checkpoint")
    p.add_argument("--out", required=True, type=Path, help="kit checkpoint to write (never overwritten)")
    p.add_argument("--modalities", nargs="+", default=None,
                   help="names of the input channels, in order (default: flair t1ce t1 t2 for 4, t1 flair for 2)")
    p.add_argument("--src-modalities", nargs="+", default=None, help="names of the source's input channels")
    p.add_argument("--seed", type=int, default=0, help="seed of the decoder's initialisation")
    p.set_defaults(func=import_main)

    p = sub.add_parser("export-bundle", help="write a MONAI bundle from a segmentation checkpoint")
    p.add_argument("--checkpoint", required=True, type=Path, help="fine-tuned segmentation checkpoint (.pt)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create (must not exist)")
    p.add_argument("--spacing", type=float, nargs=3, default=None,
                   help="voxel spacing in mm the model was trained at, recorded in metadata.json (default: the checkpoint's, or 1 1 1)")
    p.set_defaults(func=export_main)

    p = sub.add_parser("pretrain", help="one SSL pretraining stage from RUN's datalist (runs under torchrun)")
    p.add_argument("--profile", required=True, choices=sorted(PROFILES))
    p.add_argument("--stage", required=True, type=int, choices=[1, 2])
    p.add_argument("--out", required=True, type=Path, help="the run directory (with 01_curation/datalist.json)")
    p.add_argument("--objective", default=None, help="SSL objective registered in kit.ssl (default: the profile's, swin_trio)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="initial weights (default: stage 2 starts from RUN/02_stage1/checkpoint.pt, stage 1 from scratch)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting of the profile's stage (JSON values), e.g. --set steps=100 --set batch_size=2")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=pretrain_main)
