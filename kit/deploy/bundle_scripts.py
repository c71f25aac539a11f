"""The code a brainfm-kit MONAI bundle runs besides MONAI: copied into the bundle as ``scripts/kit_bundle.py``.

It needs only numpy, torch and MONAI (never ``kit``), so an exported bundle stands alone:

- :func:`brats_subjects`: the subjects of a folder in the BraTS 2021 layout
  (``DIR/<subject>/<subject>_flair.nii.gz`` ...), one datalist entry each;
- :class:`RegionsToLabelsd`: region probabilities -> one uint8 label map, painted from the largest
  region to the smallest (BraTS: WT -> 2, TC -> 1, ET -> 4), zero outside the brain;
- :func:`subject_name_formatter`: output file names that hold the subject ID.

Example:
    >>> import numpy as np, torch
    >>> probs = torch.zeros(3, 2, 2, 2); probs[:, 0, 0, 0] = 0.9; probs[2, 1, 1, 1] = 0.9
    >>> brain = torch.ones(1, 2, 2, 2)
    >>> out = RegionsToLabelsd("pred", paint=[[1, 2], [0, 1], [2, 4]], brain_key="brain")({"pred": probs, "brain": brain})
    >>> out["pred"].shape, int(out["pred"][0, 0, 0, 0]), int(out["pred"][0, 1, 1, 1])
    (torch.Size([1, 2, 2, 2]), 4, 4)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["brats_subjects", "RegionsToLabelsd", "subject_name_formatter"]


def brats_subjects(dataset_dir: str, patterns: Sequence[str]) -> list[dict]:
    """One ``{'image': [files in channel order], 'subject': id}`` per subject folder of ``dataset_dir``.

    Args:
        dataset_dir: a folder with one sub-folder per subject (BraTS 2021 layout).
        patterns: file name of each channel inside the subject folder, with ``{subject}`` for the
            folder's name, in the model's channel order (e.g. ``'{subject}_flair.nii.gz'``).

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist, or no folder in it holds every channel.
        ValueError: a subject folder lacks some of the channels (names the files).
    """
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"{dataset_dir}: dataset_dir does not exist")
    entries, incomplete = [], []
    for subject in sorted(os.listdir(dataset_dir)):
        folder = os.path.join(dataset_dir, subject)
        if not os.path.isdir(folder):
            continue
        files = [os.path.join(folder, p.format(subject=subject)) for p in patterns]
        present = [os.path.isfile(f) for f in files]
        if all(present):
            entries.append({"image": files, "subject": subject})
        elif any(present):
            incomplete.append(", ".join(f for f, ok in zip(files, present) if not ok))
    if incomplete:
        raise ValueError(f"{dataset_dir}: subjects with missing channels: {'; '.join(incomplete)}")
    if not entries:
        raise FileNotFoundError(f"{dataset_dir}: no subject folder holds the files {list(patterns)}")
    return entries


class RegionsToLabelsd(MapTransform):
    """Region probabilities ``(R, X, Y, Z)`` -> uint8 labels ``(1, X, Y, Z)``; zero where the brain mask is zero.

    Args:
        keys: the prediction key.
        paint: ``[[region channel, label value], ...]`` in painting order (largest region first, so a
            smaller nested region overwrites it).
        threshold: a voxel is in a region when its probability is above this.
        brain_key: key of the brain-cropped input before normalisation; voxels zero in every channel
            are set to background (lesions lie in the brain).
    """

    def __init__(self, keys: KeysCollection, paint: Sequence[Sequence[int]], threshold: float = 0.5,
                 brain_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.paint = [(int(c), int(v)) for c, v in paint]
        self.threshold = float(threshold)
        self.brain_key = brain_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            probs = d[key]
            plain = probs.as_tensor() if isinstance(probs, MetaTensor) else torch.as_tensor(probs)
            labels = torch.zeros((1, *plain.shape[1:]), dtype=torch.uint8, device=plain.device)
            for channel, value in self.paint:
                labels[0][plain[channel].float() > self.threshold] = value
            if self.brain_key is not None:
                brain = torch.as_tensor(d[self.brain_key]).to(plain.device) != 0
                labels[0][~brain.any(dim=0)] = 0
            if isinstance(probs, MetaTensor):
                labels = MetaTensor(labels, meta=probs.meta, applied_operations=probs.applied_operations)
            d[key] = labels
        return d


def subject_name_formatter(first_pattern: str):
    """An ``output_name_formatter`` for ``SaveImaged``: the subject ID read off the first channel's file name.

    Example:
        >>> subject_name_formatter("{subject}_flair.nii.gz")({"filename_or_obj": "/d/S_7/S_7_flair.nii.gz"}, None)
        {'subject': 'S_7', 'idx': None}
    """
    head, _, tail = first_pattern.partition("{subject}")
    regex = re.compile("^" + re.escape(head) + "(.+)" + re.escape(tail) + "$")

    def formatter(metadict: dict, saver) -> dict:
        source = metadict.get("filename_or_obj", "")
        if isinstance(source, (list, tuple)):
            source = source[0]
        name = os.path.basename(str(source))
        match = regex.match(name)
        return {"subject": match.group(1) if match else name.split(".")[0], "idx": None}

    return formatter
