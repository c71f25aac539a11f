"""The study's result tables (``results.csv``, ``curves.csv``, ``per_subject.csv``, the probes' and the slice
study's), every write through the kit's one atomic writer (:func:`kit.tempfiles.atomic_write`): a reader, or a
study killed mid-write, sees a table before or after a write, never half of it.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "results.csv"
    >>> append_row(path, {"init": "scratch", "task": "seg", "label_fraction": 0.5, "seed": 0, "dice": 0.25})
    >>> append_row(path, {"init": "stage1", "task": "seg", "label_fraction": 0.5, "seed": 0, "dice": 0.5})
    >>> sorted(done_keys(path))
    [('scratch', 'seg', 0.5, 0), ('stage1', 'seg', 0.5, 0)]
    >>> drop_rows(path, {("scratch", "seg", 0.5, 0)})
    >>> path.read_text().splitlines()
    ['init,task,label_fraction,seed,dice', 'stage1,seg,0.5,0,0.5']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kit.tempfiles import atomic_write, write_text_atomic

__all__ = ["row_key", "done_keys", "drop_rows", "append_row", "add_rows", "write_json"]


def row_key(row) -> tuple:
    """A results row's key: ``(init, task, label_fraction, seed)``."""
    return str(row.init), str(row.task), float(row.label_fraction), int(row.seed)


def done_keys(path: Path) -> dict[tuple, str | None]:
    """The runs a results table holds: key -> the settings id it ran with (None: a table from before ids)."""
    if not path.exists():
        return {}
    done = pd.read_csv(path)
    ids = done["settings_id"] if "settings_id" in done else pd.Series([None] * len(done))
    return {row_key(r): (None if pd.isna(i) else str(i)) for r, i in zip(done.itertuples(), ids)}


def drop_rows(path: Path, keys: set[tuple]) -> None:
    """Remove the rows of ``keys`` (init, task, fraction, seed) from a table, atomically."""
    if not path.exists() or not keys:
        return
    table = pd.read_csv(path)
    with atomic_write(path, fsync=True) as tmp:
        table[[row_key(r) not in keys for r in table.itertuples()]].to_csv(tmp, index=False)


def append_row(path: Path, row: dict) -> None:
    """Add one row to a table through the kit's atomic writer: the rows already there are kept byte for byte
    (never parsed again) and the new one follows in their column order; a new metric column rewrites the
    table with the union. A killed study keeps every finished run, and a reader never sees half a row."""
    frame = pd.DataFrame([row])
    if path.exists():
        columns = list(pd.read_csv(path, nrows=0).columns)
        if set(frame.columns) - set(columns):
            frame, text = pd.concat([pd.read_csv(path), frame], ignore_index=True), ""
        else:
            frame, text = frame.reindex(columns=columns), path.read_text()
    else:
        text = ""
    with atomic_write(path, fsync=True) as tmp:
        Path(tmp).write_text(text + frame.to_csv(index=False, header=not text))


def add_rows(path: Path, rows: Sequence[dict], replace: tuple | None = None) -> None:
    """Add ``rows`` to a table, rewriting it whole with the kit's atomic writer (a reader, or a study
    killed mid-write, sees the table before or after, never half of it; new columns are unioned).
    Rows of the run ``replace`` (init, task, fraction, seed) already there are dropped first (a run
    killed after writing them and rerun)."""
    if not rows:
        return
    frame = pd.DataFrame(list(rows))
    if path.exists():
        old = pd.read_csv(path)
        if replace is not None:
            old = old[[row_key(r) != replace for r in old.itertuples()]]
        frame = pd.concat([old, frame], ignore_index=True)
    with atomic_write(path, fsync=True) as tmp:
        frame.to_csv(tmp, index=False)


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))
