"""MNI152 tissue atlas for the synthetic cohorts, resampled once per resolution.

The maps come from the MNI152 (2009) templates shipped inside the nilearn package (no download):
grey matter, white matter and brain mask probability maps at 1 mm (197 x 233 x 189 voxels).
CSF is the brain mask minus GM minus WM, clipped at 0.

Example:
    >>> atlas = load_atlas(2.0)
    >>> atlas.shape, float(atlas.affine[0, 0])
    ((99, 117, 95), 2.0)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

#: Centre (MNI mm) of the lateral ventricles, measured on the template (CSF > 0.8 components at
#: x = +-11.9, y = -12.2, z = 15.9 mm); age-related enlargement magnifies around it.
VENTRICLE_CENTRE_MM = np.array([0.0, -12.2, 15.9], dtype=np.float32)
#: Reach (mm, Gaussian sigma along x, y, z) of the ventricular enlargement.
VENTRICLE_SPREAD_MM = np.array([18.0, 32.0, 14.0], dtype=np.float32)
#: Margin (mm) kept around the template brain so that deformed brains still fit in the work box.
BOX_MARGIN_MM = 10.0


@dataclass(frozen=True)
class Atlas:
    """Tissue maps on the MNI grid at one resolution.

    Attributes:
        resolution_mm: voxel side in mm.
        affine: 4x4 voxel -> MNI mm (RAS), diagonal spacing = ``resolution_mm``.
        gm, wm: float32 (X, Y, Z) grey- and white-matter probability (0 outside the brain mask).
        mask: float32 (X, Y, Z) brain-mask fraction in [0, 1] (partial volume at coarse resolution).
        box: tuple of 3 slices, the brain bounding box plus ``BOX_MARGIN_MM``, clipped to the grid.
        gm_wm_junction_mm: float32 (K, 3) MNI mm positions at the cortical grey-white junction of the
            cerebrum (z > -10 mm, deep grey nuclei excluded).
        cerebellar_wm_mm: float32 (K, 3) MNI mm positions in the cerebellar white matter.
        cerebral_wm_mm: float32 (K, 3) MNI mm positions in cerebral white matter (WM > 0.6, z > -15 mm).
    """

    resolution_mm: float
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    box: tuple
    gm_wm_junction_mm: np.ndarray
    cerebellar_wm_mm: np.ndarray
    cerebral_wm_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (X, Y, Z) in voxels."""
        return self.mask.shape

    @property
    def csf(self) -> np.ndarray:
        """CSF fraction = clip(mask - GM - WM, 0), float32 (X, Y, Z)."""
        return np.clip(self.mask - self.gm - self.wm, 0.0, None)

    def voxel_to_mm(self, ijk: np.ndarray) -> np.ndarray:
        """Voxel indices (..., 3) -> MNI mm (..., 3)."""
        return np.asarray(ijk, np.float64) @ self.affine[:3, :3].T + self.affine[:3, 3]

    def mm_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """MNI mm (..., 3) -> continuous voxel indices (..., 3)."""
        inv = np.linalg.inv(self.affine)
        return np.asarray(xyz, np.float64) @ inv[:3, :3].T + inv[:3, 3]


def grid_shape(n_voxels_1mm: int, resolution_mm: float) -> int:
    """Number of voxels covering ``n_voxels_1mm`` mm at ``resolution_mm`` (round half up).

    Example:
        >>> grid_shape(197, 2.0), grid_shape(240, 3.0)
        (99, 80)
    """
    return max(1, int(np.floor(n_voxels_1mm / resolution_mm + 0.5)))


@functools.lru_cache(maxsize=1)
def _load_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Imported lazily: nilearn import costs ~1 s and is only needed on the first atlas load.
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
    gm = gm_img.get_fdata(dtype=np.float32)
    if not (gm.shape == wm.shape == mask.shape):
        raise RuntimeError(f"nilearn MNI152 templates disagree in shape: {gm.shape}, {wm.shape}, {mask.shape}")
    return gm, wm, mask, np.asarray(gm_img.affine, np.float64)


def _resample(volume: np.ndarray, resolution_mm: float, out_shape: tuple[int, int, int]) -> np.ndarray:
    """Partial-volume resampling of a 1 mm map to ``resolution_mm`` voxels (corners aligned)."""
    if resolution_mm == 1.0:
        return volume
    if resolution_mm > 1.0:
        # Gaussian with the variance of a box of width r (minus the 1 mm voxel's own) ~ area averaging.
        sigma = np.sqrt((resolution_mm**2 - 1.0) / 12.0)
        volume = ndi.gaussian_filter(volume, sigma, mode="nearest")
    offset = (resolution_mm - 1.0) / 2.0  # centre of output voxel 0 in 1 mm voxel units
    return ndi.affine_transform(volume, np.full(3, resolution_mm), offset=offset, output_shape=out_shape,
                                order=1, mode="grid-constant", cval=0.0, output=np.float32)


@functools.lru_cache(maxsize=8)
def load_atlas(resolution_mm: float = 1.0) -> Atlas:
    """Load the MNI152 GM/WM/mask maps from nilearn and resample them to ``resolution_mm`` (cached).

    Args:
        resolution_mm: voxel side in mm, 0.5 to 8.

    Returns:
        :class:`Atlas` with grid ``round(197/r) x round(233/r) x round(189/r)``.

    Example:
        >>> load_atlas(1.0).shape
        (197, 233, 189)
    """
    resolution_mm = float(resolution_mm)
    if not 0.5 <= resolution_mm <= 8.0:
        raise ValueError(f"resolution_mm must be within [0.5, 8] mm, got {resolution_mm}")
    gm1, wm1, mask1, affine1 = _load_1mm()
    out_shape = tuple(grid_shape(n, resolution_mm) for n in gm1.shape)
    scale = np.diag([resolution_mm] * 3 + [1.0])
    scale[:3, 3] = (resolution_mm - 1.0) / 2.0
    affine = affine1 @ scale

    # C order matters: nibabel returns Fortran-ordered arrays, which make map_coordinates ~5x slower.
    gm, wm, mask = (np.ascontiguousarray(np.clip(_resample(v, resolution_mm, out_shape), 0.0, 1.0))
                    for v in (gm1, wm1, mask1))
    # Tissue outside the brain mask is irrelevant (skull-stripped output) but would leak in warps.
    gm = np.ascontiguousarray(gm * (mask > 0))
    wm = np.ascontiguousarray(wm * (mask > 0))
    brain = mask > 0.5
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0) + 1
    pad = int(np.ceil(BOX_MARGIN_MM / resolution_mm))
    box = tuple(slice(max(0, int(a) - pad), min(n, int(b) + pad)) for a, b, n in zip(lo, hi, out_shape))

    # Candidate lesion positions, taken from the 1 mm maps so they do not depend on the resolution.
    ijk = np.argwhere(brain_1mm := mask1 > 0.5)
    xyz = (ijk @ affine1[:3, :3].T + affine1[:3, 3]).astype(np.float32)
    g, w = gm1[brain_1mm], wm1[brain_1mm]
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    deep_nuclei = (np.abs(x) < 32) & (y > -40) & (y < 28) & (z > -12) & (z < 22)
    junction = (g > 0.3) & (g < 0.7) & (w > 0.25) & (z > -10) & ~deep_nuclei
    cerebellar = (w > 0.5) & (xyz[:, 2] < -20) & (xyz[:, 1] < -45)
    cerebral = (w > 0.6) & (xyz[:, 2] > -15)
    # Every 7th point keeps these lists small while still covering the whole brain.
    return Atlas(resolution_mm=resolution_mm, affine=affine, gm=gm, wm=wm, mask=mask, box=box,
                 gm_wm_junction_mm=xyz[junction][::7].copy(), cerebellar_wm_mm=xyz[cerebellar][::7].copy(),
                 cerebral_wm_mm=xyz[cerebral][::7].copy())
