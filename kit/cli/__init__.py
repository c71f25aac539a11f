"""The ``kit`` command, the kit's one entrance from the command line: one module per command family.

* :mod:`kit.cli.data`: ``kit synth``, ``kit validate``;
* :mod:`kit.cli.run`: ``kit reproduce`` (the notebooks chained, :mod:`kit.run`), ``kit pretrain``;
* :mod:`kit.cli.predict`: ``kit predict`` (:mod:`kit.deploy.predict`);
* :mod:`kit.cli.weights`: ``kit import-weights`` (:mod:`kit.models.imports`), ``kit export-bundle``
  (:mod:`kit.deploy.bundle`).

This package is the only place that parses arguments and turns errors into one line; nothing else in the kit
imports it. The spellings of the subcommands and flags are a user-facing contract: keep them. Importing it
imports no torch (the work is imported when a command runs), so ``kit --help`` stays fast; the choices it
offers (profiles, stages, weight formats, objectives) are read from the modules that own them without
importing torch (:mod:`kit.cli.constants`).

Example:
    >>> build_parser().parse_args(["validate", "--manifest", "brats2021", "--root", "data"]).command
    'validate'
"""

from __future__ import annotations

import argparse
import sys

from kit.cli.common import one_line

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kit`` command (exposed for tests and docs)."""
    from kit.cli.data import add_data_parsers
    from kit.cli.predict import add_predict_parser
    from kit.cli.run import add_run_parsers
    from kit.cli.weights import add_weights_parsers

    parser = argparse.ArgumentParser(prog="kit", description="The ``kit`` command: ``kit synth``, ``kit validate``, "
                                     "``kit predict``, ``kit reproduce``.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (any position)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_parsers(sub)  # synth, validate
    add_predict_parser(sub)
    add_weights_parsers(sub)  # import-weights, export-bundle
    add_run_parsers(sub)  # reproduce, pretrain
    return parser


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
        print(f"kit {args.command}: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1
