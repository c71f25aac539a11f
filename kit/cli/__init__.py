"""The ``kit`` command: ``kit synth``, ``kit validate``, ``kit predict``, ``kit reproduce``.

The spellings of the subcommands and flags are a user-facing contract: keep them.
Heavy imports happen inside each subcommand so ``kit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count or a number of seconds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_synth(args: argparse.Namespace) -> int:
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


def _cmd_validate(args: argparse.Namespace) -> int:
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


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import signal

    from kit.pipeline import NotebookFailed, reproduce

    # SIGTERM (a closed session, `kill`) ends the run as Ctrl-C does: the stage is marked interrupted with
    # the time it ran, and the next `kit reproduce` resumes it
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        report = reproduce(
            profile=args.profile,
            out=args.out,
            data_root=args.data_root,
            device=args.device,
            from_stage=args.from_stage,
            to_stage=args.to_stage,
            seed=args.seed,
            cell_timeout_s=args.cell_timeout,
            notebooks_dir=args.notebooks,
            progress=not args.quiet,
            force=args.force or (),
            extra_inits=_named_paths(args.init),
            objective=args.objective,
        )
    except (NotebookFailed, ValueError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"kit reproduce: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kit reproduce: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"report: {report}")
    return 0


def _named_paths(items: list[str] | None) -> dict[str, str]:
    """``NAME=PATH`` strings (``kit reproduce --init``) as ``{name: absolute path}``; the path must exist."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--init expects NAME=CHECKPOINT, got {item!r}")
        if not Path(path).is_file():
            raise ValueError(f"--init {name}: {path} does not exist")
        out[name] = str(Path(path).resolve())
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kit`` command (exposed for tests and docs)."""
    from kit.pipeline import PROFILES, STAGES

    parser = argparse.ArgumentParser(prog="kit", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (any position)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic cohort as NIfTI in a real dataset's layout")
    p.add_argument("--cohort", required=True, choices=["healthy", "tumor", "stroke"])
    p.add_argument("--layout", required=True, choices=["brats2021", "brats2023", "atlas2", "ukb", "flat"])
    p.add_argument("--n", type=_positive_int, required=True, help="number of subjects")
    p.add_argument("--out", required=True, type=Path, help="output directory (the data root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=float, default=1.0, help="voxel size in mm (1 = full, 2-4 = smoke)")
    p.add_argument("--workers", type=_positive_int, default=1, help="subjects generated in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("validate", help="check a data directory against a manifest; write a datalist")
    p.add_argument("--manifest", required=True, help="path to a data_manifests/*.yaml file, or its name")
    p.add_argument("--root", required=True, type=Path, help="the data root the manifest's patterns start from")
    p.add_argument("--datalist", type=Path, default=None, help="write a MONAI decathlon-style datalist here")
    p.set_defaults(func=_cmd_validate)

    from kit.predict_cli import add_predict_parser

    add_predict_parser(sub)

    from kit.interop import add_interop_parsers

    add_interop_parsers(sub)  # import-weights, export-bundle, pretrain

    profiles = "\n".join(f"  {name:9} {PROFILES[name].get('description', '')}" for name in PROFILES)
    p = sub.add_parser(
        "reproduce", help="run the notebooks in order with papermill",
        description="Run notebooks 01-05 in order with papermill into one run folder (a rerun skips the stages "
        "already done with the same settings).",
        epilog=f"profiles:\n{profiles}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--data-root", default=None, help="validated real data (default: synthetic cohorts)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--from", dest="from_stage", default=None, help=f"resume at this stage: {', '.join(STAGES)} (or 01..05)")
    p.add_argument("--to", dest="to_stage", default=None, help="stop after this stage (same names)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell-timeout", type=_positive_int, default=None, help="seconds per cell (default: the profile's)")
    p.add_argument("--notebooks", type=Path, default=None, help="notebooks folder (default: the checkout's)")
    p.add_argument("--force", action="append", default=None, metavar="STAGE",
                   help="redo this stage even if done (repeatable); later stages of the call are redone too")
    p.add_argument("--objective", default=None,
                   help="SSL objective of stages 02-03: swin_trio (the profile's default), cross_contrast, mim, "
                        "anatomy_hierarchy, moco_v3 (2D, on the curated slices)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--init", action="append", metavar="NAME=CKPT",
                   help="another fine-tuning initialisation for notebook 04 (e.g. from kit import-weights); repeatable")
    p.set_defaults(func=_cmd_reproduce)
    return parser


def _one_line(err: BaseException) -> str:
    """An error as one line without terminal colour codes; bugs (not user mistakes) keep their type."""
    from kit.pipeline import strip_ansi

    text = " ".join(strip_ansi(str(err)).split()) or type(err).__name__
    user_mistake = isinstance(err, (ValueError, OSError, KeyError, RuntimeError, ImportError))
    return text if user_mistake else f"{type(err).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kit`` console script. Returns the process exit code.

    Any error becomes one line ``kit COMMAND: what went wrong`` and exit code 1; ``--debug``
    (before or after the subcommand) shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    args.debug = debug
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"kit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(f"kit {args.command}: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
