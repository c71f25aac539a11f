"""Temporary files of atomic writes: named after their writer, removed once that writer is gone.

An atomic write goes to ``.NAME.PID.RANDOM.tmp`` next to ``NAME`` and is renamed over it; a
process killed mid-write (out of memory, a job scheduler's SIGKILL) leaves that temporary file
behind. :func:`remove_stale_temporaries` deletes such files when their writer process no longer
runs, so they do not pile up next to checkpoints that are rewritten every few hundred steps.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".checkpoint.pt.999999999.ab12.tmp").write_bytes(b"half a checkpoint")
    >>> os.utime(folder / ".checkpoint.pt.999999999.ab12.tmp", (0, 0))
    >>> [p.name for p in remove_stale_temporaries(folder / "checkpoint.pt")]
    ['.checkpoint.pt.999999999.ab12.tmp']
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

__all__ = ["temporary_prefix", "remove_stale_temporaries"]

# A file this recent may belong to a writer on another machine (shared file system): keep it.
_MIN_AGE_S = 60.0
# Without a parsable writer pid, only files this old are taken for leftovers.
_ORPHAN_AGE_S = 24 * 3600.0


def temporary_prefix(path: str | os.PathLike) -> str:
    """The prefix of this process's temporary files for ``path``: ``.NAME.PID.``.

    Example:
        >>> temporary_prefix("runs/x/checkpoint.pt") == f".checkpoint.pt.{os.getpid()}."
        True
    """
    return f".{Path(path).name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid < 2**22  # another user's live process (or an impossible pid: not alive)
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete leftover ``.NAME.*.tmp`` files next to ``path`` whose writer is no longer running.

    Args:
        path: the file the temporaries were written for (e.g. ``RUN/02_stage1/checkpoint.pt``).

    Returns:
        The files removed (files that cannot be removed are left and not listed).
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)\.)?.*\.tmp$")
    removed, now = [], time.time()
    for candidate in folder.iterdir():
        found = pattern.match(candidate.name)
        if not found or not candidate.is_file() or candidate.is_symlink():
            continue
        try:
            age = now - candidate.stat().st_mtime
        except OSError:
            continue
        pid = int(found.group(1)) if found.group(1) else None
        stale = age > _ORPHAN_AGE_S or (pid is not None and age > _MIN_AGE_S and not _alive(pid))
        if stale:
            try:
                candidate.unlink()
            except OSError:
                continue
            removed.append(candidate)
    return removed
