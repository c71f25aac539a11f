"""Reading one NIfTI file for validation: every file-level problem found, named with its path.

The checks themselves are :mod:`kit.data.nifti_checks` (shared with the training cache);
:func:`read_volume` applies them in order to one file and keeps what the dataset-level checks of
:mod:`kit.data.validate` need (shape, affine, spacing, label values).

Example:
    >>> str(Problem("/d/s1/s1_t1.nii.gz", "missing t1 image", "s1"))
    '/d/s1/s1_t1.nii.gz: missing t1 image'
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from kit.data.nifti_checks import data_problem, file_problem, header_problem, spatial_shape

__all__ = ["Problem", "Volume", "printable", "error_text", "fmt_shape", "read_volume"]


def printable(text: str) -> str:
    """``text`` safe to print under any locale: bytes of non-UTF-8 file names become ``\\xNN``.

    Python decodes such names with surrogate escapes, which a strict UTF-8 stream cannot encode.

    Example:
        >>> printable("/data/sub-\\udcff01/t1.nii.gz")
        '/data/sub-\\\\xff01/t1.nii.gz'
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class Problem:
    """One finding: the file (or folder) concerned, what is wrong, and the subject if any.

    Example:
        >>> str(Problem("/d/s1/s1_t1.nii.gz", "missing t1 image", "s1"))
        '/d/s1/s1_t1.nii.gz: missing t1 image'
    """

    path: str
    reason: str
    subject: str | None = None

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.reason}")


def error_text(error: Exception, path: str) -> str:
    """One-line 'Type: message' with the (already reported) path shortened to its basename."""
    message = " ".join(str(error).replace(path, os.path.basename(path)).split())
    return f"{type(error).__name__}: {message}"


def fmt_shape(shape) -> str:
    """``(3, 4, 5)`` as ``'3x4x5'``."""
    return "x".join(str(int(s)) for s in shape)


@dataclass
class Volume:
    """What the checks need from one file once its data are decoded and dropped."""

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, ...]
    label_values: np.ndarray | None = None      # unique integer values (labels only)
    n_foreground: int = 0                       # labels only
    bad: bool = False                           # a problem was recorded: skip further checks


def read_volume(path: str, ndim: int, is_label: bool, problems: list, warnings: list,
                 subject: str) -> Volume | None:
    """Read one NIfTI in full and record its file-level problems; None when unreadable.

    Problems go to ``problems``, notes (squeezed axes) to ``warnings``; the data are decoded in full
    (a truncated ``.nii.gz`` only shows then) and dropped, keeping what :class:`Volume` holds.
    """
    reason = file_problem(path)  # before nibabel: permissions, empty, gzip naming, impossible sizes
    if reason is not None:
        problems.append(Problem(path, reason, subject))
        return None
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises many types for non-images; report, never crash
        text = error_text(error, path)
        if "data code" in text and "not supported" in text:
            problems.append(Problem(path, f"unsupported NIfTI data type ({text})", subject))
        else:
            problems.append(Problem(path, f"unreadable: not a NIfTI image ({text})", subject))
        return None
    if not hasattr(image, "dataobj") or not hasattr(image, "affine") or image.affine is None:
        problems.append(Problem(path, f"unreadable: {type(image).__name__} has no voxel data/affine",
                                subject))
        return None
    reason = header_problem(image, ndim)  # shape rule shared with the cache, dtype, geometry
    if reason is not None:
        problems.append(Problem(path, reason, subject))
        return Volume(path, tuple(int(s) for s in image.shape), np.eye(4), (), bad=True)
    try:
        data = np.asanyarray(image.dataobj)  # decodes everything: truncation shows only here
    except Exception as error:
        problems.append(Problem(path, f"truncated or corrupt image data ({error_text(error, path)})",
                                subject))
        return None

    volume = Volume(path, tuple(int(s) for s in data.shape), np.asarray(image.affine, float),
                     tuple(float(z) for z in image.header.get_zooms()[:ndim]))
    if data.ndim > ndim:  # header_problem accepted it: only trailing singleton axes
        warnings.append(Problem(path, f"shape {fmt_shape(data.shape)} has trailing singleton "
                                      f"axes; squeezed to {ndim}D", subject))
        data = data.reshape(spatial_shape(data.shape, ndim))
        volume.shape = tuple(int(s) for s in data.shape)

    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            n_nan = int(np.count_nonzero(np.isnan(data)))
            problems.append(Problem(path, f"{n_bad} non-finite voxels (NaN: {n_nan}, inf: "
                                          f"{n_bad - n_nan}) of {data.size}", subject))
            volume.bad = True
            return volume
    reason = data_problem(data, image, is_label)  # all zero; finite on disk, inf as float32
    if reason is not None:
        problems.append(Problem(path, reason, subject))
        volume.bad = True
        return volume

    if is_label:
        if not np.issubdtype(data.dtype, np.integer):
            fractional = data != np.rint(data)
            if fractional.any():
                examples = np.unique(data[fractional])[:5]
                problems.append(Problem(
                    path, f"non-integer label values ({int(np.count_nonzero(fractional))} voxels, "
                          f"e.g. {', '.join(f'{v:g}' for v in examples)}); a label map holds "
                          "integers", subject))
                volume.bad = True
                return volume
            data = data.astype(np.int64)
        flat = data.reshape(-1)
        low, high = int(flat.min()), int(flat.max())
        if low >= 0 and high < 65536:  # bincount is ~10x faster than unique on 10M voxels
            volume.label_values = np.flatnonzero(np.bincount(flat))
        else:
            volume.label_values = np.unique(flat)
        volume.n_foreground = int(np.count_nonzero(flat))
    return volume
