"""Interactive slice explorer and live loss plot (ipywidgets; needs a live Jupyter kernel).

The explorer shows sagittal, coronal and axial slices of a 3D volume side by side, with one slider
per axis, a modality selector, a label overlay that can be switched off, and an opacity slider.
Each update is drawn in numpy (nearest-neighbour, physical aspect ratio from the voxel spacing)
and sent as one PNG to an ``ipywidgets.Image``: no matplotlib figure per update, so an update takes
about 10-30 ms at 2 mm on 2 CPU cores, and what the browser shows is exactly :meth:`SliceExplorer.render`.

Widgets only move with a live kernel (JupyterLab, Notebook, VS Code). In a notebook executed
headless (papermill, ``kit reproduce``) there is no frontend: the saved output holds at most a
static snapshot, and the notebooks draw their static figures with :mod:`kit.viz.static` instead.

CSS classes for tests and styling: ``kit-explorer`` (the whole widget), ``kit-explorer-image``
(the rendered slices), ``kit-slider-x`` / ``-y`` / ``-z``, ``kit-modality``, ``kit-opacity``,
``kit-lesion``, ``kit-crosshair``, ``kit-explorer-info``; ``kit-loss-plot`` for :func:`live_loss_plot`.
"""

from __future__ import annotations

import html
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

try:
    import ipywidgets as widgets
except ImportError as err:  # pragma: no cover - ipywidgets is in the notebooks extra
    raise ImportError("kit.viz.explorer needs ipywidgets: pip install 'brainfm-kit[notebooks]' (or ipywidgets)") from err

from kit.viz.static import BRATS_COLORS, default_point

__all__ = ["SliceExplorer", "explorer", "subject_explorer", "render_planes", "live_loss_plot", "LiveLossPlot"]

PLANES = ("sagittal", "coronal", "axial")
_CROSSHAIR_RGB = np.array([0.2, 0.8, 1.0], dtype=np.float32)
_GAP_PX = 4


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image  # a dependency of matplotlib

    buf = io.BytesIO()
    # compress_level 1: PNG encoding is the slowest step of an update; size hardly matters locally
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _robust_vmax(volume: np.ndarray, percentile: float = 99.5) -> float:
    # a strided sample is plenty for a display window and keeps 1 mm volumes fast
    step = max(1, int(round((volume.size / 2e5) ** (1 / 3))))
    sample = volume[::step, ::step, ::step]
    sample = sample[np.isfinite(sample) & (sample > 0)]
    vmax = float(np.percentile(sample, percentile)) if sample.size else 0.0
    return vmax if vmax > 0 else 1.0


def _upsample_index(n_vox: int, px_per_vox: float) -> np.ndarray:
    n_px = max(1, int(round(n_vox * px_per_vox)))
    return np.minimum((np.arange(n_px) / px_per_vox).astype(np.intp), n_vox - 1)


def render_planes(
    image: np.ndarray,
    point: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    vmax: float | None = None,
    label: np.ndarray | None = None,
    colors: Mapping | None = None,
    show_label: bool = True,
    opacity: float = 1.0,
    overlay: np.ndarray | None = None,
    overlay_vmax: float | None = None,
    crosshair: bool = True,
    px_per_mm: float = 1.0,
    radiological: bool = True,
) -> np.ndarray:
    """Sagittal, coronal and axial slices through ``point`` as one RGB picture, drawn in numpy.

    The layout and orientation match :func:`kit.viz.static.plot_orthogonal` for a RAS+ array
    (superior and anterior up; sagittal with anterior on the left; radiological convention, the
    patient's right on the screen's left, unless ``radiological=False``); each panel keeps the
    physical aspect ratio of the voxels. :func:`orientation_caption` names the sides.

    Args:
        image: array (X, Y, Z); shown in grey from 0 to ``vmax``.
        point: voxel (x, y, z) the three planes pass through.
        spacing: voxel size in mm (X, Y, Z).
        vmax: upper display limit; default the 99.5th percentile of the positive voxels.
        label: integer array (X, Y, Z) or None; values drawn with ``colors``.
        colors: ``{value: (name, rgba)}``; default :data:`kit.viz.static.BRATS_COLORS`.
        show_label: draw the label overlay.
        opacity: 0..1, multiplies the label colours' alpha and the overlay map's alpha.
        overlay: float array (X, Y, Z) or None, e.g. a saliency map, drawn with the ``inferno``
            colour map; alpha grows with the value so that low values stay transparent.
        overlay_vmax: value drawn fully opaque (times ``opacity``); default its 99.5th percentile.
        crosshair: draw where the other two planes cut each panel.
        px_per_mm: output pixels per millimetre.

    Returns:
        uint8 array (H, W, 3): the three panels left to right, separated by a 4-pixel black gap.

    Example:
        >>> rgb = render_planes(np.random.rand(20, 24, 16), (10, 12, 8), spacing=(2, 2, 2), px_per_mm=2)
        >>> rgb.shape, rgb.dtype
        ((96, 264, 3), dtype('uint8'))
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"render_planes expects a 3D image, got shape {image.shape}")
    for name, extra in (("label", label), ("overlay", overlay)):
        if extra is not None and np.shape(extra) != image.shape:
            raise ValueError(f"{name} shape {np.shape(extra)} differs from image shape {image.shape}")
    point = tuple(int(np.clip(p, 0, n - 1)) for p, n in zip(point, image.shape))
    colors = BRATS_COLORS if colors is None else colors
    vmax = _robust_vmax(image) if vmax is None else float(vmax)
    if overlay is not None and overlay_vmax is None:
        overlay_vmax = _robust_vmax(overlay)
    opacity = float(np.clip(opacity, 0.0, 1.0))
    px_per_vox = [float(s) * px_per_mm for s in spacing]

    panels = []
    # (fixed axis, horizontal axis, vertical axis) per plane, as plot_orthogonal draws them
    for fixed, horiz, vert in ((0, 1, 2), (1, 0, 2), (2, 0, 1)):
        index = [slice(None)] * 3
        index[fixed] = point[fixed]
        index = tuple(index)
        grey = np.clip(np.nan_to_num(image[index].astype(np.float32)) / vmax, 0.0, 1.0)
        rgb = np.repeat(grey[..., None], 3, axis=-1)  # (horiz, vert, 3)
        if overlay is not None and opacity > 0:
            value = np.clip(np.nan_to_num(np.asarray(overlay[index], dtype=np.float32)) / overlay_vmax, 0.0, 1.0)
            alpha = (value * opacity)[..., None]
            rgb = rgb * (1 - alpha) + _inferno_lut()[(value * 255).astype(np.intp)] * alpha
        if label is not None and show_label and opacity > 0:
            lab = label[index]
            for value, (_, rgba) in colors.items():
                mask = lab == value
                if mask.any():
                    a = float(rgba[3]) * opacity
                    rgb[mask] = rgb[mask] * (1 - a) + np.asarray(rgba[:3], dtype=np.float32) * a
        rows = _upsample_index(image.shape[vert], px_per_vox[vert])
        cols = _upsample_index(image.shape[horiz], px_per_vox[horiz])
        panel = rgb[cols][:, rows].transpose(1, 0, 2)[::-1]  # (vert px, horiz px, 3), superior up
        mirrored = fixed == 0 or radiological  # sagittal: anterior left; coronal/axial: patient's right left
        panel = np.ascontiguousarray(panel[:, ::-1] if mirrored else panel)
        if crosshair:
            h, w = panel.shape[:2]
            col = min(w - 1, int((point[horiz] + 0.5) * px_per_vox[horiz]))
            col = w - 1 - col if mirrored else col
            row = h - 1 - min(h - 1, int((point[vert] + 0.5) * px_per_vox[vert]))
            panel[:, col] = panel[:, col] * 0.4 + _CROSSHAIR_RGB * 0.6
            panel[row, :] = panel[row, :] * 0.4 + _CROSSHAIR_RGB * 0.6
        panels.append(panel)

    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + _GAP_PX * (len(panels) - 1)
    out = np.zeros((height, width, 3), dtype=np.float32)
    left = 0
    for panel in panels:
        top = (height - panel.shape[0]) // 2
        out[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + _GAP_PX
    return (out * 255 + 0.5).astype(np.uint8)


_INFERNO = None


def _inferno_lut() -> np.ndarray:
    global _INFERNO
    if _INFERNO is None:
        from matplotlib import colormaps

        _INFERNO = colormaps["inferno"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)
    return _INFERNO


def _swatch(rgba) -> str:
    r, g, b = (int(255 * c) for c in rgba[:3])
    return (f'<span style="display:inline-block;width:0.9em;height:0.9em;background:rgb({r},{g},{b});'
            f'border:1px solid #444;margin:0 0.3em 0 0.8em;vertical-align:middle"></span>')


class SliceExplorer(widgets.VBox):
    """Orthogonal slice explorer; built by :func:`explorer` (see there for the arguments).

    Attributes:
        sliders: ``{"x": IntSlider, "y": ..., "z": ...}``.
        modality: selector over the image names.
        opacity, lesion, crosshair: overlay opacity slider, label overlay and crosshair toggles.
        image: the ``ipywidgets.Image`` holding the current PNG.
        info: HTML line with the voxel under the crosshair.
        n_renders: how many times the picture was drawn (for tests and timing).
    """

    def __init__(self, images, label=None, spacing=(1.0, 1.0, 1.0), colors=None, overlay=None, title="",
                 point=None, panel_px=256):
        self._images, self._label, self._overlay = _check_volumes(images, label, overlay)
        self._spacing = tuple(float(s) for s in spacing)
        if len(self._spacing) != 3 or min(self._spacing) <= 0:
            raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing}")
        self._colors = dict(BRATS_COLORS if colors is None else colors)
        names = list(self._images)
        shape = self._images[names[0]].shape
        self._vmax = {name: _robust_vmax(vol) for name, vol in self._images.items()}
        self._overlay_vmax = None if self._overlay is None else _robust_vmax(self._overlay)
        extent_mm = max(n * s for n, s in zip(shape, self._spacing))
        self._px_per_mm = float(panel_px) / extent_mm
        self.n_renders = 0
        self.last_render_s = 0.0
        if point is None:
            point = default_point(self._images[names[0]], self._label)

        slider_layout = widgets.Layout(width="340px")
        self.sliders = {}
        for axis, (name, n, p) in enumerate(zip("xyz", shape, point)):
            slider = widgets.IntSlider(
                value=int(np.clip(p, 0, n - 1)), min=0, max=n - 1, step=1, description=name,
                continuous_update=True, layout=slider_layout,
                tooltip=f"{PLANES[axis]} plane (voxel index along {name})",
            )
            slider.add_class(f"kit-slider-{name}")
            self.sliders[name] = slider
        if len(names) <= 6:
            self.modality = widgets.ToggleButtons(options=names, value=names[0], description="modality",
                                                  style={"button_width": "auto"})
        else:
            self.modality = widgets.Dropdown(options=names, value=names[0], description="modality")
        self.modality.add_class("kit-modality")
        has_overlay = self._label is not None or self._overlay is not None
        self.opacity = widgets.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05, description="opacity",
                                           continuous_update=True, disabled=not has_overlay,
                                           layout=slider_layout)
        self.opacity.add_class("kit-opacity")
        self.lesion = widgets.Checkbox(value=self._label is not None, description="lesion overlay",
                                       disabled=self._label is None, indent=False)
        self.lesion.add_class("kit-lesion")
        self.crosshair = widgets.Checkbox(value=True, description="crosshair", indent=False)
        self.crosshair.add_class("kit-crosshair")
        self.image = widgets.Image(format="png")
        self.image.add_class("kit-explorer-image")
        self.info = widgets.HTML()
        self.info.add_class("kit-explorer-info")

        header = widgets.HTML(f"<b>{html.escape(title)}</b>" if title else "")
        legend = widgets.HTML(self._legend_html())
        controls = widgets.HBox([
            widgets.VBox(list(self.sliders.values())),
            widgets.VBox([self.opacity, widgets.HBox([self.lesion, self.crosshair])]),
        ])
        sides = widgets.HTML(f"<small>{html.escape(orientation_caption())}</small>")
        sides.add_class("kit-explorer-orientation")
        super().__init__([header, self.modality, controls, self.image, sides, self.info, legend])
        self.add_class("kit-explorer")
        for control in (*self.sliders.values(), self.modality, self.opacity, self.lesion, self.crosshair):
            control.observe(self._redraw, names="value")
        self._redraw()

    @property
    def point(self) -> tuple[int, int, int]:
        """The voxel (x, y, z) the three planes pass through."""
        return tuple(int(self.sliders[a].value) for a in "xyz")

    def render(self) -> np.ndarray:
        """The current picture as uint8 (H, W, 3), what the ``image`` widget shows."""
        name = self.modality.value
        return render_planes(
            self._images[name], self.point, self._spacing, vmax=self._vmax[name], label=self._label,
            colors=self._colors, show_label=bool(self.lesion.value), opacity=float(self.opacity.value),
            overlay=self._overlay, overlay_vmax=self._overlay_vmax, crosshair=bool(self.crosshair.value),
            px_per_mm=self._px_per_mm,
        )

    def _redraw(self, change=None):
        start = time.perf_counter()
        self.image.value = _png_bytes(self.render())
        self.info.value = self._info_html()
        self.n_renders += 1
        self.last_render_s = time.perf_counter() - start

    def _info_html(self) -> str:
        x, y, z = self.point
        name = self.modality.value
        text = (f"sagittal x={x} &nbsp;|&nbsp; coronal y={y} &nbsp;|&nbsp; axial z={z} &nbsp;&nbsp; "
                f"{name} = {float(self._images[name][x, y, z]):.4g}")
        if self._label is not None:
            value = int(self._label[x, y, z])
            label_name = self._colors.get(value, ("background" if value == 0 else "?",))[0]
            text += f" &nbsp;|&nbsp; label = {value} ({label_name})"
        if self._overlay is not None:
            text += f" &nbsp;|&nbsp; overlay = {float(self._overlay[x, y, z]):.4g}"
        return f"<span style='font-family:monospace;font-size:90%'>{text}</span>"

    def _legend_html(self) -> str:
        if self._label is None:
            return ""
        present = {int(v) for v in np.unique(self._label) if v != 0}
        items = [f"{_swatch(rgba)}{v}: {n}" for v, (n, rgba) in sorted(self._colors.items()) if v in present]
        return "<span style='font-size:90%'>" + ("".join(items) or "no lesion in this volume") + "</span>"


def _check_volumes(images, label, overlay):
    if not isinstance(images, Mapping) or not images:
        raise ValueError("images must be a non-empty dict {modality name: array (X, Y, Z)}")
    arrays, shape = {}, None
    for name, volume in images.items():
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"image {name!r} must be 3D (X, Y, Z), got shape {volume.shape}")
        if shape is not None and volume.shape != shape:
            raise ValueError(f"image {name!r} has shape {volume.shape}, the first image has {shape}")
        shape = volume.shape
        arrays[str(name)] = volume
    if label is not None:
        label = np.asarray(label)
        if label.shape != shape:
            raise ValueError(f"label shape {label.shape} differs from image shape {shape}")
        label = np.rint(np.nan_to_num(label)).astype(np.int16) if label.dtype.kind == "f" else label.astype(np.int16)
    if overlay is not None:
        overlay = np.asarray(overlay, dtype=np.float32)
        if overlay.shape != shape:
            raise ValueError(f"overlay shape {overlay.shape} differs from image shape {shape}")
    return arrays, label, overlay


def explorer(
    images: Mapping[str, np.ndarray],
    label: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    colors: Mapping | None = None,
    overlay: np.ndarray | None = None,
    title: str = "",
    point: Sequence[int] | None = None,
    panel_px: int = 256,
):
    """An ipywidgets explorer of orthogonal slices (needs a live kernel to respond).

    Args:
        images: ``{modality name: array (X, Y, Z)}``, all of one shape (e.g. flair, t1ce, t1, t2).
        label: integer array (X, Y, Z) or None; drawn with ``colors``, toggled by "lesion overlay".
        spacing: voxel size in mm (X, Y, Z); panels keep the physical aspect ratio.
        colors: ``{value: (name, rgba)}``; default :data:`kit.viz.static.BRATS_COLORS` (see
            :func:`kit.viz.static.label_colors_for`).
        overlay: float array (X, Y, Z) or None (e.g. a saliency map), drawn with ``inferno``.
        title: bold line above the controls.
        point: initial voxel (x, y, z); default the lesion's centroid, else the brain's.
        panel_px: pixels of the longest physical extent of the volume in each panel.

    Returns:
        A :class:`SliceExplorer` (an ``ipywidgets.VBox``): sliders ``x``, ``y``, ``z``, a
        ``modality`` selector, an ``opacity`` slider, ``lesion overlay`` and ``crosshair``
        checkboxes and the picture. Display it as the last expression of a cell or with ``display``.
        In a headless run (papermill) the output holds at most a static snapshot.

    Example:
        >>> vol = np.random.rand(24, 28, 20).astype(np.float32)
        >>> lab = np.zeros(vol.shape, np.uint8); lab[10:14, 12:16, 8:12] = 2
        >>> w = explorer({"t1": vol, "flair": vol ** 2}, lab, spacing=(2, 2, 2))
        >>> w.sliders["z"].value = 3; w.modality.value = "flair"  # the picture follows
        >>> bytes(w.image.value[:4])
        b'\\x89PNG'
    """
    return SliceExplorer(images, label=label, spacing=spacing, colors=colors, overlay=overlay, title=title,
                             point=point, panel_px=panel_px)


def orientation_caption(radiological: bool = True) -> str:
    """The sides of each panel of :func:`render_planes`, as text for a caption.

    Example:
        >>> orientation_caption()
        'sagittal: A | P, coronal: R | L, axial: R | L (left | right of each panel; radiological convention)'
    """
    side = "R | L" if radiological else "L | R"
    convention = "radiological" if radiological else "neurological"
    return f"sagittal: A | P, coronal: {side}, axial: {side} (left | right of each panel; {convention} convention)"


def _load_nifti(path) -> tuple[np.ndarray, tuple[float, ...]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    from kit.data.orientation import load_ras

    try:
        data, spacing, _ = load_ras(path)  # RAS+, so the markers and the radiological view are right
    except Exception as err:
        raise ValueError(f"{path}: cannot read as NIfTI ({err})") from err
    return data, spacing


def subject_explorer(entry: Mapping, modalities: Sequence[str], label_colors: Mapping | None = None,
                     title: str | None = None, **kwargs):
    """:func:`explorer` for one datalist entry, loading its NIfTI files.

    Args:
        entry: a datalist entry: ``{"image": [path per modality] or one path (3D, or 4D with the
            modalities on the last axis), "label": path (optional), "subject": name (optional)}``.
        modalities: channel names in the order of ``entry["image"]`` (a manifest's ``modalities``).
        label_colors: ``{value: (name, rgba)}``, e.g. ``label_colors_for(manifest.label_names)``.
        title: default the subject name with its tumour type / IDH status when present.
        **kwargs: passed to :func:`explorer` (``overlay``, ``point``, ``panel_px``).

    Returns:
        The explorer widget. Spacing comes from the first image's header.

    Example:
        >>> w = subject_explorer(results["tumor"].subjects[0], results["tumor"].manifest.modalities,
        ...                      label_colors_for(results["tumor"].manifest.label_names))  # doctest: +SKIP
    """
    paths = entry.get("image")
    if paths is None:
        raise ValueError(f"datalist entry {entry.get('subject', entry)!r} has no 'image'")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    modalities = list(modalities)
    images, spacing = {}, None
    if len(paths) == 1 and len(modalities) > 1:
        data, spacing = _load_nifti(paths[0])
        if data.ndim != 4 or data.shape[-1] != len(modalities):
            raise ValueError(f"{paths[0]}: expected a 4D image with {len(modalities)} channels "
                             f"({', '.join(modalities)}) on the last axis, got shape {data.shape}")
        images = {m: data[..., i] for i, m in enumerate(modalities)}
    else:
        if len(paths) != len(modalities):
            raise ValueError(f"datalist entry {entry.get('subject', '?')!r}: {len(paths)} image files "
                             f"for {len(modalities)} modalities ({', '.join(modalities)})")
        for path, name in zip(paths, modalities):
            data, zooms = _load_nifti(path)
            data = data[..., 0] if data.ndim == 4 and data.shape[-1] == 1 else data
            if data.ndim != 3:
                raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
            if images and data.shape != next(iter(images.values())).shape:
                raise ValueError(f"{path}: shape {data.shape} differs from "
                                 f"{paths[0]}'s {next(iter(images.values())).shape}")
            images[name] = data
            spacing = spacing or zooms
    label = None
    if entry.get("label"):
        label, _ = _load_nifti(entry["label"])
        label = label[..., 0] if label.ndim == 4 and label.shape[-1] == 1 else label
        shape = next(iter(images.values())).shape
        if label.shape != shape:
            raise ValueError(f"{entry['label']}: label shape {label.shape} differs from image shape {shape}")
    if title is None:
        title = str(entry.get("subject", Path(paths[0]).name))
        details = [f"{k.replace('_', ' ')} {entry[k]}" for k in ("tumor_type", "idh") if entry.get(k) not in (None, "")]
        if details:
            title += " (" + ", ".join(details) + ")"
    return explorer(images, label=label, spacing=spacing, colors=label_colors, title=title, **kwargs)


class LiveLossPlot:
    """Loss curves that redraw during training; the callable half of :func:`live_loss_plot`.

    Attributes:
        widget: the ``ipywidgets.VBox`` to display (a status line and the plot).
        records: every record received, in order.
        n_draws: how many times the plot was drawn.
    """

    def __init__(self, terms: Sequence[str] | None = None, title: str = "", min_interval_s: float = 1.0):
        self.terms = None if terms is None else list(terms)
        self.title = title
        self.min_interval_s = float(min_interval_s)
        self.records: list[dict] = []
        self.n_draws = 0
        self._last_draw = -np.inf
        self.image = widgets.Image(format="png")
        self.status = widgets.HTML("waiting for the first step")
        self.widget = widgets.VBox([self.status, self.image])
        self.widget.add_class("kit-loss-plot")

    def __call__(self, step: int, record: Mapping) -> None:
        """Record one optimizer step; redraw when ``min_interval_s`` has passed since the last draw.

        Args:
            step: optimizer step.
            record: ``{"loss": float, <term>: float, ..., "lr": float}`` (``step`` optional).
        """
        self.records.append({**record, "step": int(step)})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, (int, float)))
        self.status.value = f"<span style='font-family:monospace'>step {int(step)}: {shown}</span>"
        if time.monotonic() - self._last_draw >= self.min_interval_s:
            self.draw()

    def draw(self) -> None:
        """Redraw now (call once after training so that the last steps show)."""
        import matplotlib.pyplot as plt

        from kit.viz.static import plot_loss_curves

        if not self.records:
            return
        fig = plot_loss_curves(self.records, terms=self.terms, title=self.title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)  # closed figures are not shown again by the inline backend
        self.image.value = buf.getvalue()
        self.n_draws += 1
        self._last_draw = time.monotonic()


def live_loss_plot(terms: Sequence[str] | None = None, title: str = "", min_interval_s: float = 1.0):
    """A loss plot that follows training in a live notebook.

    Args:
        terms: record keys to plot; default every numeric key except step, lr and timings.
        title: plot title.
        min_interval_s: redraw at most this often (a draw costs ~0.1 s of matplotlib).

    Returns:
        ``(widget, callback)``: display ``widget``; the training loop calls ``callback(step, record)``
        with record keys ``loss``, the per-term losses and ``lr``; ``callback.draw()`` forces a final
        redraw and ``callback.records`` holds everything received.

    Example:
        >>> widget, callback = live_loss_plot(min_interval_s=0)
        >>> for step in range(3):
        ...     callback(step, {"loss": 1 / (step + 1), "rot": 0.5, "lr": 1e-3})
        >>> len(callback.records), bytes(widget.children[1].value[:4])
        (3, b'\\x89PNG')
    """
    plot = LiveLossPlot(terms=terms, title=title, min_interval_s=min_interval_s)
    return plot.widget, plot
