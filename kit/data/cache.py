"""Preprocessing cache: brain-cropped, per-channel normalised, uncompressed memory-mapped arrays.

Decoding a .nii.gz costs ~50-100 ms per volume per core; random crops for SSL would pay it per
sample. The cache pays it once: each subject becomes ``SUBJECT.image.npy`` (float32, C x X x Y x Z,
channels in the manifest's order) and ``SUBJECT.label.npy`` (uint8), opened with
``np.load(mmap_mode="r")`` so a crop reads only its bytes.

Preprocessing uses MONAI transforms: ``LoadImaged`` (channels stacked in datalist order), ``Orientationd`` (RAS+),
``CropForegroundd`` on the union of nonzero voxels (skull-stripped data: the brain) with a margin,
and ``NormalizeIntensityd(nonzero=True, channel_wise=True)``: a z-score per channel over brain
voxels only, background kept at 0. That is the usual MRI normalisation (MRI intensities have no
absolute unit, unlike CT's Hounsfield window, which the public BrainSegFounder code wrongly applied
to MRI).

The cache is resumable: subjects already written with the same settings are skipped, and each
array is written to a temporary file then renamed, so a killed run never leaves a half array.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kit.data import orientation
from kit.data.nifti_checks import check_volume_files, first_undecodable
from kit.tempfiles import atomic_write, write_text_atomic

__all__ = ["build_cache", "open_cache", "CacheIndex"]

_FORMAT = "brainfm-kit-cache/2"  # 2: arrays in RAS+ voxel order


def _settings_key(modalities: Sequence[str], margin: int, has_label: bool) -> str:
    text = json.dumps({"format": _FORMAT, "modalities": list(modalities), "margin": margin, "label": has_label})
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def _transforms(has_label: bool, margin: int):
    from monai.transforms import Compose, CropForegroundd, EnsureTyped, LoadImaged, NormalizeIntensityd, Orientationd

    from kit.data.nifti_checks import nifti_reader

    keys = ["image", "label"] if has_label else ["image"]
    return Compose(
        [
            # the reader squeezes trailing singleton axes, as kit validate does (kit.data.nifti_checks)
            LoadImaged(keys=keys, reader=nifti_reader(), ensure_channel_first=True, image_only=True),
            # RAS+ voxel order whatever the file's (an LPS BraTS file and a RAS one train alike)
            Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            CropForegroundd(keys=keys, source_key="image", margin=margin, allow_smaller=True),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
            EnsureTyped(keys=keys, track_meta=True),
        ]
    )


class CacheIndex:
    """An opened cache: subjects, their memory-mapped arrays and per-subject metadata.

    Attributes:
        root: cache folder.
        modalities: channel names.
        entries: list of dicts (``subject``, ``image``, ``label`` file names, ``shape``,
            ``crop_start`` (voxel offset of the crop in the RAS+ grid), ``original_shape`` and
            ``affine`` (of that un-cropped RAS+ grid), ``source_affine`` (the file's own), and the datalist entry's phenotype fields).

    Example:
        >>> cache = open_cache("runs/smoke/02_stage1/cache")  # doctest: +SKIP
        >>> cache.images()[0].shape  # (C, X, Y, Z), memory-mapped  # doctest: +SKIP
    """

    def __init__(self, root: Path, meta: dict) -> None:
        self.root = root
        self.modalities = meta["modalities"]
        self.entries = meta["entries"]

    def __len__(self) -> int:
        return len(self.entries)

    def images(self) -> list[np.ndarray]:
        """Memory-mapped float32 arrays (C, X, Y, Z), one per subject."""
        return [np.load(self.root / e["image"], mmap_mode="r") for e in self.entries]

    def labels(self) -> list[np.ndarray | None]:
        """Memory-mapped uint8 label arrays (1, X, Y, Z), or None for unlabelled subjects."""
        return [np.load(self.root / e["label"], mmap_mode="r") if e.get("label") else None for e in self.entries]


def build_cache(
    entries: Sequence[dict],
    modalities: Sequence[str],
    out_dir: str | Path,
    *,
    margin: int = 2,
    with_labels: bool = True,
    progress: bool = False,
) -> CacheIndex:
    """Preprocess a datalist into the cache (skipping subjects already cached with the same settings).

    Args:
        entries: datalist entries (``subject``, ``image`` paths in channel order, optional ``label``).
        modalities: channel names of ``image`` (stored for the model's first-layer transfer).
        out_dir: cache folder (created).
        margin: voxels kept around the brain's bounding box.
        with_labels: also cache labels when entries have them.
        progress: tqdm progress bar.

    Returns:
        The opened :class:`CacheIndex`.

    Raises:
        ValueError: naming the subject's file when an image cannot be loaded or has the wrong
            number of channels.

    Example:
        >>> entries, meta = load_cohort("runs/smoke/01_curation/datalist.json", "healthy")  # doctest: +SKIP
        >>> cache = build_cache(entries, list(meta["modality"].values()), "runs/smoke/02_stage1/cache")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    has_label = with_labels and all(e.get("label") for e in entries) and len(entries) > 0
    key = _settings_key(modalities, margin, has_label)
    previous = json.loads(index_path.read_text()) if index_path.exists() else {}
    done = {e["subject"]: e for e in previous.get("entries", [])} if previous.get("settings") == key else {}
    transform = _transforms(has_label, margin)
    cached = []
    for entry in tqdm(entries, desc="cache", disable=not progress):
        subject = str(entry["subject"])
        image_name, label_name = f"{subject}.image.npy", f"{subject}.label.npy"
        if subject in done and (out / image_name).exists() and (not has_label or (out / label_name).exists()):
            cached.append(done[subject])
            continue
        if len(entry["image"]) != len(modalities):
            raise ValueError(f"{entry['image'][0]}: subject {subject} has {len(entry['image'])} images, expected {len(modalities)} ({list(modalities)})")
        item = {"image": list(entry["image"])}
        if has_label:
            item["label"] = entry["label"]
        files = item["image"] + ([item["label"]] if has_label else [])
        check_volume_files(files)  # the shape rule of kit validate: ValueError "FILE: reason"
        try:
            data = transform(item)
        except Exception as err:  # MONAI wraps loader errors; name the file that fails to decode
            culprit = first_undecodable(files) or entry["image"][0]
            raise ValueError(f"{culprit}: cannot preprocess subject {subject}: {err}") from err
        image = data["image"]
        # CropForeground records the crop in the meta tensor's applied operations; the start
        # offset maps cached voxels back to the original grid (for predictions in input space).
        box_start = _crop_start(image)
        source_affine = np.asarray(image.meta.get("original_affine", image.meta.get("affine")), dtype=float)
        source_shape = [int(s) for s in image.meta["spatial_shape"]][:3]
        _save_npy_atomic(out / image_name, image.numpy().astype(np.float32))
        record = {
            "subject": subject,
            "image": image_name,
            "shape": list(image.shape),
            "crop_start": box_start,
            # the cached arrays are RAS+: shape and affine of the un-cropped RAS+ grid, and the file's own
            "original_shape": list(orientation.ras_shape(source_shape, source_affine)),
            "affine": orientation.ras_affine(source_affine, source_shape).tolist(),
            "source_affine": source_affine.tolist(),
            **{k: v for k, v in entry.items() if k not in ("image", "label", "subject")},
        }
        if has_label:
            _save_npy_atomic(out / label_name, data["label"].numpy().astype(np.uint8))
            record["label"] = label_name
        cached.append(record)
        done[subject] = record
        # keep the index current so a killed build resumes where it stopped
        _write_index(index_path, key, modalities, list(done.values()))
    _write_index(index_path, key, modalities, cached)
    return CacheIndex(out, {"modalities": list(modalities), "entries": cached})


def _crop_start(image) -> list[int]:
    for op in getattr(image, "applied_operations", []):
        if "Crop" in op.get("class", ""):
            cropped = op.get("extra_info", {}).get("cropped")
            if cropped is not None:
                return [int(c) for c in list(cropped)[0::2]]
    return [0, 0, 0]


def _write_index(path: Path, key: str, modalities: Sequence[str], entries: list[dict]) -> None:
    write_text_atomic(path, json.dumps({"format": _FORMAT, "settings": key, "modalities": list(modalities),
                                        "entries": entries}, indent=1, default=str))


def open_cache(out_dir: str | Path) -> CacheIndex:
    """Open a cache written by :func:`build_cache`.

    Raises:
        FileNotFoundError: naming the folder when it holds no ``index.json``.
    """
    root = Path(out_dir)
    index_path = root / "index.json"
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path}: no cache index; build it with kit.data.cache.build_cache")
    meta = json.loads(index_path.read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{index_path}: format {meta.get('format')!r}, expected {_FORMAT!r}")
    return CacheIndex(root, meta)
