"""Label maps <-> overlapping region channels (BraTS TC / WT / ET, or one stroke 'lesion' region).

Segmentation is trained on *regions*, one sigmoid channel each, not on the raw label values:
BraTS evaluates the tumour core TC = {1, 4}, whole tumour WT = {1, 2, 4} and enhancing tumour
ET = {4} (3 instead of 4 for BraTS 2023), which overlap. A manifest's ``regions`` gives them; a
manifest without regions (a binary stroke mask, labels {0, 1}) gets one ``'lesion'`` region made
of every nonzero label value.

Going back (:func:`regions_to_labels`) inverts the nesting: each voxel takes the label value that
belongs to the *smallest* region containing it and to none of that region's sub-regions
(ET -> 4, TC minus ET -> 1, WT minus TC -> 2). For a label map that only uses values covered by
the regions, ``regions_to_labels(labels_to_regions(y, r), r)`` is exactly ``y``.

Example:
    >>> import numpy as np
    >>> regions = {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}
    >>> y = np.array([0, 1, 2, 4], dtype=np.uint8).reshape(1, 4, 1, 1)
    >>> r = labels_to_regions(y, regions)
    >>> r[:, :, 0, 0].tolist()       # rows TC, WT, ET; columns the voxels 0, 1, 2, 4
    [[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
    >>> regions_to_labels(r, regions).ravel().tolist()
    [0, 1, 2, 4]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["resolve_regions", "labels_to_regions", "regions_to_labels", "region_paint_order"]

#: Name of the single region of a manifest without ``regions`` (binary lesion masks).
LESION_REGION = "lesion"


def resolve_regions(
    regions: Mapping[str, Sequence[int]] | None = None,
    label_values: Sequence[int] | None = None,
) -> dict[str, tuple[int, ...]]:
    """The region definition to train on: the manifest's ``regions``, else one ``'lesion'`` region.

    Args:
        regions: region name -> label values (``Manifest.regions``, or a datalist's ``"regions"``).
        label_values: the manifest's allowed label values (``Manifest.label_values``); used only
            when ``regions`` is empty: every nonzero value becomes part of ``'lesion'``.

    Returns:
        ``{name: tuple of ints}`` in the given order.

    Raises:
        ValueError: neither regions nor nonzero label values, or a region without values.

    Example:
        >>> resolve_regions(None, [0, 1])
        {'lesion': (1,)}
        >>> resolve_regions({"TC": [1, 3], "WT": [1, 2, 3], "ET": [3]})["ET"]
        (3,)
    """
    if regions:
        out = {}
        for name, values in regions.items():
            values = tuple(int(v) for v in values)
            if not values or 0 in values:
                raise ValueError(f"region {name!r} must list nonzero label values, got {list(values)}")
            out[str(name)] = values
        return out
    nonzero = tuple(sorted({int(v) for v in (label_values or ()) if int(v) != 0}))
    if not nonzero:
        raise ValueError(
            "no regions and no nonzero label values: pass the manifest's regions "
            "(e.g. {'TC': [1, 4], 'WT': [1, 2, 4], 'ET': [4]}) or its label_values (e.g. [0, 1])"
        )
    return {LESION_REGION: nonzero}


def _channel_axis(ndim: int, spatial_dims: int, what: str) -> int:
    if ndim == spatial_dims + 1:
        return 0
    if ndim == spatial_dims + 2:
        return 1
    raise ValueError(
        f"{what}: expected ({'C'}, *spatial) or (B, C, *spatial) with {spatial_dims} spatial axes, got {ndim} dims"
    )


def labels_to_regions(label: Any, regions: Mapping[str, Sequence[int]], spatial_dims: int = 3) -> Any:
    """One float channel per region: 1 where the label value belongs to the region, else 0.

    Args:
        label: integer label map ``(1, X, Y, Z)`` or a batch ``(B, 1, X, Y, Z)``; numpy array or tensor.
        regions: region name -> label values, e.g. ``{'TC': [1, 4], 'WT': [1, 2, 4], 'ET': [4]}``.
        spatial_dims: number of spatial axes (3).

    Returns:
        float32 of the same kind (numpy / torch, same device) shaped ``(R, X, Y, Z)`` or
        ``(B, R, X, Y, Z)``, channels in the order of ``regions``.

    Example:
        >>> labels_to_regions(torch.tensor([[[[0, 1]]]]), {"lesion": [1]}).tolist()
        [[[[0.0, 1.0]]]]
    """
    axis = _channel_axis(label.ndim, spatial_dims, "labels_to_regions")
    if label.shape[axis] != 1:
        raise ValueError(f"labels_to_regions: the label map needs one channel, got shape {tuple(label.shape)}")
    if not regions:
        raise ValueError("labels_to_regions: no regions given")
    if torch.is_tensor(label):
        channels = [torch.isin(label, torch.as_tensor(list(v), device=label.device)) for v in regions.values()]
        return torch.cat(channels, dim=axis).float()
    label = np.asarray(label)
    channels = [np.isin(label, list(v)) for v in regions.values()]
    return np.concatenate(channels, axis=axis).astype(np.float32)


def region_paint_order(regions: Mapping[str, Sequence[int]]) -> list[tuple[str, int]]:
    """``(region, label value)`` pairs in the order :func:`regions_to_labels` paints them.

    Regions are painted from the largest to the smallest; each paints the one label value that it
    holds and none of its sub-regions holds. This requires the regions to be *laminar* (any two are
    nested or disjoint, as BraTS's WT > TC > ET) and each region to own exactly one value.

    Raises:
        ValueError: naming the regions that overlap without nesting, or a region owning zero or
            several values (its voxels could not be given one label).

    Example:
        >>> region_paint_order({"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]})
        [('WT', 2), ('TC', 1), ('ET', 4)]
    """
    sets = {name: frozenset(int(v) for v in values) for name, values in regions.items()}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sets[a] & sets[b]
            if common and not (sets[a] <= sets[b] or sets[b] <= sets[a]):
                raise ValueError(
                    f"regions {a} {sorted(sets[a])} and {b} {sorted(sets[b])} overlap without nesting; "
                    "region channels cannot be turned back into one label map"
                )
    order = sorted(names, key=lambda n: (-len(sets[n]), names.index(n)))
    painted = []
    for name in order:
        inner = set().union(*(sets[o] for o in names if o != name and sets[o] < sets[name]))
        own = sets[name] - inner
        if len(own) != 1:
            raise ValueError(
                f"region {name} {sorted(sets[name])} owns the values {sorted(own)} outside its sub-regions; "
                "exactly one is needed to label its voxels"
            )
        painted.append((name, next(iter(own))))
    return painted


def regions_to_labels(
    region_probs_or_masks: Any,
    regions: Mapping[str, Sequence[int]],
    threshold: float = 0.5,
    spatial_dims: int = 3,
) -> Any:
    """Invert :func:`labels_to_regions`: region probabilities or masks -> one uint8 label map.

    Each channel is thresholded (``> threshold``); regions are then painted from the largest to
    the smallest (:func:`region_paint_order`), so with BraTS 2021 regions ET -> 4, TC minus ET -> 1,
    WT minus TC -> 2 (BraTS 2023: ET -> 3). A predicted ET voxel outside the predicted TC or WT still
    becomes enhancing tumour (the smaller region wins), as in the usual BraTS post-processing.

    Args:
        region_probs_or_masks: ``(R, X, Y, Z)`` or ``(B, R, X, Y, Z)`` probabilities in [0, 1] or
            binary masks, channels in the order of ``regions``; numpy array or tensor.
        regions: region name -> label values (the definition used for training).
        threshold: probability above which a voxel is in the region.
        spatial_dims: number of spatial axes (3).

    Returns:
        uint8 label map ``(1, X, Y, Z)`` or ``(B, 1, X, Y, Z)``, same kind (numpy / torch) as the input.

    Example:
        >>> probs = np.zeros((1, 2, 1, 1), np.float32); probs[0, 1] = 0.9
        >>> regions_to_labels(probs, {"lesion": [1]}).ravel().tolist()
        [0, 1]
    """
    axis = _channel_axis(region_probs_or_masks.ndim, spatial_dims, "regions_to_labels")
    if region_probs_or_masks.shape[axis] != len(regions):
        raise ValueError(
            f"regions_to_labels: {region_probs_or_masks.shape[axis]} channels for {len(regions)} regions "
            f"{list(regions)} (shape {tuple(region_probs_or_masks.shape)})"
        )
    index = {name: i for i, name in enumerate(regions)}
    order = region_paint_order(regions)
    is_tensor = torch.is_tensor(region_probs_or_masks)
    x = region_probs_or_masks
    if is_tensor:
        masks = x.float() > threshold if x.dtype != torch.bool else x
        shape = list(x.shape)
        shape[axis] = 1
        out = torch.zeros(shape, dtype=torch.uint8, device=x.device)
        for name, value in order:
            out[masks.narrow(axis, index[name], 1)] = value
        return out
    x = np.asarray(x)
    masks = x.astype(np.float32) > threshold if x.dtype != bool else x
    shape = list(x.shape)
    shape[axis] = 1
    out = np.zeros(shape, dtype=np.uint8)
    for name, value in order:
        out[np.take(masks, [index[name]], axis=axis)] = value
    return out
