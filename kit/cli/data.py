"""``kit synth`` and ``kit validate``: synthetic cohorts in, checked datasets and datalists out.

The work is :func:`kit.data.synth.synth_cohort` and :func:`kit.data.validate.validate_dataset`, imported when
the command runs.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="kit")
    >>> add_data_parsers(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["synth", "--cohort", "tumor", "--layout", "flat", "--n", "2", "--out", "d"]).n
    2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kit.cli.common import positive_int

__all__ = ["add_data_parsers", "synth_main", "validate_main"]


def synth_main(args: argparse.Namespace) -> int:
    """``kit synth``: write a synthetic cohort in a real dataset's layout."""
    from kit.data.synth import synth_cohort

    ids = synth_cohort(
        args.cohort,
        args.layout,
        n=args.n,
        out=args.out,
        seed=args.seed,
        resolution_mm=args.resolution,
        progress=not args.quiet,
        workers=args.workers,
    )
    print(f"wrote {len(ids)} {args.cohort} subjects in the {args.layout} layout to {args.out}")
    return 0


def validate_main(args: argparse.Namespace) -> int:
    """``kit validate``: one line per problem, a datalist of the clean subjects; exit 1 on any problem."""
    from kit.data.validate import validate_dataset, write_datalist

    result = validate_dataset(args.manifest, args.root, progress=False)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in result.problems:
        print(str(problem))
    if args.datalist:
        out = write_datalist(result, args.datalist)
        print(f"datalist with {len(result.subjects)} clean subjects written to {out}", file=sys.stderr)
    n_bad = len({p.subject or p.path for p in result.problems})
    print(
        f"{len(result.subjects)} clean subjects, {len(result.problems)} problems "
        f"({n_bad} subjects or paths affected), {len(result.warnings)} warnings",
        file=sys.stderr,
    )
    return 0 if result.ok else 1


def add_data_parsers(sub: Any) -> None:
    """Add ``synth`` and ``validate`` to the ``kit`` subparsers."""
    p = sub.add_parser("synth", help="write a synthetic cohort as NIfTI in a real dataset's layout")
    p.add_argument("--cohort", required=True, choices=["healthy", "tumor", "stroke"])
    p.add_argument("--layout", required=True, choices=["brats2021", "brats2023", "atlas2", "ukb", "flat"])
    p.add_argument("--n", type=positive_int, required=True, help="number of subjects")
    p.add_argument("--out", required=True, type=Path, help="output directory (the data root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=float, default=1.0, help="voxel size in mm (1 = full, 2-4 = smoke)")
    p.add_argument("--workers", type=positive_int, default=1, help="subjects generated in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=synth_main)

    p = sub.add_parser("validate", help="check a data directory against a manifest; write a datalist")
    p.add_argument("--manifest", required=True, help="path to a data_manifests/*.yaml file, or its name")
    p.add_argument("--root", required=True, type=Path, help="the data root the manifest's patterns start from")
    p.add_argument("--datalist", type=Path, default=None, help="write a MONAI decathlon-style datalist here")
    p.set_defaults(func=validate_main)
