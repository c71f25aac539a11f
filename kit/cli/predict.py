"""``kit predict``: its parser and entry point.

The work is :mod:`kit.deploy.predict`, imported when the command runs, so that ``kit --help`` builds every
parser without importing torch (several seconds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kit.cli.common import one_line

__all__ = ["add_predict_parser", "predict_main"]

def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``kit predict`` to an ``argparse`` subparsers object; the parser's ``func`` is :func:`predict_main`.

    Example:
        >>> parser = argparse.ArgumentParser(prog="kit")
        >>> p = add_predict_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["predict", "--checkpoint", "c.pt", "--inputs", "a.nii.gz", "--out", "o.nii.gz"])
        >>> args.func is predict_main, args.inputs
        (True, ['a.nii.gz'])
    """
    p = subparsers.add_parser(
        "predict",
        help="segment scans with a fine-tuned checkpoint",
        description="Segment one subject (--inputs ... --out FILE) or a whole dataset "
        "(--manifest M --root DIR --out DIR) with a fine-tuned segmentation checkpoint.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="fine-tuned segmentation checkpoint (.pt)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", nargs="+", default=None, help="NIfTI files, one per contrast, in the checkpoint's order")
    source.add_argument("--manifest", default=None, help="data_manifests/*.yaml path or shipped name (with --root)")
    p.add_argument("--root", type=Path, default=None, help="dataset root (with --manifest)")
    p.add_argument("--out", required=True, type=Path, help="output .nii.gz (with --inputs) or folder (with --manifest)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the checkpoint's)")
    p.add_argument("--sw-batch-size", type=int, default=None, help="windows per forward pass (default: 4 on a GPU, 1 on a CPU)")
    p.add_argument("--threshold", type=float, default=0.5, help="region probability threshold")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=predict_main)
    return p


def predict_main(args: argparse.Namespace) -> int:
    """Run ``kit predict``; returns the exit code (0 done, 1 problems or errors, 2 bad usage).

    With ``--manifest``, validation problems are printed (one line each: file, what is wrong) and
    the exit code is 1 when there was any, even though the clean subjects were written.
    """
    from kit.deploy.predict import PredictOptions, predict_dataset, predict_files
    from kit.models.checkpoints import CheckpointError

    options = PredictOptions(device=args.device, amp=args.amp, overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                             threshold=args.threshold, overwrite=getattr(args, "overwrite", False))
    try:
        if args.inputs:
            out = predict_files(args.checkpoint, args.inputs, args.out, options)
            print(f"wrote {out}")
            return 0
        if args.root is None:
            print("kit predict: --manifest needs --root DIR (the dataset root)", file=sys.stderr)
            return 2
        summary = predict_dataset(args.checkpoint, args.manifest, args.root, args.out, options,
                                  progress=not args.quiet)
    except (FileNotFoundError, ValueError, CheckpointError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"kit predict: {one_line(err)}", file=sys.stderr)
        return 1
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in summary["problems"]:
        print(problem)
    print(f"wrote {len(summary['written'])} label maps to {args.out}; {len(summary['problems'])} problems",
          file=sys.stderr)
    return 1 if summary["problems"] or not summary["written"] else 0
