"""File-level rules for NIfTI volumes, shared by ``kit validate``, the training cache and ``kit predict``.

One place decides what a usable volume is, so that what validation accepts the preprocessing can
load, and what it refuses no later step silently accepts:

* :func:`spatial_shape`: a volume is ``ndim``-D; trailing singleton axes (``X x Y x Z x 1``, as
  some converters write) are squeezed, anything else (a real 4D series, an empty axis) is refused.
  The cache and ``kit predict`` load with :func:`nifti_reader`, which squeezes the same axes.
* :func:`file_problem`: checks on the bytes before nibabel sees them (permissions, an empty file,
  gzip data behind a ``.nii`` name and the reverse, a header that promises more voxels than the
  file can hold, so that a corrupt header cannot make a reader allocate terabytes).
* :func:`header_problem`: data type (complex, multi-component RGB), voxel sizes and affine
  (non-finite, singular), and a qform that disagrees with the sform.
* :func:`data_problem`: decoded voxels that are all zero or that overflow float32 once scaled.

Each returns None or a reason (one line, without the path); callers prefix the file name.

Example:
    >>> spatial_shape((240, 240, 155, 1))
    (240, 240, 155)
    >>> spatial_shape((240, 240, 155, 4))
    Traceback (most recent call last):
    ...
    kit.data.nifti_checks.ShapeError: is 4D (shape 240x240x155x4) where 3D is expected
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np

__all__ = [
    "QFORM_SFORM_TOLERANCE_MM",
    "ShapeError",
    "spatial_shape",
    "corner_shift_mm",
    "nifti_reader",
    "check_volume_files",
    "first_undecodable",
    "file_problem",
    "header_problem",
    "data_problem",
]

#: Largest distance (mm) between where the qform and the sform put a corner voxel.
QFORM_SFORM_TOLERANCE_MM = 1.0
_GZIP_MAGIC = b"\x1f\x8b"
# deflate cannot compress better than about 1032:1; a header that needs more is corrupt
_MAX_DEFLATE_RATIO = 1032
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ShapeError(ValueError):
    """A volume whose shape is not ``ndim``-D after squeezing trailing singleton axes."""


def _fmt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def spatial_shape(shape: Sequence[int], ndim: int = 3) -> tuple[int, ...]:
    """The shape a volume is used with: trailing singleton axes beyond ``ndim`` squeezed.

    Args:
        shape: the shape stored in the file's header.
        ndim: spatial dimensions expected (3 for MRI volumes).

    Raises:
        ShapeError: too few axes, a non-singleton extra axis (4D data), or an axis of length 0.

    Example:
        >>> spatial_shape((16, 16, 10, 1, 1))
        (16, 16, 10)
    """
    shape = tuple(int(s) for s in shape)
    extra = shape[ndim:]
    if len(shape) < ndim or any(s != 1 for s in extra):
        raise ShapeError(f"is {len(shape)}D (shape {_fmt(shape)}) where {ndim}D is expected")
    spatial = shape[:ndim]
    if min(spatial) < 1:
        raise ShapeError(f"shape {_fmt(shape)} has an empty axis")
    return spatial


def nifti_reader():
    """MONAI's ``NibabelReader`` squeezing the axes :func:`spatial_shape` squeezes (for ``LoadImaged``).

    Example:
        >>> from monai.transforms import LoadImaged
        >>> load = LoadImaged(keys="image", reader=nifti_reader(), ensure_channel_first=True, image_only=True)
    """
    from monai.data import NibabelReader

    return NibabelReader(squeeze_non_spatial_dims=True)


def check_volume_files(paths: Sequence[str | os.PathLike], ndim: int = 3) -> None:
    """Apply :func:`file_problem` and :func:`spatial_shape` to each file before a MONAI loader reads it.

    Raises:
        ValueError: ``"PATH: reason"`` for the first file that fails.

    Example:
        >>> check_volume_files(["/nonexistent_t1.nii.gz"])
        Traceback (most recent call last):
        ...
        ValueError: /nonexistent_t1.nii.gz: does not exist
    """
    import nibabel as nib

    for path in paths:
        path = os.fspath(path)
        if not os.path.lexists(path):
            raise ValueError(f"{path}: does not exist")
        reason = file_problem(path)
        if reason is None:
            try:
                reason = header_problem(nib.load(path), ndim)
            except Exception as err:
                reason = f"not a readable NIfTI image ({type(err).__name__}: {' '.join(str(err).split())})"
        if reason is not None:
            raise ValueError(f"{path}: {reason}")


def first_undecodable(paths: Sequence[str | os.PathLike]) -> str | None:
    """The first file whose voxel data cannot be decoded (truncated, corrupt), or None.

    A loader that stacks several files reports a failure without saying which file it was
    reading; this decodes them one by one to name it.

    Example:
        >>> first_undecodable([]) is None
        True
    """
    import nibabel as nib

    for path in paths:
        try:
            np.asanyarray(nib.load(os.fspath(path)).dataobj)
        except Exception:
            return os.fspath(path)
    return None


def _not_a_file(path: str) -> str | None:
    if os.path.isdir(path):
        return "is a directory, where a NIfTI file is expected"
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == 40:  # ELOOP
                return "is a symlink loop, where a NIfTI file is expected"
            return f"is a broken symlink (-> {os.readlink(path)}), where a NIfTI file is expected"
    if os.path.exists(path) and not os.path.isfile(path):
        return "is not a regular file (a device, pipe or socket), where a NIfTI file is expected"
    return None


def _starts_like_nifti(path: str, compressed: bool) -> bool:
    """The first 4 bytes are a NIfTI-1/2 ``sizeof_hdr`` (348 or 540, either byte order)."""
    import gzip
    import struct

    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            head = handle.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and any(struct.unpack(order + "i", head)[0] in (348, 540) for order in "<>")


def file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the file's bytes before it is parsed, or None.

    Example:
        >>> import tempfile
        >>> empty = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        >>> file_problem(empty)
        'is an empty file (0 bytes)'
    """
    import nibabel as nib

    path = os.fspath(path)
    reason = _not_a_file(path)
    if reason:
        return reason
    try:
        with open(path, "rb") as handle:
            magic = handle.read(2)
    except OSError as err:
        return f"cannot read: {err.strerror or type(err).__name__}"
    size = os.path.getsize(path)
    if size == 0:
        return "is an empty file (0 bytes)"
    gzipped = magic == _GZIP_MAGIC
    name = path.lower()
    if name.endswith(".nii") and gzipped and _starts_like_nifti(path, compressed=True):
        return "holds gzip-compressed NIfTI data but is named .nii (rename it to .nii.gz)"
    if name.endswith(".gz") and not gzipped and _starts_like_nifti(path, compressed=False):
        return "is named .nii.gz but holds uncompressed NIfTI data (rename it to .nii)"
    try:
        header = nib.load(path).header
        shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = int(header.get("vox_offset", 0)) if hasattr(header, "get") else 0
    except Exception:
        return None  # unparsable headers are reported by the caller's nibabel error
    needed = offset + int(np.prod([int(s) for s in shape], dtype=np.float64)) * itemsize
    if not gzipped and size < needed:
        return (f"header declares shape {_fmt(shape)} ({needed} bytes with the header) but the file has "
                f"{size} bytes: truncated, or a corrupt header")
    if gzipped and needed > size * _MAX_DEFLATE_RATIO:
        return (f"header declares shape {_fmt(shape)} ({needed / 2**30:.3g} GiB of voxels) but the file is a "
                f"{size}-byte gzip stream, which cannot hold that much: a corrupt header")
    return None


def corner_shift_mm(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance (mm) between where affines ``a`` and ``b`` put the corner voxels of ``shape``.

    Example:
        >>> b = np.eye(4); b[0, 3] = 2.0
        >>> corner_shift_mm(np.eye(4), b, (4, 4, 4))
        2.0
    """
    corners = np.array(list(itertools.product(*[(0, max(int(s) - 1, 0)) for s in shape[:3]])), float)
    corners = np.c_[corners, np.ones(len(corners))]
    return float(np.max(np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1)))


def header_problem(image, ndim: int = 3) -> str | None:
    """What is wrong with a loaded image's header (shape, data type, geometry), or None.

    Args:
        image: a nibabel image (``nib.load``); its voxel data are not read.
        ndim: spatial dimensions expected.

    Example:
        >>> import nibabel as nib
        >>> header_problem(nib.Nifti1Image(np.zeros((4, 4, 4), np.complex64), np.eye(4)))
        'complex data type complex64: an MRI contrast must be real-valued (save the magnitude)'
    """
    try:
        shape = spatial_shape(image.shape, ndim)
    except ShapeError as err:
        return str(err)
    dtype = image.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "V":
        names = ",".join(dtype.names or ()) or str(dtype)
        return f"multi-component data type ({names}): one scalar per voxel is expected, not RGB or vectors"
    if dtype.kind == "c":
        return f"complex data type {dtype}: an MRI contrast must be real-valued (save the magnitude)"
    zooms = np.asarray(image.header.get_zooms()[:ndim], dtype=float)
    if not np.all(np.isfinite(zooms)):
        return f"non-finite voxel size {'x'.join(f'{z:g}' for z in zooms)} mm in the header (pixdim)"
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        return "non-finite affine (NaN or inf in the header's qform/sform): voxel positions are undefined"
    steps = np.linalg.norm(affine[:3, :3], axis=0)  # nibabel reports a zero pixdim as 1: use the affine
    if np.any(zooms <= 0) or np.any(steps < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        return (f"singular affine (voxel size {'x'.join(f'{z:g}' for z in steps)} mm): a zero voxel size "
                "puts a whole axis at one point in space")
    header = image.header
    if "qform_code" in header and int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0:
        qform, sform = header.get_qform(), header.get_sform()
        if np.all(np.isfinite(qform)) and np.all(np.isfinite(sform)):
            shift = corner_shift_mm(qform, sform, shape)
            if shift > QFORM_SFORM_TOLERANCE_MM:
                return (f"qform and sform disagree: they place the grid's corners up to {shift:.3g} mm apart "
                        f"(tolerance {QFORM_SFORM_TOLERANCE_MM:g} mm); tools reading one or the other "
                        "put this image in different places")
    return None


def data_problem(data: np.ndarray, image, is_label: bool) -> str | None:
    """What is wrong with decoded voxels (finite on disk), or None.

    Example:
        >>> import nibabel as nib
        >>> data_problem(np.zeros((4, 4, 4)), None, is_label=False)
        'all voxels are zero (an empty image)'
    """
    if data.dtype.kind == "f" and data.itemsize > 4 and data.size:
        largest = float(np.max(np.abs(data)))
        if largest > _FLOAT32_MAX:
            n = int(np.count_nonzero(np.abs(data) > _FLOAT32_MAX))
            # the proxy holds the scaling nibabel applied (the loaded header's scl_* are reset)
            slope = float(getattr(getattr(image, "dataobj", None), "slope", 1.0))
            inter = float(getattr(getattr(image, "dataobj", None), "inter", 0.0))
            scaled = f" once scaled (scl_slope {slope:g}, scl_inter {inter:g})" if (slope, inter) != (1.0, 0.0) else ""
            return (f"{n} voxels overflow float32{scaled}: largest |value| {largest:.3g} > {_FLOAT32_MAX:.3g}; "
                    "they would become inf in training")
    if not is_label and not np.any(data):
        return "all voxels are zero (an empty image)"
    return None

