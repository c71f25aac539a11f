"""Unlabelled pretraining pools kept apart from every fine-tuning subject, and the provenance of what
was pretrained on them.

A fair test of pretraining needs an unlabelled pool that is large next to the labelled data and that
holds none of the subjects a study labels, validates or tests (BrainSegFounder pretrains stage 1 on
~41,400 UK Biobank subjects for ~1,250 labelled BraTS subjects; its test subjects are not in stage 1).
The kit's synthetic pools are written with subject IDs no labelled cohort uses
(:func:`kit.data.synth.synth_cohort`'s ``first_index``) and a seed of their own, and
:func:`check_disjoint` refuses any overlap, naming the subject.

:func:`write_provenance` records, beside a committed checkpoint, how it was made (command, seed,
commit, machine, pool subjects, steps, crops, wall time, held-out pretext metrics, ``partial`` while
unfinished) with the checkpoint's sha256; :func:`check_provenance` verifies the file against it.

Example:
    >>> check_disjoint({"pool": ["BraTS2021_10000"], "test": ["BraTS2021_00003"]})
    >>> check_disjoint({"pool": ["a", "b"], "validation": ["b"]})
    Traceback (most recent call last):
    ...
    ValueError: subject 'b' is in both 'pool' and 'validation': a pretraining pool must hold no fine-tuning subject
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kit.data.splits import check_disjoint  # noqa: F401  (re-exported: it lives with the other subject splits)
from kit.tempfiles import write_text_atomic

__all__ = ["check_disjoint", "held_out_split", "sha256_of", "PROVENANCE_KEYS", "write_provenance", "check_provenance",
           "machine_description", "git_commit", "COMMITTED_DIR", "committed_checkpoint"]

#: where the repository keeps the pretrained checkpoints made on the pools (``benchmarks/pretrain_pool.py``)
COMMITTED_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "pretraining"

#: what every provenance file holds (``check_provenance`` refuses a file missing any of them)
PROVENANCE_KEYS = ("checkpoint", "sha256", "objective", "command", "seed", "commit", "machine", "pool", "stages",
                   "partial", "pretext_metrics")


def held_out_split(subjects: Sequence[str], n_held_out: int, seed: int) -> tuple[list[str], list[str]]:
    """Split a pool into training subjects and ``n_held_out`` held-out subjects (for pretext metrics on
    subjects the pretraining never saw), deterministically from ``seed``.

    Returns:
        ``(train, held_out)``, each sorted.

    Example:
        >>> train, held = held_out_split([f"s{i}" for i in range(10)], 2, seed=0)
        >>> len(train), len(held), set(train) & set(held)
        (8, 2, set())
    """
    subjects = sorted(str(s) for s in subjects)
    if not 0 < n_held_out < len(subjects):
        raise ValueError(f"held_out_split: n_held_out must be in 1..{len(subjects) - 1}, got {n_held_out}")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x686F6C64])).permutation(len(subjects))
    held = sorted(subjects[i] for i in order[:n_held_out])
    return sorted(set(subjects) - set(held)), held


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> sha256_of(p)[:12]
        'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(root: str | os.PathLike = ".") -> str | None:
    """The commit checked out at ``root`` (``git rev-parse HEAD``), or None outside a git checkout.

    Example:
        >>> git_commit("/") is None or len(git_commit("/")) == 40
        True
    """
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_description() -> str:
    """A short description of this machine: CPU count, the torch device, the platform.

    Example:
        >>> "cpu" in machine_description().lower()
        True
    """
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{os.cpu_count()} CPU cores, {device}, torch {torch.__version__} ({torch.get_num_threads()} threads), " \
           f"{platform.system()} {platform.machine()}"


def write_provenance(path: str | os.PathLike, checkpoint: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write ``path`` (JSON, atomically): ``info`` plus the checkpoint's file name and sha256.

    Args:
        path: the provenance file, conventionally ``provenance.json`` beside the checkpoint.
        checkpoint: the checkpoint it describes (relative name stored).
        info: the other :data:`PROVENANCE_KEYS` (objective, command, seed, commit, machine, pool, stages,
            partial, pretext_metrics) and anything else worth keeping.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "checkpoint.pt").write_bytes(b"w")
        >>> info = {k: None for k in PROVENANCE_KEYS if k not in ("checkpoint", "sha256")}
        >>> p = write_provenance(d / "provenance.json", d / "checkpoint.pt", info)
        >>> check_provenance(p)["checkpoint"]
        'checkpoint.pt'
    """
    path, checkpoint = Path(path), Path(checkpoint)
    record = {"checkpoint": os.path.relpath(checkpoint, path.parent), "sha256": sha256_of(checkpoint), **dict(info)}
    missing = [k for k in PROVENANCE_KEYS if k not in record]
    if missing:
        raise ValueError(f"{path}: provenance lacks {missing}")
    write_text_atomic(path, json.dumps(record, indent=1, default=str) + "\n")
    return path


def check_provenance(path: str | os.PathLike) -> dict:
    """Read a provenance file and check it: every :data:`PROVENANCE_KEYS` present, and the checkpoint's
    sha256 equal to the recorded one.

    Returns:
        The record.

    Raises:
        ValueError: one line naming the file and what is wrong.

    Example:
        >>> check_provenance("benchmarks/results/pretraining/swin_trio/provenance.json")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable provenance file ({err})") from err
    missing = [k for k in PROVENANCE_KEYS if k not in record]
    if missing:
        raise ValueError(f"{path}: provenance lacks {missing}")
    checkpoint = path.parent / record["checkpoint"]
    if not checkpoint.is_file():
        raise ValueError(f"{path}: its checkpoint {checkpoint} does not exist")
    actual = sha256_of(checkpoint)
    if actual != record["sha256"]:
        raise ValueError(f"{path}: {checkpoint.name} has sha256 {actual[:12]}..., the record says {record['sha256'][:12]}...")
    return record


def committed_checkpoint(objective: str, root: str | os.PathLike = COMMITTED_DIR) -> tuple[Path, dict]:
    """The repository's pool-pretrained checkpoint of ``objective`` (stage 1 + 2) and its checked provenance.

    Returns:
        ``(checkpoint path, provenance record)``; the record's ``partial`` is True while the
        pretraining has not reached its budget (the checkpoint is then the last one exported).

    Raises:
        FileNotFoundError: one line naming the folder and the command that makes the checkpoint.
        ValueError: the provenance does not match the file (:func:`check_provenance`).

    Example:
        >>> path, record = committed_checkpoint("swin_trio")  # doctest: +SKIP
        >>> path.name, record["objective"]  # doctest: +SKIP
        ('checkpoint.pt', 'swin_trio')
    """
    folder = Path(root) / objective
    checkpoint = folder / "checkpoint.pt"
    if not checkpoint.is_file() or not (folder / "provenance.json").is_file():
        raise FileNotFoundError(f"{folder}: no committed stage 1+2 checkpoint of {objective!r} (a checkout of the "
                                f"repository holds them; make it with python benchmarks/pretrain_pool.py --objective "
                                f"{objective})")
    record = check_provenance(folder / "provenance.json")
    if record["checkpoint"] != "checkpoint.pt":
        raise FileNotFoundError(f"{folder}: the committed pretraining of {objective!r} has not reached stage 2 yet "
                                f"(provenance describes {record['checkpoint']})")
    return checkpoint, record
