"""``kit reproduce`` and ``kit pretrain``: a whole run (the notebooks chained, :mod:`kit.run`) or one stage of it.

The work is :func:`kit.run.pipeline.reproduce` and :func:`kit.train.pretrain.pretrain_stage`, imported when the
command runs; the profile, stage and objective names the parsers offer are read without importing torch.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="kit")
    >>> add_run_parsers(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["pretrain", "--profile", "smoke", "--stage", "1", "--out", "runs/x"]).stage
    1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kit.cli.common import one_line, positive_int
from kit.cli.constants import OBJECTIVES

__all__ = ["add_run_parsers", "reproduce_main", "pretrain_main", "parse_overrides", "checked_overrides"]


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


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def reproduce_main(args: argparse.Namespace) -> int:
    """``kit reproduce``: the notebooks in order into one run folder; exit 1 with one line on a refusal."""
    import signal

    from kit.run.pipeline import NotebookFailed, reproduce

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
        print(f"kit reproduce: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kit reproduce: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"report: {report}")
    return 0


def pretrain_main(args: argparse.Namespace) -> int:
    """``kit pretrain``: one SSL stage from the run's datalist (under torchrun or not)."""
    from kit.models.checkpoints import CheckpointError
    from kit.run.profiles import validate_profile
    from kit.train.distributed import cleanup, is_main
    from kit.train.pretrain import pretrain_stage
    from kit.profiles import PROFILES

    try:
        validate_profile(args.profile, PROFILES[args.profile])  # every key, as kit reproduce checks them
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


def add_run_parsers(sub: Any) -> None:
    """Add ``reproduce`` and ``pretrain`` to the ``kit`` subparsers."""
    from kit.profiles import PROFILES
    from kit.stages import STAGES

    objectives = ", ".join(OBJECTIVES)
    profiles = "\n".join(f"  {name:9} {PROFILES[name].get('description', '')}" for name in PROFILES)
    p = sub.add_parser("pretrain", help="one SSL pretraining stage from RUN's datalist (runs under torchrun)")
    p.add_argument("--profile", required=True, choices=sorted(PROFILES))
    p.add_argument("--stage", required=True, type=int, choices=[1, 2])
    p.add_argument("--out", required=True, type=Path, help="the run directory (with 01_curation/datalist.json)")
    p.add_argument("--objective", default=None, help=f"SSL objective registered in kit.ssl: {objectives} "
                   "(default: the profile's, swin_trio)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="initial weights (default: stage 2 starts from RUN/02_stage1/checkpoint.pt, stage 1 from scratch)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting of the profile's stage (JSON values), e.g. --set steps=100 --set batch_size=2")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=pretrain_main)

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
    p.add_argument("--cell-timeout", type=positive_int, default=None, help="seconds per cell (default: the profile's)")
    p.add_argument("--notebooks", type=Path, default=None, help="notebooks folder (default: the checkout's)")
    p.add_argument("--force", action="append", default=None, metavar="STAGE",
                   help="redo this stage even if done (repeatable); later stages of the call are redone too")
    p.add_argument("--objective", default=None,
                   help=f"SSL objective of stages 02-03: one of {objectives} (default: the profile's, swin_trio; "
                        "moco_v3 is 2D, on the curated slices)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--init", action="append", metavar="NAME=CKPT",
                   help="another fine-tuning initialisation for notebook 04 (e.g. from kit import-weights); repeatable")
    p.set_defaults(func=reproduce_main)
