"""Optional 3D viewers: NiiVue (offline, through ipyniivue) and itkwidgets (online only).

Both are optional extras and imported only when called; a missing package raises ImportError with
the pip command. Neither belongs in a headless run: they need a browser with a live kernel.

- :func:`niivue_view` works offline: ipyniivue ships NiiVue's JavaScript inside its wheel, and the
  volumes travel to the browser as NIfTI bytes through the widget's comm.
- :func:`itk_view` uses itkwidgets, which loads its viewer from remote hosts (an IPFS gateway and
  a CDN) at render time, so it cannot work offline, and without a browser it blocks the next cell
  (papermill waits forever). It therefore refuses to run when the session is not interactive.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kit.viz.static import BRATS_COLORS

__all__ = ["niivue_view", "itk_view", "is_interactive"]

# Environment variables that mark a run without a person at a browser.
HEADLESS_ENV = ("KIT_HEADLESS", "CI")


def is_interactive() -> bool:
    """True inside a Jupyter kernel that is not flagged headless.

    A kernel cannot tell JupyterLab from papermill by itself, so headless runners mark themselves:
    ``KIT_HEADLESS`` or ``CI`` set to a true value (not ``""``,
    ``0``, ``false``, ``no``) means headless. Outside a kernel (plain python, pytest) it is False.

    Example:
        >>> is_interactive()   # in a script or doctest
        False
    """
    for name in HEADLESS_ENV:
        if os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no"):
            return False
    ipython = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def _nifti_bytes(array: np.ndarray, affine: np.ndarray | None, name: str) -> bytes:
    import nibabel as nib

    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a 3D array (X, Y, Z), got shape {array.shape}")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{name}: affine must be 4x4, got shape {affine.shape}")
    return nib.Nifti1Image(array, affine).to_bytes()


def _volume_source(item, affine, name: str) -> dict:
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        return {"path": path}
    # NiiVue needs a file name with a NIfTI extension to pick its reader
    return {"data": _nifti_bytes(item, affine, name), "name": f"{name}.nii"}


def _label_colormap(colors: Mapping) -> dict:
    top = max(int(v) for v in colors) if colors else 1
    rows = {0: ("background", (0.0, 0.0, 0.0, 0.0))}
    rows.update({int(v): (n, c) for v, (n, c) in colors.items()})
    values = sorted(rows)
    return {
        "R": [int(255 * rows[v][1][0]) for v in values],
        "G": [int(255 * rows[v][1][1]) for v in values],
        "B": [int(255 * rows[v][1][2]) for v in values],
        "A": [int(255 * rows[v][1][3]) if v else 0 for v in values],
        "I": values,
        "labels": [rows[v][0] for v in values],
        "min": 0,
        "max": top,
    }


def niivue_view(
    volumes: str | Path | np.ndarray | Sequence | Mapping,
    label: str | Path | np.ndarray | None = None,
    affine: np.ndarray | None = None,
    colors: Mapping | None = None,
    label_opacity: float = 0.6,
    height: int = 400,
):
    """A NiiVue 3D/multiplanar viewer widget through ipyniivue (offline; needs a live kernel).

    Args:
        volumes: a NIfTI path, a 3D array, a list of either, or ``{name: path or array}``; the
            first is the background, further ones are layered on top.
        label: label map (path or integer array) drawn with ``colors`` as a label colour table.
        affine: 4x4 voxel-to-mm matrix for arrays (default identity, i.e. 1 mm voxels); ignored for
            paths, whose header is used.
        colors: ``{value: (name, rgba)}``; default :data:`kit.viz.static.BRATS_COLORS`.
        label_opacity: 0..1.
        height: widget height in pixels.

    Returns:
        An ``ipyniivue.NiiVue`` widget; display it in JupyterLab.

    Raises:
        ImportError: ipyniivue missing (``pip install 'brainfm-kit[viewer]'``).

    Example:
        >>> nv = niivue_view({"flair": flair_array}, label=label_array, affine=affine)  # doctest: +SKIP
        >>> nv  # doctest: +SKIP
    """
    try:
        from ipyniivue import NiiVue
    except ImportError as err:
        raise ImportError("niivue_view needs ipyniivue: pip install 'brainfm-kit[viewer]' (or ipyniivue)") from err
    if isinstance(volumes, Mapping):
        items = list(volumes.items())
    elif isinstance(volumes, (str, Path, np.ndarray)):
        items = [("volume", volumes)]
    else:
        items = [(f"volume{i}", v) for i, v in enumerate(volumes)]
    if not items:
        raise ValueError("niivue_view needs at least one volume")
    sources = []
    for i, (name, item) in enumerate(items):
        source = _volume_source(item, affine, str(name))
        source.update({"colormap": "gray", "opacity": 1.0 if i == 0 else 0.5})
        sources.append(source)
    viewer = NiiVue(height=height)
    viewer.load_volumes(sources)
    if label is not None:
        source = _volume_source(label, affine, "label")
        source["opacity"] = float(label_opacity)
        viewer.add_volume(source)
        viewer.volumes[-1].set_colormap_label(_label_colormap(BRATS_COLORS if colors is None else colors))
    return viewer


def itk_view(image, label=None, interactive: bool | None = None, **kwargs):
    """An itkwidgets viewer (``itkwidgets.view``); ONLINE ONLY and never in a headless run.

    itkwidgets loads its viewer from remote hosts when the widget renders, so it fails offline,
    and in a kernel without a browser (papermill, CI) it blocks the next cell. This function
    therefore raises instead of hanging when the session is not interactive.

    Args:
        image: array (X, Y, Z) or anything ``itkwidgets.view`` accepts.
        label: label map, passed as ``label_image``.
        interactive: force the check; default :func:`is_interactive`.
        **kwargs: passed to ``itkwidgets.view``.

    Raises:
        RuntimeError: not interactive (headless run, CI, plain python).
        ImportError: itkwidgets missing (``pip install 'itkwidgets[notebook]'``).

    Example:
        >>> itk_view(flair_array, label=label_array)  # in JupyterLab with internet  # doctest: +SKIP
    """
    if not (is_interactive() if interactive is None else interactive):
        raise RuntimeError(
            "itk_view needs JupyterLab with a browser and internet (itkwidgets loads its viewer from "
            "remote hosts and blocks headless runs); use kit.viz.viewer3d.niivue_view (offline) or "
            "kit.viz.explorer.explorer instead"
        )
    try:
        import itkwidgets
    except ImportError as err:
        raise ImportError("itk_view needs itkwidgets: pip install 'itkwidgets[notebook]'") from err
    if label is not None:
        kwargs["label_image"] = label
    return itkwidgets.view(image, **kwargs)
