"""RAS+ everywhere: the same brain saved RAS and LPS gives the same arrays, figures and labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest

from kit.data.orientation import axcodes, from_ras, to_ras
from kit.viz import plot_orthogonal
from kit.viz.static import plot_heatmap_over_anatomy


def _asymmetric_brain(shape=(20, 24, 18)):
    """A blob with a marker in the patient's right-anterior-superior octant, so flips show."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    image = ((grid ** 2).sum(0) < 0.8).astype(np.float32) * (1 + 0.1 * rng.random(shape, dtype=np.float32))
    label = np.zeros(shape, np.uint8)
    label[13:16, 15:19, 11:14] = 1  # +x = right, +y = anterior, +z = superior in RAS
    return image, label


def _save_pair(tmp_path, image, label):
    """Save the RAS array as-is and as LPS (axes 0 and 1 flipped, affine to match): same world."""
    ras_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ras_affine[:3, 3] = [-20, -24, -18]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [image.shape[0] - 1, image.shape[1] - 1]
    lps_affine = ras_affine @ flip
    paths = {}
    for name, affine, img, lab in (("ras", ras_affine, image, label), ("lps", lps_affine, image[::-1, ::-1], label[::-1, ::-1])):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(img), affine), tmp_path / f"{name}_t1.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(lab), affine), tmp_path / f"{name}_seg.nii.gz")
        paths[name] = (tmp_path / f"{name}_t1.nii.gz", tmp_path / f"{name}_seg.nii.gz")
    return paths


def _render(fig) -> np.ndarray:
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return pixels


def test_lps_file_loads_to_the_same_ras_array_as_the_ras_file(tmp_path):
    image, label = _asymmetric_brain()
    paths = _save_pair(tmp_path, image, label)
    arrays = {}
    for name, (img_path, _) in paths.items():
        img = nib.load(img_path)
        arrays[name], affine = to_ras(np.asarray(img.dataobj), img.affine)
        assert axcodes(affine) == ("R", "A", "S")
    assert axcodes(nib.load(paths["lps"][0]).affine) == ("L", "P", "S")
    np.testing.assert_array_equal(arrays["ras"], arrays["lps"])
    lps = nib.load(paths["lps"][0])
    np.testing.assert_array_equal(from_ras(arrays["lps"], lps.affine), np.asarray(lps.dataobj))


def test_figures_of_ras_and_lps_files_are_identical(tmp_path):
    image, label = _asymmetric_brain()
    paths = _save_pair(tmp_path, image, label)
    rendered = {}
    for name, (img_path, seg_path) in paths.items():
        img, seg = nib.load(img_path), nib.load(seg_path)
        fig = plot_orthogonal(np.asarray(img.dataobj), np.asarray(seg.dataobj), affine=img.affine, title="same brain")
        rendered[name] = _render(fig)
    np.testing.assert_array_equal(rendered["ras"], rendered["lps"])
    # and without the affine the LPS array is drawn differently: the test can fail
    img = nib.load(paths["lps"][0])
    naive = _render(plot_orthogonal(np.asarray(img.dataobj), np.asarray(nib.load(paths["lps"][1]).dataobj), title="same brain"))
    assert not np.array_equal(naive, rendered["ras"])


@pytest.mark.parametrize("radiological, left_marker", [(True, "R"), (False, "L")])
def test_axial_markers_follow_the_convention(radiological, left_marker):
    image, label = _asymmetric_brain()
    fig = plot_orthogonal(image, label, spacing=(2, 2, 2), radiological=radiological)
    axial = fig.axes[2]
    texts = {t.get_text(): t.get_position() for t in axial.texts}
    assert set(texts) == {"R", "L", "A", "P"}
    assert texts[left_marker][0] < 0.5  # on the screen's left
    # the lesion (patient's right) sits on the side the marker names
    drawn = axial.images[1].get_array()  # label overlay, displayed orientation
    cols = np.nonzero(np.asarray(drawn)[..., 3].sum(axis=0))[0]
    on_left = cols.mean() < drawn.shape[1] / 2
    assert on_left == radiological
    plt.close(fig)


def test_heatmap_is_masked_to_the_brain_and_has_a_colour_bar():
    image, label = _asymmetric_brain()
    heat = np.ones_like(image)  # paints everywhere, including outside the brain
    fig = plot_heatmap_over_anatomy(image, heat, outline=label > 0, spacing=(2, 2, 2), heat_label="saliency (a.u.)")
    assert len(fig.axes) == 4 and fig.axes[3].get_ylabel() == "saliency (a.u.)"
    axial_heat = np.ma.getmaskarray(fig.axes[2].images[1].get_array())
    # every masked (not painted) pixel is outside the brain and every painted one inside it
    point = tuple(int(v) for v in np.round(np.argwhere(label).mean(0)))
    brain_plane = (image[::-1, :, point[2]] != 0).T
    np.testing.assert_array_equal(~axial_heat, brain_plane)
    plt.close(fig)


def test_result_figures_stay_in_range_and_show_references():
    import pandas as pd

    from kit.models import create_model
    from kit.viz import plot_first_layer
    from kit.viz.results import plot_localisation_bars, plot_qc_volumes

    table = pd.DataFrame({"init": ["scratch", "stage1+2"], "method": ["gradcam"] * 2, "mass_in_lesion_mean": [0.012, 0.9],
                          "mass_in_lesion_ci_low": [-0.2, 0.7], "mass_in_lesion_ci_high": [0.03, 1.3]})
    ax = plot_localisation_bars(table, chance=0.03)
    assert ax.get_ylim() == (0.0, 1.0)  # an interval past 1 never stretches the axis
    for bar, line in zip(ax.patches, ax.lines):
        assert bar.get_height() >= 0
    small = plot_localisation_bars(table.iloc[:1], chance=0.03)
    assert small.get_ylim()[1] < 0.1  # 0.012 is visible, not flattened on a 0-1 axis
    fig, _ = plot_first_layer(create_model("segresnet_small", in_channels=2), ["t1", "flair"],
                              reference=create_model("segresnet_small", in_channels=2))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["trained", "random init"]
    qc = pd.DataFrame({"cohort": ["a"] * 3, "brain_volume_ml": [1400.0, 1500.0, 1510.0], "lesion_volume_ml": [None] * 3})
    fig = plot_qc_volumes(qc)
    assert all(float(t).is_integer() for t in fig.axes[0].get_yticks())
    plt.close("all")


@pytest.mark.parametrize("radiological", [True, False])
def test_explorer_panels_follow_the_same_convention(radiological):
    from kit.viz.explorer import orientation_caption, render_planes

    image = np.zeros((20, 20, 20), np.float32)
    image[2:18, 2:18, 2:18] = 0.2
    image[14:18, 12:16, 9:11] = 1.0  # bright block on the patient's right (+x) and anterior (+y)
    rgb = render_planes(image, (15, 13, 10), vmax=1.0, crosshair=False, radiological=radiological)
    axial = rgb[:, -20:, 0].astype(float)  # last panel (20 px wide at 1 px/mm)
    bright_cols = np.nonzero((axial > 200).any(axis=0))[0]
    assert (bright_cols.mean() < 10) == radiological  # right on the screen's left in radiological view
    sagittal = rgb[:, :20, 0].astype(float)
    assert np.nonzero((sagittal > 200).any(axis=0))[0].mean() < 10  # anterior on the left
    assert ("coronal: R | L" in orientation_caption(radiological)) == radiological
