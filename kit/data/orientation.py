"""Voxel-axis orientation: every array the kit computes on is RAS+ (closest canonical).

NIfTI files store voxels in any axis order and direction (BraTS volumes are often LPS, many
scanners write LAS or PSR). The kit reorients every loaded volume to the closest canonical RAS+
order (axis 0 runs to the patient's Right, 1 to Anterior, 2 to Superior; a permutation and flips
only, never a resampling) and maps results back to the input's own orientation when it writes
them. This is what ``nibabel.as_closest_canonical`` and MONAI's ``Orientation(axcodes="RAS")``
do; these helpers work on plain arrays so that the cache, ``kit predict`` and the figures share
one definition.

Example:
    >>> import numpy as np
    >>> lps = np.diag([-2.0, -2.0, 2.0, 1.0])                 # voxel axes run to L, P, S
    >>> data = np.arange(24).reshape(2, 3, 4)
    >>> ras, ras_affine = to_ras(data, lps)
    >>> axcodes(ras_affine), ras.shape
    (('R', 'A', 'S'), (2, 3, 4))
    >>> back = from_ras(ras, lps)
    >>> bool((back == data).all())
    True
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

__all__ = ["load_ras", "axcodes", "to_ras", "from_ras", "ras_affine", "ras_shape", "ras_transform"]


def axcodes(affine: np.ndarray) -> tuple[str, ...]:
    """The direction each voxel axis runs towards, e.g. ``('L', 'P', 'S')``, from a 4x4 affine.

    Example:
        >>> axcodes(np.eye(4))
        ('R', 'A', 'S')
    """
    return tuple(nib.aff2axcodes(np.asarray(affine, dtype=float)))


def ras_transform(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform ``[[axis, flip], ...]`` taking voxel axes of ``affine`` to RAS+.

    Example:
        >>> ras_transform(np.diag([-1.0, 1, 1, 1])).tolist()
        [[0.0, -1.0], [1.0, 1.0], [2.0, 1.0]]
    """
    return nio.ornt_transform(nio.io_orientation(np.asarray(affine, dtype=float)), nio.axcodes2ornt("RAS"))


def ras_shape(shape, affine: np.ndarray) -> tuple[int, int, int]:
    """The spatial shape a volume of ``shape`` (file voxel order) has once reoriented to RAS+.

    Example:
        >>> ras_shape((10, 20, 30), np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
        (20, 10, 30)
    """
    ornt = ras_transform(affine)
    out = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = int(shape[axis])
    return tuple(out)


def ras_affine(affine: np.ndarray, shape) -> np.ndarray:
    """The affine of a volume of ``shape`` (file voxel order) once reoriented to RAS+ (same world).

    Example:
        >>> ras_affine(np.diag([-2.0, 2, 2, 1]), (10, 10, 10))[0].tolist()
        [2.0, 0.0, 0.0, -18.0]
    """
    affine = np.asarray(affine, dtype=float)
    return affine @ nio.inv_ornt_aff(ras_transform(affine), tuple(int(s) for s in shape[:3]))


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``data`` (X, Y, Z[, ...]) with voxel-to-world ``affine`` to RAS+ voxel order.

    Only axis permutations and flips (no interpolation); trailing axes (channels, time) are kept.

    Args:
        data: array whose first three axes are the voxel axes of ``affine``.
        affine: 4x4 voxel-to-world (mm) matrix.

    Returns:
        ``(ras_data, ras_affine)``: the array in RAS+ order and the affine that maps its voxels to
        the same world coordinates.

    Example:
        >>> d, a = to_ras(np.zeros((2, 3, 4)), np.diag([1.0, -1.0, 1.0, 1.0]))
        >>> axcodes(a)
        ('R', 'A', 'S')
    """
    affine = np.asarray(affine, dtype=float)
    ornt = ras_transform(affine)
    if np.array_equal(ornt, nio.axcodes2ornt("RAS")):
        return data, affine
    shape = np.asarray(data).shape[:3]
    ras = nio.apply_orientation(data, ornt)
    return ras, affine @ nio.inv_ornt_aff(ornt, shape)


def from_ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_ras`: put a RAS+ array back in the voxel order of the original ``affine``.

    Args:
        data: array in RAS+ voxel order (as returned by :func:`to_ras` or computed from it).
        affine: the ORIGINAL (input file's) 4x4 affine.

    Example:
        >>> lps = np.diag([-1.0, -1.0, 1.0, 1.0])
        >>> x = np.random.rand(3, 4, 5)
        >>> bool(np.array_equal(from_ras(to_ras(x, lps)[0], lps), x))
        True
    """
    back = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.io_orientation(np.asarray(affine, dtype=float)))
    return nio.apply_orientation(data, back)


def load_ras(path, dtype=np.float32) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a NIfTI file as a RAS+ array: ``(data, voxel size in mm (x, y, z), RAS+ affine)``.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "lps.nii.gz")
        >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([-2.0, -2.0, 3.0, 1.0])), p)
        >>> data, spacing, affine = load_ras(p)
        >>> data.shape, spacing, axcodes(affine)
        ((4, 5, 6), (2.0, 2.0, 3.0), ('R', 'A', 'S'))
    """
    img = nib.load(str(path))
    data, affine = to_ras(np.asanyarray(img.dataobj, dtype=dtype), img.affine)
    spacing = tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
    return data, spacing, affine
