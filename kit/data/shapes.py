"""Spatial sizes as plain values: one positive int or 3 of them, as 3 ints (crops, windows, resized inputs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["three_sides"]


def three_sides(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """One positive int or 3 of them as 3 ints; ``name`` says what the size is, for the error.

    Example:
        >>> three_sides(16, "crop"), three_sides([8, 16, 32], "crop")
        ((16, 16, 16), (8, 16, 32))
        >>> three_sides([8, 16], "crop_size")
        Traceback (most recent call last):
        ...
        ValueError: crop_size must be one positive int or 3 of them, got [8, 16]
    """
    out = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{name} must be one positive int or 3 of them, got {value!r}")
    return out  # type: ignore[return-value]
