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

__all__ = [
    "BRATS_COLORS", "STROKE_COLORS", "label_colors_for", "plot_orthogonal", "plot_subjects", "plot_entropy",
    "plot_ssl_preview", "plot_loss_curves",
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
):
    """Sagittal, coronal and axial slices through ``point`` with an optional label overlay.

    Args:
        image: array (X, Y, Z) in RAS-like voxel order (as nibabel loads MNI/BraTS data).
        label: integer array (X, Y, Z) or None; values drawn with ``colors``.
        spacing: voxel size in mm (X, Y, Z), used for the aspect ratio.
        point: voxel (x, y, z) the three planes pass through; default the lesion's centroid,
            else the brain's.
        colors: ``{value: (name, rgba)}``; default :data:`BRATS_COLORS`.
        title: figure (or first-axis) title.
        axes: three matplotlib axes to draw into; a new 1x3 figure when None.
        vmax_percentile: upper display limit, percentile of the nonzero voxels.
        cmap: colour map of the image (``"gray"`` for MRI, ``"inferno"`` for saliency).
        style: ``"fill"`` paints label voxels, ``"contour"`` draws their outlines so the image
            underneath stays visible.

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
    colors = BRATS_COLORS if colors is None else colors
    x, y, z = point if point is not None else default_point(image, label)
    nonzero = image[image != 0]
    vmax = float(np.percentile(nonzero, vmax_percentile)) if nonzero.size else 1.0
    # z-scored inputs (the cache, model inputs) are negative in half the brain: start the grey
    # scale at their low percentile and paint the exact-zero background black instead
    vmin = min(0.0, float(np.percentile(nonzero, 100 - vmax_percentile))) if nonzero.size else 0.0
    shown_cmap = plt.get_cmap(cmap).copy()
    shown_cmap.set_bad("black")
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), constrained_layout=True)
    else:
        fig = axes[0].figure
    sx, sy, sz = spacing
    planes = [
        ("sagittal", image[x, :, :], None if label is None else label[x, :, :], sz / sy, f"x={x}"),
        ("coronal", image[:, y, :], None if label is None else label[:, y, :], sz / sx, f"y={y}"),
        ("axial", image[:, :, z], None if label is None else label[:, :, z], sy / sx, f"z={z}"),
    ]
    for ax, (name, plane, lab, aspect, where) in zip(axes, planes):
        # transpose + origin lower: superior/anterior up, as radiologists read it
        shown = np.ma.masked_where(plane.T == 0, plane.T) if vmin < 0 else plane.T
        ax.imshow(shown, cmap=shown_cmap, vmin=vmin, vmax=vmax, origin="lower", aspect=aspect, interpolation="nearest")
        if lab is not None and np.any(lab):
            if style == "contour":
                for value, (_, color) in colors.items():
                    if np.any(lab == value):
                        ax.contour((lab.T == value).astype(float), levels=[0.5], colors=[color[:3]], linewidths=1.2)
            else:
                ax.imshow(_overlay_rgba(lab.T, colors), origin="lower", aspect=aspect, interpolation="nearest")
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
    """Loss per term against optimizer step, with the learning rate on a twin axis.

    Args:
        records: metrics records (``step``, ``loss``, one key per term, ``lr``), as in metrics.json.
        terms: which keys to draw; default every numeric key except step/lr/timing.

    Example:
        >>> recs = [{"step": i, "loss": 1 / (i + 1), "rot": 0.5, "lr": 1e-3} for i in range(5)]
        >>> len(plot_loss_curves(recs).axes)
        2
    """
    skip = {"step", "lr", "samples_per_s", "elapsed_s", "epoch"}
    if terms is None:
        terms = [k for k in records[0] if k not in skip and isinstance(records[0][k], (int, float))] if records else []
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
    if title:
        ax.set_title(title, fontsize=10)
    return fig
