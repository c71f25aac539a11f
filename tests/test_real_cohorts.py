"""--data-root with a subset of the datasets, at the profile's subject count and voxel size."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from kit.data.cohorts import check_data_root, prepare_cohorts
from kit.data.synth import synth_cohort


def test_real_subset_is_subsampled_and_resampled_and_the_rest_is_synthetic(tmp_path):
    data_root = tmp_path / "DATA"
    ids = synth_cohort("tumor", "brats2021", n=4, out=data_root / "brats2021", seed=5, resolution_mm=2.0, progress=False)
    before = {p: p.stat().st_mtime_ns for p in (data_root / "brats2021").rglob("*.nii.gz")}
    cohorts = {"healthy": {"layout": "ukb", "manifest": "ukb", "n": 2},
               "tumor": {"layout": "brats2021", "manifest": "brats2021", "n": 2}}
    check_data_root(cohorts, data_root)  # only brats2021 is there: accepted, healthy is synthetic
    run = tmp_path / "run"
    results = prepare_cohorts(cohorts, run, data_root=data_root, seed=0, resolution_mm=4.0, progress=False)
    tumor = results["tumor"]
    assert len(tumor.subjects) == 2 and {e["subject"] for e in tumor.subjects} < set(ids)
    assert tumor.root.resolve() == (run / "data" / "tumor").resolve()  # resampled copies in the run folder
    for entry in tumor.subjects:
        for path in entry["image"] + [entry["label"]]:
            img = nib.load(path)
            assert img.header.get_zooms()[:3] == pytest.approx((4.0, 4.0, 4.0))
        label = np.asarray(nib.load(entry["label"]).dataobj)
        assert set(np.unique(label)) <= {0, 1, 2, 4}  # nearest neighbour: no blended label values
    # the user's files are untouched; the healthy cohort was generated
    assert {p: p.stat().st_mtime_ns for p in (data_root / "brats2021").rglob("*.nii.gz")} == before
    assert results["healthy"].root.resolve() == (run / "data" / "healthy").resolve()
    assert len(results["healthy"].subjects) == 2
    # a rerun resumes: same subjects, nothing rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (run / "data" / "tumor").rglob("*.nii.gz")}
    again = prepare_cohorts(cohorts, run, data_root=data_root, seed=0, resolution_mm=4.0, progress=False)
    assert [e["subject"] for e in again["tumor"].subjects] == [e["subject"] for e in tumor.subjects]
    assert {p: p.stat().st_mtime_ns for p in (run / "data" / "tumor").rglob("*.nii.gz")} == stamps


def test_real_data_at_the_profile_spacing_is_used_in_place(tmp_path):
    data_root = tmp_path / "DATA"
    synth_cohort("tumor", "brats2021", n=3, out=data_root / "brats2021", seed=5, resolution_mm=4.0, progress=False)
    cohorts = {"tumor": {"layout": "brats2021", "manifest": "brats2021", "n": 2}}
    results = prepare_cohorts(cohorts, tmp_path / "run", data_root=data_root, seed=0, resolution_mm=4.0, progress=False)
    assert len(results["tumor"].subjects) == 2 and results["tumor"].root.resolve() == (data_root / "brats2021").resolve()
    assert not (tmp_path / "run" / "data").exists()
