"""kit.viz.explorer (ipywidgets slice explorer, live loss plot) and kit.viz.viewer3d.

The widgets are driven from Python exactly as the browser drives them (setting a control's value
fires the same observers), and the PNG the image widget holds is decoded and compared.
"""

from __future__ import annotations

import io
import sys
import time

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("ipywidgets")
from PIL import Image  # noqa: E402  (matplotlib dependency)

from kit.viz.explorer import SliceExplorer, explorer, live_loss_plot, render_planes, subject_explorer  # noqa: E402
from kit.viz.static import BRATS_COLORS, label_colors_for  # noqa: E402

SHAPE = (24, 28, 20)


def _phantom(seed: int = 0):
    """A head-like ellipsoid with smooth structure, two modalities and a BraTS-style lesion."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    brain = r < 0.9
    t1 = (brain * (1.0 + 0.5 * np.cos(6 * x) * np.sin(5 * y) + 0.3 * z) + 0.02 * rng.random(SHAPE)).astype(np.float32)
    flair = (brain * (1.2 - r) + 0.02 * rng.random(SHAPE)).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    lesion = np.sqrt((x - 0.3) ** 2 + (y + 0.2) ** 2 + z**2)
    label[lesion < 0.45] = 2
    label[lesion < 0.3] = 4
    label[lesion < 0.15] = 1
    return {"flair": flair, "t1": t1}, label


def _decode(widget) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(bytes(widget.image.value))).convert("RGB"))


def _coloured(rgb: np.ndarray) -> int:
    """Pixels that are not grey (label colours, overlay map, crosshair)."""
    rgb = rgb.astype(np.int16)
    return int(((np.abs(rgb[..., 0] - rgb[..., 1]) > 3) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 3)).sum())


@pytest.fixture
def volumes():
    return _phantom()


def test_explorer_builds_with_controls_and_css_classes(volumes):
    images, label = volumes
    w = explorer(images, label, spacing=(2, 2, 2), title="phantom")
    assert isinstance(w, SliceExplorer)
    assert "kit-explorer" in w._dom_classes
    for axis, n in zip("xyz", SHAPE):
        slider = w.sliders[axis]
        assert f"kit-slider-{axis}" in slider._dom_classes
        assert slider.description == axis and (slider.min, slider.max) == (0, n - 1)
    assert "kit-modality" in w.modality._dom_classes and list(w.modality.options) == ["flair", "t1"]
    assert w.lesion.description == "lesion overlay" and w.lesion.value is True
    assert w.opacity.description == "opacity" and not w.opacity.disabled
    assert "kit-explorer-image" in w.image._dom_classes and w.image.format == "png"
    # default point: the lesion's centroid, so the first picture shows the lesion
    assert label[w.point] != 0
    # what the browser gets is exactly render()
    np.testing.assert_array_equal(_decode(w), w.render())
    assert "label = " in w.info.value and "phantom" in w.children[0].value


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_moving_a_slider_changes_the_picture(volumes, axis):
    images, label = volumes
    w = explorer(images, label, spacing=(2, 2, 2))
    before, renders = bytes(w.image.value), w.n_renders
    w.sliders[axis].value = w.sliders[axis].value + 3
    assert w.n_renders == renders + 1
    assert bytes(w.image.value) != before
    assert f"{axis}={w.sliders[axis].value}" in w.info.value
    # and back: the picture is a function of the controls only
    w.sliders[axis].value = w.sliders[axis].value - 3
    assert bytes(w.image.value) == before


def test_modality_switch_changes_the_picture(volumes):
    images, label = volumes
    w = explorer(images, label)
    flair = _decode(w)
    w.modality.value = "t1"
    t1 = _decode(w)
    assert not np.array_equal(flair, t1)
    np.testing.assert_array_equal(t1, render_planes(images["t1"], w.point, label=label, px_per_mm=w._px_per_mm))


def test_lesion_toggle_off_removes_the_overlay_colours(volumes):
    images, label = volumes
    w = explorer(images, label)
    w.crosshair.value = False
    with_lesion = _decode(w)
    assert _coloured(with_lesion) > 50
    w.lesion.value = False
    without = _decode(w)
    assert _coloured(without) == 0
    # without the overlay the picture is the plain grey image
    plain = explorer(images, None, point=w.point)
    plain.crosshair.value = False
    np.testing.assert_array_equal(without, _decode(plain))
    assert plain.lesion.disabled and plain.opacity.disabled


def test_label_colours_follow_the_colour_table(volumes):
    images, label = volumes
    point = tuple(int(c) for c in np.argwhere(label == 1).mean(axis=0).round())
    rgb = render_planes(np.zeros(SHAPE, np.float32), point, label=label, crosshair=False, px_per_mm=1)
    necrotic = np.array(BRATS_COLORS[1][1][:3]) * BRATS_COLORS[1][1][3] * 255  # on a black image
    assert np.any(np.all(np.abs(rgb.astype(float) - necrotic) <= 1, axis=-1))


def test_opacity_changes_pixels(volumes):
    images, label = volumes
    w = explorer(images, label)
    w.crosshair.value = False
    full = _decode(w).astype(int)
    w.opacity.value = 0.3
    faint = _decode(w).astype(int)
    assert not np.array_equal(full, faint)
    lesion_px = np.any(full != faint, axis=-1)
    assert lesion_px.sum() > 50
    # fainter overlay: the lesion pixels move toward grey
    assert _coloured(faint) <= _coloured(full)
    w.opacity.value = 0.0
    w.lesion.value = True
    invisible = _decode(w)
    w.lesion.value = False
    np.testing.assert_array_equal(invisible, _decode(w))


def test_overlay_map_is_drawn(volumes):
    images, label = volumes
    saliency = np.zeros(SHAPE, np.float32)
    saliency[8:16, 10:18, 6:14] = 1.0
    w = explorer(images, None, overlay=saliency, point=(12, 14, 10))
    w.crosshair.value = False
    assert _coloured(_decode(w)) > 50
    assert "overlay = 1" in w.info.value
    w.opacity.value = 0.0
    assert _coloured(_decode(w)) == 0


def test_panels_keep_the_physical_aspect_ratio():
    image = np.ones((10, 20, 5), np.float32)
    rgb = render_planes(image, (5, 10, 2), spacing=(1.0, 1.0, 4.0), px_per_mm=2, crosshair=False)
    # sagittal panel: 20 mm (y) wide, 20 mm (z) high at 2 px/mm; axial: 10 x 20 mm
    assert rgb.shape[0] == 40
    assert rgb.shape[1] == 40 + 4 + 20 + 4 + 20


def test_bad_inputs_name_what_is_wrong(volumes):
    images, label = volumes
    with pytest.raises(ValueError, match="'t1'.*shape"):
        explorer({"flair": images["flair"], "t1": images["t1"][:-1]})
    with pytest.raises(ValueError, match="label shape"):
        explorer(images, label[:, :, :-1])
    with pytest.raises(ValueError, match="3D"):
        explorer({"flair": images["flair"][..., None]})
    with pytest.raises(ValueError, match="non-empty"):
        explorer({})


def test_update_is_fast_at_2mm():
    # MNI152 at 2 mm is 91 x 109 x 91; budget 100 ms per update (measured ~10-30 ms), with slack
    # for a loaded 2-core machine
    rng = np.random.default_rng(1)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (91, 109, 91)), indexing="ij")
    image = ((x**2 + y**2 + z**2) < 0.8).astype(np.float32) * (1 + 0.1 * rng.standard_normal((91, 109, 91)))
    w = explorer({"t1": image.astype(np.float32)}, (image > 1.1).astype(np.uint8), spacing=(2, 2, 2))
    times = []
    for z_index in range(30, 45):
        w.sliders["z"].value = z_index
        times.append(w.last_render_s)
    assert np.median(times) < 0.25, f"median update {np.median(times) * 1000:.0f} ms"


def _write_subject(root, shape=SHAPE, zooms=(2.0, 2.0, 2.0)):
    images, label = _phantom(seed=3)
    affine = np.diag([*zooms, 1.0])
    paths = []
    for name in ("flair", "t1ce", "t1", "t2"):
        data = images["flair" if name in ("flair", "t2") else "t1"] * (1.5 if name == "t1ce" else 1.0)
        path = root / f"sub-01_{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), path)
        paths.append(str(path))
    label_path = root / "sub-01_seg.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), label_path)
    return {"subject": "sub-01", "image": paths, "label": str(label_path), "tumor_type": "glioma", "idh": 1}


def test_subject_explorer_loads_nifti_files(tmp_path):
    entry = _write_subject(tmp_path)
    modalities = ["flair", "t1ce", "t1", "t2"]
    colors = label_colors_for({0: "background", 1: "necrotic core", 2: "edema", 4: "enhancing"})
    w = subject_explorer(entry, modalities, colors)
    assert list(w.modality.options) == modalities
    assert w._spacing == (2.0, 2.0, 2.0)
    assert "sub-01" in w.children[0].value and "glioma" in w.children[0].value
    _, label = _phantom(seed=3)
    np.testing.assert_array_equal(w._label, label)
    assert label[w.point] != 0
    before = bytes(w.image.value)
    w.modality.value = "t1ce"
    assert bytes(w.image.value) != before
    assert "enhancing" in w.children[-1].value  # legend lists the compartments present


def test_subject_explorer_reports_bad_files(tmp_path):
    entry = _write_subject(tmp_path)
    modalities = ["flair", "t1ce", "t1", "t2"]
    missing = dict(entry, image=entry["image"][:3] + [str(tmp_path / "nope.nii.gz")])
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        subject_explorer(missing, modalities)
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), small)
    with pytest.raises(ValueError, match="small.nii.gz.*shape"):
        subject_explorer(dict(entry, image=entry["image"][:3] + [str(small)]), modalities)
    with pytest.raises(ValueError, match="small.nii.gz.*label shape"):
        subject_explorer(dict(entry, label=str(small)), modalities)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        subject_explorer(dict(entry, image=[str(broken)] * 4), modalities)
    with pytest.raises(ValueError, match="3 image files for 4 modalities"):
        subject_explorer(dict(entry, image=entry["image"][:3]), modalities)


def test_live_loss_plot_follows_the_records():
    widget, callback = live_loss_plot(min_interval_s=0)
    assert "kit-loss-plot" in widget._dom_classes
    pictures = []
    for step in range(4):
        callback(step, {"loss": 2.0 / (step + 1), "rot": 1.0 / (step + 1), "recon": 0.5, "lr": 1e-3 * step})
        pictures.append(bytes(callback.image.value))
    assert [r["step"] for r in callback.records] == [0, 1, 2, 3]
    assert callback.n_draws == 4 and len(set(pictures)) == 4
    assert "step 3" in callback.status.value and "loss 0.5" in callback.status.value
    Image.open(io.BytesIO(pictures[-1])).verify()


def test_live_loss_plot_throttles_redraws():
    _, callback = live_loss_plot(min_interval_s=60)
    for step in range(5):
        callback(step, {"loss": 1.0, "lr": 0.1})
    assert callback.n_draws == 1 and len(callback.records) == 5
    first = bytes(callback.image.value)
    callback.draw()
    assert callback.n_draws == 2 and bytes(callback.image.value) != first


# ---------------------------------------------------------------- kit.viz.viewer3d


def test_niivue_view_builds_offline_widget(tmp_path):
    pytest.importorskip("ipyniivue")
    from kit.viz.viewer3d import niivue_view

    entry = _write_subject(tmp_path)
    images, label = _phantom()
    nv = niivue_view({"flair": images["flair"], "t1": images["t1"]}, label=label, affine=np.diag([2, 2, 2, 1]))
    assert [v.name for v in nv.volumes] == ["flair.nii", "t1.nii", "label.nii"]
    loaded = nib.Nifti1Image.from_bytes(nv.volumes[0].data)
    np.testing.assert_array_equal(loaded.get_fdata(dtype=np.float32), images["flair"])
    lut = nv.volumes[-1].colormap_label
    assert (lut.min, lut.max) == (0, 4) and len(lut.lut) == 5 * 4
    from_paths = niivue_view(entry["image"][:2], label=entry["label"])
    assert [v.name for v in from_paths.volumes] == ["sub-01_flair.nii.gz", "sub-01_t1ce.nii.gz", "sub-01_seg.nii.gz"]
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        niivue_view(str(tmp_path / "missing.nii.gz"))


def test_viewers_explain_missing_packages(monkeypatch):
    from kit.viz import viewer3d

    monkeypatch.setitem(sys.modules, "ipyniivue", None)
    with pytest.raises(ImportError, match="pip install"):
        viewer3d.niivue_view(np.zeros((4, 4, 4), np.float32))
    monkeypatch.setitem(sys.modules, "itkwidgets", None)
    with pytest.raises(ImportError, match="pip install"):
        viewer3d.itk_view(np.zeros((4, 4, 4)), interactive=True)


def test_itk_view_refuses_headless_runs(monkeypatch):
    from kit.viz import viewer3d

    assert viewer3d.is_interactive() is False  # pytest is no kernel
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="niivue_view"):
        viewer3d.itk_view(np.zeros((4, 4, 4)))
    assert time.monotonic() - start < 1.0  # refuses at once, never hangs
    monkeypatch.setenv("KIT_HEADLESS", "1")
    with pytest.raises(RuntimeError, match="headless"):
        viewer3d.itk_view(np.zeros((4, 4, 4)))


def test_is_interactive_in_a_kernel_unless_flagged_headless(monkeypatch):
    import types

    from kit.viz import viewer3d

    class ZMQInteractiveShell:  # the class name IPython's kernel shell has
        pass

    fake = types.SimpleNamespace(get_ipython=lambda: ZMQInteractiveShell())
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("KIT_HEADLESS", raising=False)
    assert viewer3d.is_interactive() is True
    monkeypatch.setenv("KIT_HEADLESS", "0")
    assert viewer3d.is_interactive() is True
    monkeypatch.setenv("CI", "true")
    assert viewer3d.is_interactive() is False
