"""Fine-tuning data: keyed random crops with region targets, whole volumes with class indices.

Every dataset here is addressed by ``(index, sample_seed)`` keys (:class:`kit.train.sampling.GlobalBatchSampler`),
so a key always gives the same sample, whatever the batch composition or the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kit.data.regions import labels_to_regions
from kit.data.shapes import three_sides

__all__ = ["LabelledCropDataset", "ClassificationVolumeDataset", "classification_input", "class_table", "is_missing"]

_MISSING_TEXT = {"", "na", "n/a", "nan", "none", "null"}


def _augment(image: np.ndarray, target: np.ndarray | None, rng: np.random.Generator):
    """Random flip of each spatial axis (p = 0.5) and per-channel intensity scale x(1 +- 0.1) and
    shift +-0.1 (z-score units), as in MONAI's BraTS recipe; the target is flipped alike."""
    flips = [axis + 1 for axis in range(3) if rng.random() < 0.5]
    scale = 1.0 + rng.uniform(-0.1, 0.1, size=(image.shape[0], 1, 1, 1))
    shift = rng.uniform(-0.1, 0.1, size=(image.shape[0], 1, 1, 1))
    if flips:
        image = np.flip(image, axis=flips)
        if target is not None:
            target = np.flip(target, axis=flips)
    image = (image * scale + shift).astype(np.float32)
    return np.ascontiguousarray(image), None if target is None else np.ascontiguousarray(target)


class LabelledCropDataset(Dataset):
    """Random crops of cached volumes with their region targets, addressed by ``(index, sample_seed)`` keys.

    Same protocol as :class:`kit.train.sampling.ArrayCropDataset`: every random choice of a sample
    (foreground or uniform crop, its position, the augmentation) comes from
    ``numpy.random.default_rng(sample_seed)``, so a key always gives the same pair. With probability
    ``pos_fraction`` the crop is centred on a uniformly drawn foreground voxel (label > 0; clamped to
    the volume), otherwise its corner is uniform; volumes smaller than the crop are zero-padded (centred).

    Args:
        images: (C, X, Y, Z) arrays (memory-mapped cache arrays are read lazily, crop only).
        labels: (1, X, Y, Z) integer label maps, one per image.
        regions: region name -> label values (kit.data.regions).
        crop_size: (d, h, w) or one int.
        pos_fraction: probability of a foreground-centred crop.
        augment: random flips and intensity scale/shift.
        fg_sampling: 'voxel' (any foreground voxel) or 'label' (a present label value first, then
            one of its voxels: class-balanced, so thin regions are not starved).

    Returns (``__getitem__``):
        ``(image float32 (C, d, h, w), target float32 (R, d, h, w))`` tensors.

    Example:
        >>> img = np.random.rand(2, 40, 40, 40).astype("float32")
        >>> lab = np.zeros((1, 40, 40, 40), np.uint8); lab[0, 30:34, 30:34, 30:34] = 1
        >>> ds = LabelledCropDataset([img], [lab], {"lesion": [1]}, 16, pos_fraction=1.0)
        >>> x, y = ds[(0, 5)]
        >>> x.shape, y.shape, bool(y.sum() > 0)
        (torch.Size([2, 16, 16, 16]), torch.Size([1, 16, 16, 16]), True)
    """

    def __init__(
        self,
        images: Sequence,
        labels: Sequence,
        regions: Mapping[str, Sequence[int]],
        crop_size: int | Sequence[int],
        pos_fraction: float = 0.5,
        augment: bool = False,
        fg_sampling: str = "voxel",
    ) -> None:
        if fg_sampling not in ("voxel", "label"):
            raise ValueError(f"LabelledCropDataset: fg_sampling must be 'voxel' or 'label', got {fg_sampling!r}")
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"LabelledCropDataset: {len(images)} images and {len(labels)} labels (need the same, > 0)")
        for i, (image, label) in enumerate(zip(images, labels)):
            if label is None:
                raise ValueError(f"LabelledCropDataset: subject {i} has no label map")
            if len(image.shape) != 4 or tuple(label.shape) != (1, *image.shape[1:]):
                raise ValueError(
                    f"LabelledCropDataset: subject {i}: image {tuple(image.shape)} and label {tuple(label.shape)} "
                    "must be (C, X, Y, Z) and (1, X, Y, Z)"
                )
        self.images, self.labels = list(images), list(labels)
        self.regions = dict(regions)
        self.crop_size = three_sides(crop_size, "LabelledCropDataset crop_size")
        self.pos_fraction = float(pos_fraction)
        self.augment = bool(augment)
        self.fg_sampling = fg_sampling
        self._foreground: dict[int, np.ndarray] = {}
        self._by_label: dict[int, list[np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def foreground(self, index: int) -> np.ndarray:
        """Flat indices of the voxels with label > 0 in subject ``index`` (computed once)."""
        if index not in self._foreground:
            self._foreground[index] = np.flatnonzero(np.asarray(self.labels[index][0]) > 0)
        return self._foreground[index]

    def foreground_by_label(self, index: int) -> list[np.ndarray]:
        """Flat indices of subject ``index``'s voxels, one array per nonzero label value present."""
        if index not in self._by_label:
            flat = np.asarray(self.labels[index][0]).ravel()
            fg = self.foreground(index)
            values = flat[fg]
            self._by_label[index] = [fg[values == v] for v in np.unique(values)]
        return self._by_label[index]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            index, seed = (int(k) for k in key)
        except (TypeError, ValueError):
            raise TypeError(f"LabelledCropDataset: keys are (index, sample_seed) tuples, got {key!r}") from None
        image, label = self.images[index], self.labels[index]
        spatial = image.shape[1:]
        rng = np.random.default_rng(seed)
        foreground = self.foreground(index) if rng.random() < self.pos_fraction else np.empty(0)
        if foreground.size and self.fg_sampling == "label":
            groups = self.foreground_by_label(index)
            foreground = groups[int(rng.integers(len(groups)))]
        if foreground.size:
            centre = np.unravel_index(foreground[rng.integers(foreground.size)], spatial)
            corner = [int(min(max(c - k // 2, 0), max(s - k, 0))) for c, k, s in zip(centre, self.crop_size, spatial)]
        else:
            corner = [int(rng.integers(0, max(s - k, 0) + 1)) for s, k in zip(spatial, self.crop_size)]
        box = (slice(None),) + tuple(slice(o, o + k) for o, k in zip(corner, self.crop_size))
        crop = np.asarray(image[box], dtype=np.float32)
        target = labels_to_regions(np.asarray(label[box]), self.regions)
        missing = [max(k - s, 0) for k, s in zip(self.crop_size, crop.shape[1:])]
        if any(missing):
            pad = [(0, 0)] + [(m // 2, m - m // 2) for m in missing]
            crop, target = np.pad(crop, pad), np.pad(target, pad)
        if self.augment:
            crop, target = _augment(crop, target, rng)
        return torch.from_numpy(np.ascontiguousarray(crop)), torch.from_numpy(np.ascontiguousarray(target))


def classification_input(image: Any, size: int | Sequence[int]) -> torch.Tensor:
    """A brain-cropped volume as the classifier sees it: resized so that its longest side fits
    ``size`` (aspect ratio kept; trilinear, anti-aliased when shrinking), then zero-padded (centred)
    to ``size``.

    Args:
        image: (C, X, Y, Z) array or tensor.
        size: output spatial size, one int or 3.

    Returns:
        float32 tensor (C, *size).

    Example:
        >>> classification_input(np.ones((2, 40, 20, 30), np.float32), 32).shape
        torch.Size([2, 32, 32, 32])
    """
    from monai.transforms import Resize, ResizeWithPadOrCrop
    from monai.utils import convert_to_tensor

    shape = three_sides(size, "classification_input size")
    volume = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: cache arrays are read-only
    if volume.ndim != 4:
        raise ValueError(f"classification_input: expected (C, X, Y, Z), got shape {tuple(volume.shape)}")
    resized = Resize(spatial_size=max(shape), size_mode="longest", mode="trilinear", anti_aliasing=True)(volume)
    fitted = ResizeWithPadOrCrop(shape)(resized)
    return convert_to_tensor(fitted, track_meta=False, dtype=torch.float32)


class ClassificationVolumeDataset(Dataset):
    """Whole volumes (:func:`classification_input`) with class indices, addressed by ``(index, sample_seed)``.

    The seed drives only the augmentation (flips, intensity); without it a key's sample does not
    depend on the seed.

    Returns (``__getitem__``):
        ``(image float32 (C, *size), class index int64 scalar)``.

    Example:
        >>> ds = ClassificationVolumeDataset([np.ones((1, 20, 20, 20), np.float32)], [1], 16)
        >>> x, y = ds[(0, 3)]
        >>> x.shape, int(y)
        (torch.Size([1, 16, 16, 16]), 1)
    """

    def __init__(self, images: Sequence, targets: Sequence[int], size: int | Sequence[int], augment: bool = False) -> None:
        if len(images) == 0 or len(images) != len(targets):
            raise ValueError(f"ClassificationVolumeDataset: {len(images)} images and {len(targets)} targets")
        self.images, self.targets = list(images), [int(t) for t in targets]
        self.size = three_sides(size, "ClassificationVolumeDataset size")
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = (int(k) for k in key)
        volume = classification_input(self.images[index], self.size)
        if self.augment:
            array, _ = _augment(volume.numpy(), None, np.random.default_rng(seed))
            volume = torch.from_numpy(array)
        return volume, torch.tensor(self.targets[index], dtype=torch.int64)


def is_missing(value: Any) -> bool:
    """True for an absent phenotype value: None, NaN, or text such as '', 'NA', 'n/a', 'none'.

    Example:
        >>> [is_missing(v) for v in (None, float("nan"), "NA", 0, "glioma")]
        [True, True, True, False, False]
    """
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_TEXT


def class_table(values: Sequence[Any]) -> list[Any]:
    """The classes of a target column: its distinct non-missing values, sorted (numbers before text).

    Example:
        >>> class_table(["wildtype", None, "mutant", "wildtype"])
        ['mutant', 'wildtype']
    """
    present = {v for v in values if not is_missing(v)}
    return sorted(present, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else v.lower()))
