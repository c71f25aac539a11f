"""Static figures that render the same in papermill output, on a code-hosting site and in a PDF.

Orthogonal views (sagittal, coronal, axial) of a 3D volume with an optional label overlay and a
colour legend for the BraTS compartments, plus the curation plots.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from kit.tensors import to_numpy

__all__ = [
    "BRATS_COLORS", "STROKE_COLORS", "label_colors_for", "plot_orthogonal", "plot_subjects", "plot_entropy",
    "plot_ssl_preview", "plot_loss_curves", "plot_heatmap_over_anatomy", "plot_slice_heatmap", "plot_first_layer",
]

# RGBA per label value. BraTS 2023 writes enhancing as 3; both share the colour.
BRATS_COLORS = {
    1: ("necrotic core", (0.85, 0.15, 0.15, 0.75)),
    2: ("edema", (0.15, 0.75, 0.25, 0.55)),
    3: ("enhancing", (1.0, 0.85, 0.1, 0.8)),
    4: ("enhancing", (1.0, 0.85, 0.1, 0.8)),
}
STROKE_COLORS = {1: ("lesion", (0.95, 0.3, 0.1, 0.7))}


def label_colors_for(names: dict) -> dict:
    """Pick a colour table from a manifest's label names (``{value: name}``)."""
    values = {int(k) for k in names if int(k) != 0}
    if values <= {1}:
        return STROKE_COLORS
    return {v: BRATS_COLORS.get(v, (str(names.get(v, v)), (0.6, 0.3, 0.9, 0.7))) for v in values}


def default_point(image: np.ndarray, label: np.ndarray | None) -> tuple[int, int, int]:
    # Centre on the lesion when there is one (what a reader wants to see), else on the brain.
    source = label if label is not None and np.any(label) else image
    coords = np.argwhere(source != 0)
    if coords.size == 0:
        return tuple(s // 2 for s in image.shape)
    return tuple(int(c) for c in np.round(coords.mean(axis=0)))


def _overlay_rgba(label2d: np.ndarray, colors: dict) -> np.ndarray:
    rgba = np.zeros(label2d.shape + (4,), dtype=np.float32)
    for value, (_, color) in colors.items():
        rgba[label2d == value] = color
    return rgba


# (left, right, bottom, top) markers of each displayed plane, RAS+ arrays
_MARKERS = {
    ("sagittal", True): ("A", "P", "I", "S"), ("sagittal", False): ("A", "P", "I", "S"),
    ("coronal", True): ("R", "L", "I", "S"), ("coronal", False): ("L", "R", "I", "S"),
    ("axial", True): ("R", "L", "P", "A"), ("axial", False): ("L", "R", "P", "A"),
}


def _display_planes(volume: np.ndarray, point: Sequence[int], spacing: Sequence[float], radiological: bool) -> list:
    """The three planes of a RAS+ ``volume`` as displayed: rows run I->S or P->A (origin lower),
    columns run as the convention wants (radiological: the patient's right on the screen's left;
    sagittal: anterior on the left, as seen from the patient's left in every convention)."""
    x, y, z = point
    sx, sy, sz = spacing
    sagittal = volume[x, ::-1, :]  # anterior left
    coronal = volume[::-1, y, :] if radiological else volume[:, y, :]
    axial = volume[::-1, :, z] if radiological else volume[:, :, z]
    return [
        ("sagittal", sagittal.T, sz / sy, f"x={x}"),
        ("coronal", coronal.T, sz / sx, f"y={y}"),
        ("axial", axial.T, sy / sx, f"z={z}"),
    ]


def _mark_orientation(ax: plt.Axes, name: str, radiological: bool) -> None:
    left, right, bottom, top = _MARKERS[(name, radiological)]
    style = dict(transform=ax.transAxes, color="yellow", fontsize=8, fontweight="bold")
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)


def _reorient(image, label, affine, spacing):
    """RAS+ copies of ``image``/``label`` and their voxel sizes when an ``affine`` is given."""
    if affine is None:
        return image, label, spacing
    from kit.data.orientation import to_ras

    image, ras_affine = to_ras(image, affine)
    if label is not None:
        label, _ = to_ras(label, affine)
    return image, label, tuple(float(v) for v in np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0)))


def plot_orthogonal(
    image: np.ndarray,
    label: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    point: Sequence[int] | None = None,
    colors: dict | None = None,
    title: str | None = None,
    axes: Sequence[plt.Axes] | None = None,
    vmax_percentile: float = 99.5,
    cmap: str = "gray",
    style: str = "fill",
    affine: np.ndarray | None = None,
    radiological: bool = True,
):
    """Sagittal, coronal and axial slices through ``point`` with an optional label overlay.

    Every plane carries orientation markers (R/L, A/P, S/I). The default is the radiological
    convention (the patient's right on the screen's left in coronal and axial views); sagittal
    views show anterior on the left.

    Args:
        image: array (X, Y, Z) in RAS+ voxel order (what the kit's loaders return), or in any
            order when ``affine`` is given.
        label: integer array (X, Y, Z) or None; values drawn with ``colors``.
        spacing: voxel size in mm (X, Y, Z), used for the aspect ratio (ignored with ``affine``).
        point: voxel (x, y, z) of the RAS+ array the three planes pass through; default the
            lesion's centroid, else the brain's.
        colors: ``{value: (name, rgba)}``; default :data:`BRATS_COLORS`.
        title: figure (or first-axis) title.
        axes: three matplotlib axes to draw into; a new 1x3 figure when None.
        vmax_percentile: upper display limit, percentile of the nonzero voxels.
        cmap: colour map of the image (``"gray"`` for MRI).
        style: ``"fill"`` paints label voxels, ``"contour"`` draws their outlines so the image
            underneath stays visible.
        affine: the file's 4x4 voxel-to-world matrix; the arrays are reoriented to RAS+ first,
            so a volume saved LPS or RAS gives the same figure.
        radiological: True for the radiological convention, False for the neurological one.

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = plot_orthogonal(np.random.rand(20, 24, 16), spacing=(2, 2, 2))
        >>> len(fig.axes)
        3
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"plot_orthogonal expects a 3D image, got shape {image.shape}")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    image, label, spacing = _reorient(image, label, affine, spacing)
    colors = BRATS_COLORS if colors is None else colors
    point = tuple(point) if point is not None else default_point(image, label)
    nonzero = image[image != 0]
    vmax = float(np.percentile(nonzero, vmax_percentile)) if nonzero.size else 1.0
    # z-scored inputs (the cache, model inputs) are negative in half the brain: start the grey
    # scale at their low percentile and paint the exact-zero background black instead
    vmin = min(0.0, float(np.percentile(nonzero, 100 - vmax_percentile))) if nonzero.size else 0.0
    shown_cmap = plt.get_cmap(cmap).with_extremes(bad="black")
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), constrained_layout=True)
    else:
        fig = axes[0].figure
    planes = _display_planes(image, point, spacing, radiological)
    label_planes = _display_planes(label, point, spacing, radiological) if label is not None else [None] * 3
    for ax, (name, plane, aspect, where), lab in zip(axes, planes, label_planes):
        lab = None if lab is None else lab[1]
        shown = np.ma.masked_where(plane == 0, plane) if vmin < 0 else plane
        ax.imshow(shown, cmap=shown_cmap, vmin=vmin, vmax=vmax, origin="lower", aspect=aspect, interpolation="nearest")
        if lab is not None and np.any(lab):
            if style == "contour":
                for value, (_, color) in colors.items():
                    if np.any(lab == value):
                        ax.contour((lab == value).astype(float), levels=[0.5], colors=[color[:3]], linewidths=1.2)
            else:
                ax.imshow(_overlay_rgba(lab, colors), origin="lower", aspect=aspect, interpolation="nearest")
        _mark_orientation(ax, name, radiological)
        ax.set_title(f"{name} ({where})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if label is not None:
        present = {int(v) for v in np.unique(label) if v != 0}
        handles = [Patch(color=c, label=f"{v}: {n}") for v, (n, c) in colors.items() if v in present]
        if handles:
            axes[-1].legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
    if title:
        if len(fig.axes) == 3:
            fig.suptitle(title, fontsize=10)
        else:
            axes[0].set_ylabel(title, fontsize=8)
    return fig


def plot_heatmap_over_anatomy(
    image: np.ndarray,
    heat: np.ndarray,
    brain_mask: np.ndarray | None = None,
    outline: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    point: Sequence[int] | None = None,
    title: str | None = None,
    axes: Sequence[plt.Axes] | None = None,
    heat_label: str = "saliency",
    cmap: str = "inferno",
    alpha: float = 0.6,
    radiological: bool = True,
):
    """A heat map (saliency, error, attention) over the anatomy, masked to the brain, with a colour bar.

    Args:
        image: anatomy (X, Y, Z), RAS+ voxel order, drawn in grey underneath.
        heat: map (X, Y, Z) on the same grid; only values inside ``brain_mask`` are drawn, on a
            0..max colour scale (negative values clipped to 0).
        brain_mask: bool (X, Y, Z); default the image's nonzero voxels.
        outline: bool (X, Y, Z) drawn as a cyan contour (e.g. the tumour), or None.
        spacing: voxel size in mm.
        point: voxel the planes pass through; default the outline's centroid, else the heat's maximum.
        heat_label: colour-bar label (say what the units are).

    Returns:
        The matplotlib Figure.

    Example:
        >>> img = np.random.rand(12, 12, 12); sal = np.random.rand(12, 12, 12)
        >>> len(plot_heatmap_over_anatomy(img, sal).axes)  # three planes and the colour bar
        4
    """
    image = np.asarray(image, dtype=np.float32)
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0, None)
    if heat.shape != image.shape:
        raise ValueError(f"heat map shape {heat.shape} differs from image shape {image.shape}")
    brain = (image != 0) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    heat = np.where(brain, heat, 0.0)
    if point is None:
        point = default_point(image, outline) if outline is not None and np.any(outline) else np.unravel_index(np.argmax(heat), heat.shape)
    point = tuple(int(p) for p in point)
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(10.8, 3.6), constrained_layout=True)
    else:
        fig = axes[0].figure
    plot_orthogonal(image, spacing=spacing, point=point, axes=axes, radiological=radiological)
    vmax = float(heat.max()) or 1.0
    heat_planes = _display_planes(np.ma.masked_where(~brain | (heat <= 0), heat), point, spacing, radiological)
    outline_planes = _display_planes(outline.astype(float), point, spacing, radiological) if outline is not None else [None] * 3
    mappable = None
    for ax, (_, plane, aspect, _), out in zip(axes, heat_planes, outline_planes):
        mappable = ax.imshow(plane, cmap=cmap, vmin=0, vmax=vmax, alpha=alpha, origin="lower", aspect=aspect, interpolation="nearest")
        if out is not None and np.any(out[1]):
            ax.contour(out[1], levels=[0.5], colors=["cyan"], linewidths=1.0)
    fig.colorbar(mappable, ax=list(axes), shrink=0.8, label=heat_label)
    if title and len(fig.axes) > 4:  # one row of a grid: label the row
        axes[0].set_ylabel(title, fontsize=8)
    elif title:
        fig.suptitle(title, fontsize=10)
    return fig


_PLANE_OF_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}


def plot_slice_heatmap(
    image: np.ndarray,
    heat: np.ndarray,
    axis: int = 2,
    brain_mask: np.ndarray | None = None,
    outline: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0),
    ax: plt.Axes | None = None,
    title: str | None = None,
    heat_label: str = "saliency",
    cmap: str = "inferno",
    alpha: float = 0.6,
    radiological: bool = True,
):
    """A heat map over one 2D slice (a slice classifier's saliency), masked to the brain, with a colour bar.

    The 2D counterpart of :func:`plot_heatmap_over_anatomy`: the same display conventions and
    orientation markers as the matching plane of :func:`plot_orthogonal`.

    Args:
        image: anatomy ``(d0, d1)``: a RAS+ volume's slice along ``axis`` (its two other axes in order).
        heat: map ``(d0, d1)``; drawn inside ``brain_mask`` only, on a 0..max scale (negatives clipped).
        axis: the axis the slice was taken along (0 sagittal, 1 coronal, 2 axial).
        brain_mask: bool ``(d0, d1)``; default the image's nonzero pixels.
        outline: bool ``(d0, d1)`` drawn as a cyan contour (e.g. the tumour), or None.
        spacing: pixel size in mm along ``d0`` and ``d1``.
        ax: axes to draw into (a new figure when None).

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = plot_slice_heatmap(np.random.rand(16, 16), np.random.rand(16, 16), axis=2)
        >>> len(fig.axes)  # the slice and the colour bar
        2
    """
    image = np.asarray(image, dtype=np.float32)
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0, None)
    if image.ndim != 2 or heat.shape != image.shape:
        raise ValueError(f"plot_slice_heatmap: image {image.shape} and heat {heat.shape} must be the same 2D shape")
    if axis not in _PLANE_OF_AXIS:
        raise ValueError(f"plot_slice_heatmap: axis must be 0, 1 or 2, got {axis}")
    brain = (image != 0) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    name = _PLANE_OF_AXIS[axis]

    def shown(plane):  # as _display_planes: rows run upwards, the patient's right on the left (radiological)
        return (plane[::-1, :] if radiological or axis == 0 else plane).T

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.6), constrained_layout=True)
    else:
        fig = ax.figure
    aspect = float(spacing[1]) / float(spacing[0])
    nonzero = image[image != 0]
    vmin = min(0.0, float(np.percentile(nonzero, 0.5))) if nonzero.size else 0.0
    vmax = float(np.percentile(nonzero, 99.5)) if nonzero.size else 1.0
    ax.imshow(shown(np.ma.masked_where(image == 0, image)), cmap=plt.get_cmap("gray").with_extremes(bad="black"),
              vmin=vmin, vmax=vmax, origin="lower", aspect=aspect, interpolation="nearest")
    heat = np.where(brain, heat, 0.0)
    mappable = ax.imshow(shown(np.ma.masked_where(~brain | (heat <= 0), heat)), cmap=cmap, vmin=0,
                         vmax=float(heat.max()) or 1.0, alpha=alpha, origin="lower", aspect=aspect,
                         interpolation="nearest")
    if outline is not None and np.any(outline):
        ax.contour(shown(np.asarray(outline, dtype=float)), levels=[0.5], colors=["cyan"], linewidths=1.0)
    _mark_orientation(ax, name, radiological)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({name})" if title else name, fontsize=9)
    fig.colorbar(mappable, ax=ax, shrink=0.8, label=heat_label)
    return fig


def plot_subjects(images: Sequence[dict], spacing: Sequence[float], colors: dict | None = None):
    """A grid of orthogonal views, one row per item ``{"image", "label", "title"}`` (optional
    ``"point"`` and ``"style"`` as in :func:`plot_orthogonal`).

    Example:
        >>> fig = plot_subjects([{"image": np.random.rand(8, 8, 8), "title": "a"}], (1, 1, 1))
        >>> len(fig.axes)
        3
    """
    fig, grid = plt.subplots(len(images), 3, figsize=(10, 3.2 * len(images)), constrained_layout=True, squeeze=False)
    for row, item in zip(grid, images):
        plot_orthogonal(item["image"], item.get("label"), spacing, colors=colors, title=item.get("title"), axes=row,
                        point=item.get("point"), style=item.get("style", "fill"))
    return fig


def plot_entropy(table, threshold: float, position_window: Sequence[float], title: str = ""):
    """Entropy histogram with the threshold, and entropy against slice position with the window.

    Args:
        table: output of :func:`kit.data.curate.curate_slices` (columns entropy, position, kept).
        threshold: entropy threshold (bits).
        position_window: (lo, hi) relative positions.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"entropy": [0, 3, 4], "position": [0, .5, 1], "kept": [False, True, False]})
        >>> len(plot_entropy(t, 2.0, (0.1, 0.9)).axes)
        2
    """
    fig, (ax_hist, ax_pos) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    ax_hist.hist(table.entropy, bins=40, color="0.4")
    ax_hist.axvline(threshold, color="tab:red", label=f"threshold {threshold:g} bits")
    ax_hist.set_xlabel("slice entropy (bits)")
    ax_hist.set_ylabel("slices")
    ax_hist.legend(fontsize=8)
    kept = table.kept.to_numpy(dtype=bool)
    ax_pos.scatter(table.position[~kept], table.entropy[~kept], s=6, color="0.6", label="dropped")
    ax_pos.scatter(table.position[kept], table.entropy[kept], s=6, color="tab:blue", label="kept")
    ax_pos.axhline(threshold, color="tab:red", lw=1)
    for edge in position_window:
        ax_pos.axvline(edge, color="tab:orange", lw=1, ls="--")
    ax_pos.set_xlabel("relative slice position in the brain")
    ax_pos.set_ylabel("entropy (bits)")
    ax_pos.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig



def plot_retained_fraction(retained: dict, title: str = ""):
    """Bars of the fraction of slices each criterion keeps, per cohort (from :func:`kit.data.curate.retained_fraction`).

    Args:
        retained: ``{cohort: {'n_slices', 'entropy', 'position', 'both'}}``.

    Example:
        >>> r = {"tumor": {"n_slices": 10, "entropy": 0.8, "position": 0.8, "both": 0.7}}
        >>> len(plot_retained_fraction(r).axes)
        1
    """
    names = list(retained)
    criteria = (("entropy", "entropy >= threshold"), ("position", "inside position window"), ("both", "kept (both)"))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.2), constrained_layout=True)
    width = 0.8 / len(criteria)
    for k, (key, label) in enumerate(criteria):
        values = [retained[n][key] for n in names]
        bars = ax.bar(np.arange(len(names)) + (k - 1) * width, values, width, label=label)
        if key == "both":
            ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7)
    ax.set_xticks(np.arange(len(names)), [f"{n}\n({retained[n]['n_slices']} slices)" for n in names], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("fraction of slices")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_kept_dropped(volume: np.ndarray, table, axis: int = 2, n: int = 4, title: str = ""):
    """Example slices the filter keeps (top row) and drops (bottom row), with entropy and position.

    Args:
        volume: the filtered channel ``(X, Y, Z)`` of one subject.
        table: that subject's rows of the slice table (``slice``, ``entropy``, ``position``,
            ``keep_entropy``, ``keep_position``, ``kept``).
        axis: slicing axis.
        n: slices per row, evenly spread over the kept (resp. dropped) ones.

    Example:
        >>> import pandas as pd
        >>> v = np.random.rand(8, 8, 6)
        >>> t = pd.DataFrame({"slice": range(6), "entropy": [0, 3, 3, 3, 3, 0], "position": np.linspace(0, 1, 6),
        ...                   "keep_entropy": [0, 1, 1, 1, 1, 0], "keep_position": [1] * 6, "kept": [0, 1, 1, 1, 1, 0]})
        >>> len(plot_kept_dropped(v, t, n=2).axes)
        4
    """
    kept = table[table.kept.astype(bool)]
    dropped = table[~table.kept.astype(bool)]
    fig, axes = plt.subplots(2, n, figsize=(2.1 * n, 4.6), constrained_layout=True, squeeze=False)
    for ax_row, rows, name in ((axes[0], kept, "kept"), (axes[1], dropped, "dropped")):
        picks = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))] if len(rows) else rows
        for ax in ax_row:
            ax.set_xticks([]); ax.set_yticks([])
            ax.set_facecolor("black")
        for ax, row in zip(ax_row, picks.itertuples()):
            plane = np.take(np.asarray(volume, dtype=np.float32), int(row.slice), axis=axis)
            ax.imshow(plane.T, cmap="gray", origin="lower", interpolation="nearest")
            why = "" if name == "kept" else ("\nlow entropy" if not row.keep_entropy else "") + (
                " outside window" if not row.keep_position else "")
            ax.set_title(f"{name} z={int(row.slice)}\n{row.entropy:.1f} bits, pos {row.position:.2f}{why}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_ssl_preview(preview: dict, channel: int = 0, title: str = ""):
    """Central axial slices of an SSL preview: every volume the objective returns, side by side.

    Args:
        preview: ``{name: array}`` as returned by any SSL objective's ``preview(x, seeds)``: volumes
            (B, C, X, Y, Z) or (C, X, Y, Z) (first sample shown; each at its own size, masks as
            booleans), and per-sample values (B,) which go into the title (first sample). With
            ``preview['spatial_dims'] == 2`` the images are slices (B, C, H, W) or (C, H, W) (moco_v3).
        channel: which channel to show (clipped to a volume's channels, e.g. a one-channel mask).

    Example:
        >>> p = {"input": np.random.rand(1, 8, 8, 8), "reconstruction": np.random.rand(1, 8, 8, 8),
        ...      "similarity": np.array([0.5])}
        >>> fig = plot_ssl_preview(p, title="mim")
        >>> len(fig.axes), fig._suptitle.get_text()
        (2, 'mim (similarity 0.5)')
        >>> len(plot_ssl_preview({"input": np.random.rand(2, 1, 8, 8), "view_1": np.random.rand(2, 1, 8, 8),
        ...                       "spatial_dims": 2}).axes)
        2
    """
    two_d = preview.get("spatial_dims") == 2  # slices (B, C, H, W), e.g. moco_v3's views
    names = [k for k, v in preview.items() if hasattr(v, "ndim") and v.ndim in ((3, 4) if two_d else (4, 5))]
    values = [f"{k.replace('_', ' ')} {np.asarray(v).reshape(-1)[0]:.3g}" for k, v in preview.items()
              if hasattr(v, "ndim") and v.ndim == 1 and len(v) and np.issubdtype(np.asarray(v).dtype, np.number)]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.9), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        arr = np.asarray(preview[name], dtype=np.float32)
        arr = arr[0] if arr.ndim == (4 if two_d else 5) else arr
        channel_image = arr[min(channel, arr.shape[0] - 1)]
        plane = channel_image if two_d else channel_image[:, :, arr.shape[-1] // 2]
        ax.imshow(plane.T, cmap="gray", origin="lower", interpolation="nearest")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title or values:
        fig.suptitle((title + (f" ({', '.join(values)})" if values else "")).strip(), fontsize=10)
    return fig


def plot_loss_curves(records: Sequence[dict], terms: Sequence[str] | None = None, title: str = ""):
    """Loss per term against optimizer step, with the learning rate on a twin axis; the gradient
    norm (not a loss: a different scale) on a panel of its own.

    Args:
        records: metrics records (``step``, ``loss``, one key per term, ``lr``, optional
            ``grad_norm``), as in metrics.json.
        terms: which keys to draw on the loss axis; default every numeric key except
            step/lr/grad_norm/timing.

    Example:
        >>> recs = [{"step": i, "loss": 1 / (i + 1), "rot": 0.5, "lr": 1e-3} for i in range(5)]
        >>> len(plot_loss_curves(recs).axes)  # losses and the learning-rate twin
        2
        >>> len(plot_loss_curves([dict(r, grad_norm=3.0) for r in recs]).axes)
        3
    """
    skip = {"step", "lr", "samples_per_s", "elapsed_s", "epoch", "grad_norm"}
    if terms is None:
        terms = [k for k in records[0] if k not in skip and isinstance(records[0][k], (int, float))] if records else []
    has_grad = any(isinstance(r.get("grad_norm"), (int, float)) for r in records)
    if has_grad:
        fig, (ax, grad_ax) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True, width_ratios=[2, 1])
    else:
        fig, ax = plt.subplots(figsize=(6.5, 3.4), constrained_layout=True)
    steps = [r["step"] for r in records]
    for term in terms:
        ax.plot(steps, [r.get(term, np.nan) for r in records], label=term, lw=2 if term == "loss" else 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, loc="upper right")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r.get("lr", np.nan) for r in records], color="0.7", ls=":", label="lr")
    lr_ax.set_ylabel("learning rate", color="0.5")
    if has_grad:
        grad_ax.plot(steps, [r.get("grad_norm", np.nan) for r in records], color="tab:gray")
        grad_ax.set_xlabel("optimizer step")
        grad_ax.set_ylabel("gradient L2 norm (before clipping)")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_first_layer(model, modalities: Sequence[str], reference=None, ax=None,
                     title: str = "first-layer filters per input channel"):
    """Bar chart of the mean absolute first-layer weight per input channel (is every channel used?),
    beside the same architecture at its random initialisation when ``reference`` is given.

    Works for models on any device (the weights are copied to the CPU through ``to_numpy``).

    Args:
        model: a ``kit.models`` backbone (``first_conv_key`` names its first convolution's weight,
            shaped (out, in, kx, ky, kz)).
        modalities: one name per input channel, in order.
        reference: a freshly initialised model of the same architecture, or None.
        ax: matplotlib axes to draw on (default: a new figure).

    Returns:
        (figure, per-channel values as a float32 numpy array of length ``in``).

    Example:
        >>> from kit.models import create_model
        >>> fig, values = plot_first_layer(create_model("segresnet_small", in_channels=2), ["t1", "flair"],
        ...                                reference=create_model("segresnet_small", in_channels=2))
        >>> values.shape, len(fig.axes[0].patches)
        ((2,), 4)
    """

    def per_channel_of(net):
        weight = net.state_dict()[net.first_conv_key]
        if weight.shape[1] != len(modalities):
            raise ValueError(f"plot_first_layer: {weight.shape[1]} input channels but {len(modalities)} modalities {list(modalities)}")
        return to_numpy(weight.detach().abs().float().mean(dim=[0] + list(range(2, weight.ndim))))

    per_channel = per_channel_of(model)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 2.9), constrained_layout=True)
    x = np.arange(len(modalities))
    width = 0.4 if reference is not None else 0.8
    ax.bar(x, per_channel, width, label="trained")
    if reference is not None:
        ax.bar(x + width, per_channel_of(reference), width, color="0.7", label="random init")
        ax.legend(fontsize=8)
    ax.set_xticks(x + (width / 2 if reference is not None else 0), list(modalities))
    ax.set_xlabel("input channel")
    ax.set_ylabel("mean |weight|")
    ax.set_title(title, fontsize=10)
    return ax.figure, per_channel

