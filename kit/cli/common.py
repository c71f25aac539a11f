"""What every command of ``kit`` shares: argument types and the one-line form of an error.

Example:
    >>> positive_int("3")
    3
    >>> one_line(ValueError("--out x:\\n  \\x1b[31mexists\\x1b[0m"))
    '--out x: exists'
"""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "one_line"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count or a number of seconds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def one_line(err: BaseException) -> str:
    """An error as one line without terminal colour codes; bugs (not user mistakes) keep their type."""
    from kit.run.pipeline import strip_ansi

    text = " ".join(strip_ansi(str(err)).split()) or type(err).__name__
    user_mistake = isinstance(err, (ValueError, OSError, KeyError, RuntimeError, ImportError))
    return text if user_mistake else f"{type(err).__name__}: {text}"
