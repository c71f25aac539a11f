"""Curated 2D slices from the cache: exactly the slices that slices.csv keeps, read without NIfTI decoding."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from kit.data.cache import build_cache
from kit.data.curate import SliceFilter, curate_slices
from kit.data.slices import SliceDataset, fit_slice, read_slice_table, select_slices
from kit.data.splits import train_test_split


def _write(path, arr):
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return str(path)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(4):
        images = []
        first, last = 3 + i, 18 - i  # brain extent along z differs per subject
        for m, scale in (("t1", 600.0), ("flair", 300.0)):
            a = np.zeros((30, 28, 24), np.float32)
            a[5:25, 4:22, first : last + 1] = rng.random((20, 18, last - first + 1)) * scale + 50
            a[5:25, 4:22, first] = 80.0  # a flat first slice: entropy 0, dropped by the filter
            images.append(_write(tmp / f"s{i}_{m}.nii.gz", a))
        label = np.zeros((30, 28, 24), np.uint8)
        if i % 2 == 0:
            label[10:14, 10:14, 9:12] = 2  # tumour in slices 9..11 of even subjects
        entries.append({"subject": f"s{i}", "image": images, "label": _write(tmp / f"s{i}_seg.nii.gz", label)})
    table = curate_slices(entries, SliceFilter(axis=2, entropy_threshold=2.0, position_window=(0.1, 0.9)))
    table.insert(0, "cohort", "tumor")
    table.to_csv(tmp / "slices.csv", index=False)
    cache = build_cache(entries, ["t1", "flair"], tmp / "cache", margin=1)
    return entries, tmp / "slices.csv", cache


def test_curated_slices_are_exactly_those_slices_csv_keeps(cohort):
    entries, csv, cache = cohort
    table = pd.read_csv(csv)
    ds = SliceDataset(cache, csv, axis=2, cohort="tumor", size=32)
    kept = {(r.subject, int(r.slice)) for r in table.itertuples() if r.kept}
    served = {(r.subject, int(r.slice)) for r in ds.index.itertuples()}
    assert served == kept and len(ds) == len(kept) and 0 < len(kept) < len(table)
    # each sample is the cached, z-scored slice of the original file: same brain voxels, same values
    for row in range(0, len(ds), 5):
        subject, s = ds.index.subject[row], int(ds.index.slice[row])
        entry = next(e for e in entries if e["subject"] == subject)
        raw = ds.raw_slice(row)
        start = cache.entries[int(ds.index.cache_index[row])]["crop_start"]
        for c, path in enumerate(entry["image"]):
            volume = np.asanyarray(nib.load(path).dataobj, dtype=np.float64)
            brain = volume[volume != 0]
            expected = np.where(volume != 0, (volume - brain.mean()) / brain.std(), 0.0)[..., s]
            box = expected[start[0] : start[0] + raw.shape[1], start[1] : start[1] + raw.shape[2]]
            np.testing.assert_allclose(raw[c], box, atol=2e-3)
        assert tuple(ds[(row, 7)].shape) == (2, 32, 32)


def test_uncurated_serves_every_slice_of_the_same_subjects(cohort):
    _, csv, cache = cohort
    table = read_slice_table(csv)
    ds = SliceDataset(cache, table, axis=2, curated=False, channels="flair", size=32)
    assert len(ds) == len(table) and ds.in_channels == 1 and ds.modalities == ["flair"]
    assert set(ds.index.subject) == set(SliceDataset(cache, table, axis=2).index.subject)
    # slice 0 lies outside every subject's cached brain box: an all-zero image, as in the file
    outside = ds.index.index[ds.index.slice == 0][0]
    assert not ds[outside].any()


def test_slice_labels_and_subject_level_split(cohort):
    _, csv, cache = cohort
    subjects = [e["subject"] for e in cache.entries]
    train, test = train_test_split(subjects, 0.5, seed=0)
    ds_train = SliceDataset(cache, csv, axis=2, subjects=train)
    ds_test = SliceDataset(cache, csv, axis=2, subjects=test)
    assert set(ds_train.index.subject) == set(train) and set(ds_test.index.subject) == set(test)
    assert not set(ds_train.index.subject) & set(ds_test.index.subject)
    full = SliceDataset(cache, csv, axis=2)
    present = full.lesion_present()
    truth = [(int(r.subject[1:]) % 2 == 0) and 9 <= int(r.slice) <= 11 for r in full.index.itertuples()]
    assert present.tolist() == [int(t) for t in truth] and present.sum() > 0


def test_clear_errors(cohort):
    _, csv, cache = cohort
    with pytest.raises(ValueError, match="axis"):
        SliceDataset(cache, csv, axis=1)
    with pytest.raises(ValueError, match="no contrast 't2'"):
        SliceDataset(cache, csv, axis=2, channels="t2")
    with pytest.raises(ValueError, match="not in the cache"):
        SliceDataset(cache, csv, axis=2, subjects=["nobody"])
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_slice_table(csv.parent / "missing.csv")


def test_fit_slice_keeps_aspect_and_pads():
    x = fit_slice(np.ones((1, 40, 20), np.float32), 32)
    assert x.shape == (1, 32, 32)
    assert torch.all(x[0, :, 8:24] > 0.99) and not x[0, :, :7].any()
    assert select_slices(pd.DataFrame({"subject": ["a"], "slice": [3], "kept": [True]}), ["a"]).slice.tolist() == [3]
