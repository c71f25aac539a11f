"""2D slices for MoCo v3 and slice classifiers: the slices that the curation filter keeps, read from the cache.

The tailored-curation paper (Computerized Medical Imaging and Graphics 123, 2025) pretrains MoCo v3 on
2D slices kept by image entropy and slice position. Notebook 01 computes that filter per slice of each
subject (``slices.csv``: ``cohort``, ``subject``, ``slice``, ``kept``, ... from
:func:`kit.data.curate.curate_slices`, slice indices in the NIfTI voxel grid). :class:`SliceDataset`
serves those slices from the preprocessing cache (:mod:`kit.data.cache`: memory-mapped, brain-cropped,
z-scored arrays), so a sample costs one strided read and a resize, never a NIfTI decode.

- ``curated=True``: exactly the rows of ``slices.csv`` with ``kept`` True, for the cached subjects.
- ``curated=False``: every slice of the same subjects (the ablation's uncurated set); a slice outside
  the cache's brain box (the cache crops the background away) is an all-zero image, as in the file.

Slice index ``s`` of the original grid is index ``s - crop_start[axis]`` of the cached array. Each
slice is resized so that its longest side is ``size`` pixels (aspect ratio kept; bilinear, anti-aliased
when shrinking) and zero-padded (centred) to ``size x size``.

Example:
    >>> cache = open_cache("runs/smoke/02_stage1/cache")  # doctest: +SKIP
    >>> ds = SliceDataset(cache, "runs/smoke/01_curation/slices.csv", axis=2, cohort="healthy", size=64)  # doctest: +SKIP
    >>> ds[(0, 123)].shape   # (contrasts, 64, 64); keys are (index, sample_seed) as for the loop  # doctest: +SKIP
    torch.Size([2, 64, 64])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["SliceDataset", "read_slice_table", "select_slices", "fit_slice", "lr_dim_of"]

_REQUIRED = ("subject", "slice", "kept")


def read_slice_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``slices.csv`` written by notebook 01, checking its columns.

    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing or lacks a column.

    Example:
        >>> table = read_slice_table("runs/smoke/01_curation/slices.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: slice table not found; run notebook 01 (kit reproduce --to 01) first")
    table = pd.read_csv(path, dtype={"subject": str})
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: slice table lacks columns {missing} (has {list(table.columns)})")
    return table


def select_slices(table: pd.DataFrame, subjects: Sequence[str], curated: bool = True, cohort: str | None = None) -> pd.DataFrame:
    """Rows of ``table`` for ``subjects`` (in that order), all of them or only the kept ones.

    Args:
        table: a slice table (``subject``, ``slice``, ``kept``; optional ``cohort``).
        subjects: subject ids.
        curated: keep only rows whose ``kept`` is True.
        cohort: restrict to this cohort (subject ids may repeat across cohorts).

    Returns:
        DataFrame with columns ``subject``, ``slice`` and the table's others, sorted by subject order then slice.

    Example:
        >>> t = pd.DataFrame({"subject": ["a", "a", "b"], "slice": [0, 1, 0], "kept": [False, True, True]})
        >>> select_slices(t, ["b", "a"]).slice.tolist(), len(select_slices(t, ["a"], curated=False))
        ([0, 1], 2)
    """
    rows = table
    if cohort is not None and "cohort" in rows.columns:
        rows = rows[rows.cohort == cohort]
    order = {str(s): i for i, s in enumerate(subjects)}
    rows = rows[rows.subject.astype(str).isin(order)]
    if curated:
        rows = rows[rows.kept.astype(bool)]
    rows = rows.assign(_order=rows.subject.astype(str).map(order)).sort_values(["_order", "slice"], kind="stable")
    return rows.drop(columns="_order").reset_index(drop=True)


def lr_dim_of(axis: int) -> int | None:
    """Which in-plane dimension of a slice along ``axis`` runs left-right in RAS data (None for sagittal).

    A slice along axis 2 (axial) or 1 (coronal) keeps X (left-right) as its first dimension; a
    sagittal slice (axis 0) has no left-right direction, so a left-right flip is not defined there.

    Example:
        >>> lr_dim_of(2), lr_dim_of(0)
        (0, None)
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return None if axis == 0 else 0


def fit_slice(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize a slice ``(C, H, W)`` so its longest side is ``size`` (aspect kept), then zero-pad it to ``size``.

    Bilinear, anti-aliased when shrinking (``torch.nn.functional.interpolate``).

    Returns:
        float32 tensor ``(C, size, size)``.

    Example:
        >>> fit_slice(np.ones((2, 40, 20), np.float32), 32).shape
        torch.Size([2, 32, 32])
    """
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError(f"fit_slice: expected (C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[1:]
    if (h, w) != (size, size):
        scale = size / max(h, w)
        new = (max(1, round(h * scale)), max(1, round(w * scale)))
        if new != (h, w):
            x = F.interpolate(x[None], size=new, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
        ph, pw = size - x.shape[1], size - x.shape[2]
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x.contiguous()


class SliceDataset(Dataset):
    """Curated (or all) 2D slices of cached subjects, addressed like the loop's datasets.

    Args:
        cache: a :class:`kit.data.cache.CacheIndex` (its subjects and channel order).
        slices: the slice table (DataFrame) or the path of ``slices.csv``.
        axis: spatial axis the table's slices were taken along (``SliceFilter.axis``); checked
            against the table's ``axis`` column when it has one.
        cohort: the table's cohort of these subjects (when the table holds several).
        channels: ``"all"`` (every contrast stacked as channels), or one modality name or index.
        size: output side in pixels.
        curated: True for the slices the filter keeps, False for every slice of the same subjects.
        subjects: restrict to these subject ids (e.g. one side of a subject-level split); default all
            cached subjects.

    Attributes:
        index: DataFrame, one row per sample: ``subject``, ``slice``, ``cache_index`` (the
            subject's position in ``cache.entries``) and the table's columns.
        in_channels, lr_dim: channels per sample; in-plane dimension that runs left-right (or None).

    ``__getitem__`` takes an ``(index, sample_seed)`` key (the seed is unused: augmentations belong to
    the SSL objective) or a plain int, and returns a float32 tensor ``(C, size, size)``.

    Raises:
        ValueError: a table subject has no cached array, or the table's axis differs from ``axis``.

    Example:
        >>> ds = SliceDataset(cache, "runs/x/01_curation/slices.csv", axis=2, cohort="tumor")  # doctest: +SKIP
        >>> len(ds), ds.in_channels  # doctest: +SKIP
        (420, 4)
    """

    def __init__(
        self,
        cache: Any,
        slices: pd.DataFrame | str | os.PathLike,
        *,
        axis: int = 2,
        cohort: str | None = None,
        channels: str | int = "all",
        size: int = 64,
        curated: bool = True,
        subjects: Sequence[str] | None = None,
    ) -> None:
        table = slices if isinstance(slices, pd.DataFrame) else read_slice_table(slices)
        where = "slice table" if isinstance(slices, pd.DataFrame) else str(slices)
        if "axis" in table.columns and len(table) and set(table.axis.unique()) != {axis}:
            raise ValueError(f"{where}: slices were taken along axis {sorted(table.axis.unique())}, not {axis}")
        self.cache, self.axis, self.size, self.curated = cache, int(axis), int(size), bool(curated)
        positions = {str(e["subject"]): i for i, e in enumerate(cache.entries)}
        wanted = [str(s) for s in (subjects if subjects is not None else positions)]
        absent = [s for s in wanted if s not in positions]
        if absent:
            raise ValueError(f"{cache.root}: subjects {absent[:5]} are not in the cache")
        index = select_slices(table.drop(columns=["cache_index"], errors="ignore"), wanted, curated, cohort)
        listed = set(select_slices(table, wanted, False, cohort).subject.astype(str))  # any row, kept or not
        if set(wanted) - listed:
            raise ValueError(f"{where}: no slices listed for subjects {sorted(set(wanted) - listed)[:5]}")
        index.insert(2, "cache_index", index.subject.astype(str).map(positions).astype(int))
        self.index = index
        modalities = list(cache.modalities)
        if channels == "all":
            self.channels = list(range(len(modalities)))
        elif isinstance(channels, str):
            if channels not in modalities:
                raise ValueError(f"{cache.root}: no contrast {channels!r}; the cache has {modalities}")
            self.channels = [modalities.index(channels)]
        else:
            if not 0 <= int(channels) < len(modalities):
                raise ValueError(f"{cache.root}: channel {channels} outside 0..{len(modalities) - 1}")
            self.channels = [int(channels)]
        self.modalities = [modalities[c] for c in self.channels]
        self.in_channels = len(self.channels)
        self.lr_dim = lr_dim_of(self.axis)
        self._images: dict[int, np.ndarray] = {}
        self._labels: dict[int, np.ndarray | None] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _image(self, i: int) -> np.ndarray:
        if i not in self._images:
            self._images[i] = np.load(self.cache.root / self.cache.entries[i]["image"], mmap_mode="r")
        return self._images[i]

    def _label(self, i: int) -> np.ndarray | None:
        if i not in self._labels:
            name = self.cache.entries[i].get("label")
            self._labels[i] = np.load(self.cache.root / name, mmap_mode="r") if name else None
        return self._labels[i]

    def _cached_position(self, row: int) -> tuple[int, int | None]:
        """(cache index, slice index inside the cached array or None when outside the brain box)."""
        record = self.index.iloc[row]
        i = int(record.cache_index)
        local = int(record.slice) - int(self.cache.entries[i]["crop_start"][self.axis])
        inside = 0 <= local < self._image(i).shape[1 + self.axis]
        return i, local if inside else None

    def raw_slice(self, row: int) -> np.ndarray:
        """Sample ``row`` at the cache's resolution, before resizing: float32 ``(C, h, w)``."""
        i, local = self._cached_position(row)
        image = self._image(i)
        if local is None:
            shape = [s for d, s in enumerate(image.shape[1:]) if d != self.axis]
            return np.zeros((self.in_channels, *shape), np.float32)
        # index the channels after the slice: one strided read of the memory map per channel
        plane = np.take(image, local, axis=1 + self.axis)
        return np.asarray(plane[self.channels], dtype=np.float32)

    def label_slice(self, row: int) -> np.ndarray | None:
        """The cached label map of sample ``row`` ``(h, w)`` (uint8), or None for an unlabelled subject."""
        i, local = self._cached_position(row)
        label = self._label(i)
        if label is None:
            return None
        if local is None:
            return np.zeros([s for d, s in enumerate(label.shape[1:]) if d != self.axis], np.uint8)
        return np.asarray(np.take(label[0], local, axis=self.axis))

    def lesion_present(self) -> np.ndarray:
        """Per sample: 1 when its label slice has a voxel > 0 (e.g. tumour), else 0; int64 ``(N,)``.

        Raises ``ValueError`` (naming the cache) when a subject has no label map.
        """
        out = np.zeros(len(self), np.int64)
        for row in range(len(self)):
            label = self.label_slice(row)
            if label is None:
                raise ValueError(f"{self.cache.root}: subject {self.index.subject.iloc[row]} has no cached label map")
            out[row] = int(np.any(label > 0))
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        row = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        return fit_slice(self.raw_slice(row), self.size)
