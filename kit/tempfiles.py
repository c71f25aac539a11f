"""Atomic writes: every file kit writes goes through :func:`atomic_write`.

An atomic write goes to ``.NAME.PID.RANDOM.tmp`` next to ``NAME`` and is renamed over it
(``os.replace``), so a reader sees the old file or the new one, never half of one. A process
killed mid-write (out of memory, a job scheduler's SIGKILL) leaves that temporary file behind;
:func:`remove_stale_temporaries` deletes such files when their writer process no longer runs, so
they do not pile up next to checkpoints that are rewritten every few hundred steps.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".checkpoint.pt.999999999.ab12.tmp").write_bytes(b"half a checkpoint")
    >>> os.utime(folder / ".checkpoint.pt.999999999.ab12.tmp", (0, 0))
    >>> [p.name for p in remove_stale_temporaries(folder / "checkpoint.pt")]
    ['.checkpoint.pt.999999999.ab12.tmp']
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

__all__ = ["temporary_prefix", "remove_stale_temporaries", "atomic_write", "write_text_atomic"]

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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, suffix: str = ".tmp", fsync: bool = False,
                 directory: bool = False) -> Iterator[Path]:
    """Write ``path`` atomically: the block writes the temporary path it is given, which then replaces ``path``.

    The temporary file is ``.NAME.PID.RANDOM{suffix}`` in ``path``'s folder (the same file system, so
    ``os.replace`` is atomic), created empty with the permissions of a plain ``open`` (umask). When the
    block raises, it is removed and ``path`` is left as it was.

    Args:
        path: the destination (its folder must exist).
        suffix: the temporary name's ending; a writer that picks its format from the name (nibabel)
            needs the destination's, e.g. ``".tmp.nii.gz"``.
        fsync: flush the file to disk before the rename (checkpoints, logs: survives a power cut).
        directory: the block fills a temporary directory instead (created with ``tempfile.mkdtemp``),
            which then takes the place of ``path`` (which must not be a non-empty directory).

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_write(folder / "a.txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
        ('done', ['a.txt'])
        >>> with atomic_write(folder / "a.txt") as tmp:
        ...     _ = tmp.write_text("half")
        ...     raise ValueError("interrupted")
        Traceback (most recent call last):
        ...
        ValueError: interrupted
        >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
        ('done', ['a.txt'])
    """
    path = Path(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=suffix, dir=path.parent))
    else:
        while True:
            tmp = path.with_name(f"{temporary_prefix(path)}{secrets.token_hex(4)}{suffix}")
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:  # pragma: no cover - a 32-bit name collision
                continue
    try:
        yield tmp
        if fsync and not directory:
            descriptor = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(tmp, path)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` with :func:`atomic_write`; returns ``path``.

    Example:
        >>> out = Path(tempfile.mkdtemp()) / "b.json"
        >>> write_text_atomic(out, '{"a": 1}').read_text()
        '{"a": 1}'
    """
    with atomic_write(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


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
