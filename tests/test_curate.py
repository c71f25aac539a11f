"""Curation: slice entropy and position filter, retained fraction, volume QC on real NIfTI files."""

import nibabel as nib
import numpy as np
import pytest

from kit.data.curate import (
    SliceFilter,
    curate_slices,
    filter_slices,
    retained_fraction,
    slice_entropy,
    slice_positions,
    volume_qc,
)


def _brain(shape=(24, 24, 20), first=3, last=16, seed=0):
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.float32)
    vol[4:20, 4:20, first : last + 1] = rng.uniform(100, 1000, (16, 16, last - first + 1))
    return vol


def test_entropy_of_uniform_histogram_is_log2_bins():
    # 16 equally populated bins over the volume's range -> exactly 4 bits in that slice
    vol = np.zeros((16, 16, 3), np.float32)
    vol[:, :, 1] = np.repeat(np.arange(1, 17, dtype=np.float32), 16).reshape(16, 16)
    ent = slice_entropy(vol, axis=2, bins=16)
    assert ent[0] == 0 and ent[2] == 0
    assert ent[1] == pytest.approx(4.0, abs=0.15)


def test_entropy_constant_slice_is_zero_and_axis_respected():
    vol = np.zeros((5, 6, 7), np.float32)
    vol[2, :, :] = 7.0  # one sagittal slice, constant
    vol[3, :, :] = np.arange(42).reshape(6, 7)
    ent = slice_entropy(vol, axis=0, bins=8)
    assert ent.shape == (5,)
    assert ent[2] == 0.0 and ent[3] > 2.0


def test_positions_relative_to_brain_extent():
    vol = _brain(first=3, last=16)
    pos = slice_positions(vol, 2, "brain")
    assert pos[3] == 0.0 and pos[16] == 1.0 and pos[0] < 0 and pos[19] > 1
    assert slice_positions(vol, 2, "volume")[-1] == 1.0


def test_filter_combines_entropy_and_position():
    vol = _brain(first=3, last=16)
    table = filter_slices(vol, SliceFilter(axis=2, entropy_threshold=1.0, position_window=(0.25, 0.75)))
    assert not table.loc[[0, 1, 2, 17, 18, 19], "keep_entropy"].any()  # empty slices
    kept = table.slice[table.kept].tolist()
    # brain spans 3..16 (13 steps); window [0.25, 0.75] -> slices 7..12
    assert kept == list(range(7, 13))
    frac = retained_fraction(table)
    assert frac["both"] == pytest.approx(6 / 20, abs=1e-3) and frac["n_slices"] == 20


def test_slice_filter_rejects_bad_window():
    with pytest.raises(ValueError, match="position_window"):
        SliceFilter(position_window=(0.8, 0.2))


def _write(path, arr, zooms=(2.0, 2.0, 2.0)):
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(arr, affine), path)
    return str(path)


def test_curate_and_qc_on_nifti_files(tmp_path):
    entries = []
    for i in range(4):
        t1 = _brain(seed=i)
        flair = _brain(seed=10 + i)
        label = np.zeros(t1.shape, np.uint8)
        label[8:12, 8:12, 8:10] = 2
        if i == 3:
            flair[:] = 0  # an empty channel must fail QC
        entries.append(
            {
                "subject": f"s{i}",
                "image": [_write(tmp_path / f"s{i}_t1.nii.gz", t1), _write(tmp_path / f"s{i}_flair.nii.gz", flair)],
                "label": _write(tmp_path / f"s{i}_seg.nii.gz", label),
            }
        )
    table = curate_slices(entries, SliceFilter(entropy_threshold=1.0, position_window=(0.0, 1.0)))
    assert set(table.subject) == {"s0", "s1", "s2", "s3"} and len(table) == 4 * 20
    assert retained_fraction(table)["both"] == pytest.approx(14 / 20, abs=1e-3)

    qc = volume_qc(entries, ["t1", "flair"])
    assert qc.shape[0] == 4
    assert qc.loc[0, "spacing_mm"] == (2.0, 2.0, 2.0)
    # 16*16*14 voxels of 8 mm^3
    assert qc.loc[0, "brain_volume_ml"] == pytest.approx(16 * 16 * 14 * 8 / 1000, abs=0.1)
    assert qc.loc[0, "lesion_volume_ml"] == pytest.approx(4 * 4 * 2 * 8 / 1000, abs=0.01)
    assert qc.qc_pass.tolist() == [True, True, True, False]
    assert bool(qc.loc[3, "flair_zero"])


def test_qc_flags_outlying_brain_volume(tmp_path):
    entries = []
    for i in range(6):
        vol = _brain(seed=i)
        if i == 5:
            vol[:, :, :] = np.where(vol == 0, 500.0, vol)  # skull stripping failed: the whole box is "brain"
        entries.append({"subject": f"s{i}", "image": [_write(tmp_path / f"s{i}.nii.gz", vol)]})
    qc = volume_qc(entries, ["t1"])
    assert qc.qc_pass.tolist() == [True] * 5 + [False]
