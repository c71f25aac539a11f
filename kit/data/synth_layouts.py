"""File layouts of the real datasets, atomic NIfTI/TSV writing and the BraTS grid.

Layouts (``i`` = subject index from 0):
  * brats2021: ROOT/BraTS2021_{i:05d}/BraTS2021_{i:05d}_{flair,t1,t1ce,t2,seg}.nii.gz, 240x240x155 mm grid
  * brats2023: ROOT/BraTS-GLI-{i:05d}-000/BraTS-GLI-{i:05d}-000-{t2f,t1n,t1c,t2w,seg}.nii.gz (ET = 3)
  * atlas2: ROOT/Training/R{site:03d}/sub-r{site:03d}s{j:03d}/ses-1/anat/..._T1w.nii.gz and
    ..._label-L_desc-T1lesion_mask.nii.gz, site = 1 + i // 10, j = 1 + i % 10 (MNI grid)
  * ukb: ROOT/{1000000 + i}/T1/T1_brain_to_MNI.nii.gz and .../T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz
  * flat: ROOT/sub-{i:04d}/sub-{i:04d}_{t1,t1ce,t2,flair,seg}.nii.gz (MNI grid)

Example:
    >>> subject_id("brats2023", 7), subject_id("ukb", 7), subject_id("atlas2", 12)
    ('BraTS-GLI-00007-000', '1000007', 'sub-r002s003')
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import nibabel as nib
import numpy as np

from kit.data.nifti_io import save_image_atomic
from kit.tempfiles import write_text_atomic

LAYOUTS = ("brats2021", "brats2023", "atlas2", "ukb", "flat")
#: kit contrast name -> file stem suffix, per layout (a layout writes only the contrasts it has).
LAYOUT_CONTRASTS = {
    "brats2021": {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"},
    "brats2023": {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
    "atlas2": {"t1": "T1w"},
    "ukb": {"t1": "T1/T1_brain_to_MNI", "flair": "T2_FLAIR/T2_FLAIR_brain_to_MNI"},
    "flat": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"},
}
#: BraTS images are 240 x 240 x 155 voxels of 1 mm (SRI24 space).
BRATS_FOV_MM = (240.0, 240.0, 155.0)
PARTICIPANT_COLUMNS = ("subject", "cohort", "age", "sex", "tumor_present", "tumor_type", "idh",
                       "lesion_volume_ml", "n_lesions", "seed")
NIFTI_MNI_CODE = 4  # NIfTI xform code 'mni_152'
NIFTI_SCANNER_CODE = 1


def check_layout(layout: str) -> str:
    """Return ``layout`` or raise ValueError listing the valid names."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    return layout


def subject_id(layout: str, index: int) -> str:
    """Directory/participant id of subject ``index`` in ``layout`` (see module docstring)."""
    check_layout(layout)
    if index < 0:
        raise ValueError(f"subject index must be >= 0, got {index}")
    if layout == "brats2021":
        return f"BraTS2021_{index:05d}"
    if layout == "brats2023":
        return f"BraTS-GLI-{index:05d}-000"
    if layout == "atlas2":
        return f"sub-r{1 + index // 10:03d}s{1 + index % 10:03d}"
    if layout == "ukb":
        return str(1000000 + index)
    return f"sub-{index:04d}"


def subject_paths(layout: str, root: str | Path, index: int, with_label: bool) -> dict[str, Path]:
    """Paths of the files of subject ``index``: kit contrast names and 'label' -> Path.

    ``with_label`` only matters for 'flat' (label for lesion cohorts only); BraTS and ATLAS always
    have a label file, UK Biobank never.

    Example:
        >>> sorted(subject_paths("ukb", "/data", 0, True))
        ['flair', 't1']
    """
    root = Path(root)
    sid = subject_id(layout, index)
    names = LAYOUT_CONTRASTS[layout]
    if layout == "brats2021":
        d = root / sid
        paths = {c: d / f"{sid}_{s}.nii.gz" for c, s in names.items()}
        paths["label"] = d / f"{sid}_seg.nii.gz"
    elif layout == "brats2023":
        d = root / sid
        paths = {c: d / f"{sid}-{s}.nii.gz" for c, s in names.items()}
        paths["label"] = d / f"{sid}-seg.nii.gz"
    elif layout == "atlas2":
        site = 1 + index // 10
        d = root / "Training" / f"R{site:03d}" / sid / "ses-1" / "anat"
        stem = f"{sid}_ses-1_space-MNI152NLin2009aSym"
        paths = {"t1": d / f"{stem}_T1w.nii.gz", "label": d / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"}
    elif layout == "ukb":
        paths = {c: root / sid / f"{s}.nii.gz" for c, s in names.items()}
    else:
        d = root / sid
        paths = {c: d / f"{sid}_{s}.nii.gz" for c, s in names.items()}
        if with_label:
            paths["label"] = d / f"{sid}_seg.nii.gz"
    return paths


def layout_label(label: np.ndarray | None, shape: tuple, layout: str) -> np.ndarray | None:
    """Label array as the layout stores it (uint8), or None when the layout has no label file.

    BraTS 2023 stores enhancing tumour as 3 instead of 4; ATLAS stores a binary mask; a subject
    without a label gets an all-zero label in layouts that always carry one.
    """
    if layout == "ukb":
        return None
    if label is None:
        return None if layout == "flat" else np.zeros(shape, np.uint8)
    label = np.asarray(label, np.uint8)
    if layout == "brats2023":
        return np.where(label == 4, np.uint8(3), label)
    if layout == "atlas2":
        return (label > 0).astype(np.uint8)
    return label


def voxel_size(affine: np.ndarray) -> float:
    """Isotropic voxel side (mm) of ``affine``; ValueError if it is not isotropic."""
    sizes = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    if not np.allclose(sizes, sizes[0], rtol=1e-4):
        raise ValueError(f"expected isotropic voxels, got spacing {sizes}")
    return float(sizes[0])


def brats_window(brain: np.ndarray, resolution_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Start voxel (may be negative = padding) and shape of the BraTS grid around a brain mask.

    The grid is round(240/r) x round(240/r) x round(155/r). On each axis the brain's bounding box is
    centred in the window; if the brain is longer than the window, the inferior end (brainstem,
    cerebellum) is cropped on z and both ends equally on x and y.

    Example:
        >>> brain = np.zeros((99, 117, 95), bool); brain[10:80, 10:100, 0:78] = True
        >>> brats_window(brain, 2.0)
        (array([-15,  -5,   0]), (120, 120, 78))
    """
    target = tuple(max(1, int(np.floor(f / resolution_mm + 0.5))) for f in BRATS_FOV_MM)
    starts = []
    for ax, t in enumerate(target):
        other = tuple(a for a in range(3) if a != ax)
        present = np.nonzero(brain.any(axis=other))[0]
        lo, hi = (int(present[0]), int(present[-1]) + 1) if present.size else (0, brain.shape[ax])
        extent = hi - lo
        if extent <= t:
            starts.append(lo - (t - extent) // 2)
        elif ax == 2:
            starts.append(hi - t)  # keep the top of the brain, drop inferior slices
        else:
            starts.append(lo + (extent - t) // 2)
    return np.array(starts), target


def crop_pad(volume: np.ndarray, start: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Window of ``volume`` starting at voxel ``start`` with ``shape``, zero outside the volume."""
    out = np.zeros(shape, volume.dtype)
    src, dst = [], []
    for s, n, t in zip(start, volume.shape, shape):
        a, b = max(s, 0), min(s + t, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def shifted_affine(affine: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Affine of a window whose voxel 0 is voxel ``start`` of the grid of ``affine``."""
    out = np.array(affine, np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, np.float64) + affine[:3, 3]
    return out


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, xform_code: int = NIFTI_MNI_CODE) -> Path:
    """Write ``array`` as NIfTI-1 atomically (temp file in the same folder, then os.replace).

    The qform and sform are both set to ``affine`` with ``xform_code`` and units are mm. The data
    type is the array's (float32 images, uint8 labels).

    Example:
        >>> import tempfile
        >>> p = save_nifti(np.zeros((2, 2, 2), np.float32), np.eye(4), Path(tempfile.mkdtemp()) / "x.nii.gz")
        >>> nib.load(p).shape
        (2, 2, 2)
    """
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=xform_code)
    image.set_sform(affine, code=xform_code)
    return save_image_atomic(image, path)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else ""
    return str(value)


def write_participants(path: str | Path, rows: list[dict]) -> Path:
    """Write participants.tsv (tab-separated, columns ``PARTICIPANT_COLUMNS``) atomically.

    None is written as an empty cell.
    """
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(PARTICIPANT_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in PARTICIPANT_COLUMNS])
    return write_text_atomic(path, buffer.getvalue())


def read_participants(path: str | Path) -> list[dict[str, str]]:
    """Rows of a participants.tsv as dicts of strings (empty list if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = set(PARTICIPANT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: participants.tsv lacks columns {sorted(missing)}")
        return list(reader)
