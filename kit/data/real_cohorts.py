"""Real datasets at a profile's scale: a seeded subset of subjects, resampled to the profile's voxel size.

A profile says how many subjects each cohort has and at what voxel size the run works (the
workshop: 3 mm). Real data rarely matches (BraTS 2021: 1,251 subjects at 1 mm), so stage 01 takes
a seeded subset of the clean subjects and, when their voxel size differs from the profile's,
writes resampled copies into the run folder in the dataset's own layout (the user's files are
never touched). The copies are validated with the same manifest, so everything downstream reads
them as it reads any dataset.

Example:
    >>> pick_subjects([{"subject": s} for s in "edcba"], 2, seed=0) == pick_subjects([{"subject": s} for s in "abcde"], 2, seed=0)
    True
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["pick_subjects", "needs_resampling", "resample_subjects"]


def pick_subjects(entries: Sequence[dict], n: int, seed: int) -> list[dict]:
    """``n`` entries chosen by a seeded permutation of the subject IDs (all when ``n`` >= their number).

    The choice depends on the IDs and the seed only, not on the order the files were found in.

    Example:
        >>> [e["subject"] for e in pick_subjects([{"subject": f"s{i}"} for i in range(5)], 3, seed=1)]
        ['s0', 's1', 's4']
    """
    ordered = sorted(entries, key=lambda e: str(e["subject"]))
    if n >= len(ordered):
        return ordered
    chosen = np.random.default_rng(seed).permutation(len(ordered))[:n]
    return [ordered[i] for i in sorted(chosen)]


def needs_resampling(spacing_mm: Sequence[float], target_mm: float, tolerance: float = 0.01) -> bool:
    """True when any voxel size differs from ``target_mm`` by more than ``tolerance`` (relative).

    Example:
        >>> needs_resampling((1.0, 1.0, 1.0), 3.0), needs_resampling((3.0, 3.0, 3.0), 3.0)
        (True, False)
    """
    return any(abs(float(s) - target_mm) > tolerance * target_mm for s in spacing_mm)


def _spacing(path: str | Path) -> tuple[float, ...]:
    import nibabel as nib

    return tuple(float(z) for z in nib.load(str(path)).header.get_zooms()[:3])


def resample_subjects(entries: Sequence[dict], source_root: str | Path, target_root: str | Path,
                      target_mm: float) -> Path:
    """Write the entries' images (linear) and labels (nearest) at ``target_mm`` isotropic into ``target_root``.

    Files keep their path relative to ``source_root`` (the dataset's layout), their orientation and
    their data type; a ``participants.tsv`` (or ``.csv``) at the source root is copied. A subject
    already written is skipped, so an interrupted stage 01 resumes.

    Args:
        entries: validated datalist entries with absolute ``image`` paths (and optional ``label``).
        source_root: the dataset's root.
        target_root: where the copies go (inside the run folder).
        target_mm: voxel size in mm.

    Returns:
        ``target_root``.

    Example:
        >>> resample_subjects(result.subjects, "DATA/brats2021", "runs/w/data/tumor", 3.0)  # doctest: +SKIP
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    from kit.data.nifti_io import save_image_atomic

    source_root, target_root = Path(source_root).resolve(), Path(target_root)
    target_root.mkdir(parents=True, exist_ok=True)
    for table in ("participants.tsv", "participants.csv"):
        if (source_root / table).is_file() and not (target_root / table).exists():
            shutil.copyfile(source_root / table, target_root / table)
    for entry in entries:
        files = [(p, "bilinear") for p in entry["image"]] + ([(entry["label"], "nearest")] if entry.get("label") else [])
        for path, mode in files:
            path = Path(path).resolve()
            out = target_root / path.relative_to(source_root)
            if out.exists():
                continue
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
            resample = Spacing(pixdim=(target_mm,) * 3, mode=mode, align_corners=True)
            moved = resample(MetaTensor(np.asarray(data, dtype=np.float32)[None], affine=img.affine))
            array = moved.numpy()[0]
            affine = np.asarray(moved.affine, dtype=float)
            if mode == "nearest" or np.issubdtype(data.dtype, np.integer):
                array = np.rint(array)
            out.parent.mkdir(parents=True, exist_ok=True)
            save_image_atomic(nib.Nifti1Image(array.astype(data.dtype), affine), out)
    return target_root
