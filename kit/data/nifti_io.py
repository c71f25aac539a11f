"""Atomic NIfTI writing shared by the synthetic generator and ``kit predict``."""

from __future__ import annotations

from pathlib import Path

from kit.tempfiles import atomic_write

__all__ = ["save_image_atomic"]


def save_image_atomic(image, path: str | Path) -> Path:
    """Save a nibabel image via a temporary file in the same folder and ``os.replace``.

    A run killed mid-write leaves either the old file or none, never a truncated ``.nii.gz``
    (which ``kit validate`` would then have to catch). The temporary name keeps the NIfTI suffix so
    nibabel picks the same format and compression.

    Example:
        >>> save_image_atomic(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), "seg.nii.gz")  # doctest: +SKIP
        PosixPath('seg.nii.gz')
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with atomic_write(path, suffix=f".tmp{suffix}") as tmp:
        nib.save(image, tmp)
    return path
