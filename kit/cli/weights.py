"""``kit import-weights`` and ``kit export-bundle``: published weights in, MONAI bundles out.

The work is done in :mod:`kit.models.imports` and :mod:`kit.deploy.bundle`; this module only turns arguments
into calls and errors into one line and an exit code.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="kit")
    >>> add_weights_parsers(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["export-bundle", "--checkpoint", "c.pt", "--out", "b"]).spacing is None
    True
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kit.cli.constants import FORMATS

__all__ = ["add_weights_parsers", "import_main", "export_main"]


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
    from kit.deploy.bundle import export_bundle
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


def add_weights_parsers(sub: Any) -> None:
    """Add ``import-weights`` and ``export-bundle`` to the ``kit`` subparsers."""
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
