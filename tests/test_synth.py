"""Tests of kit.data.synth: real subjects rendered from the nilearn MNI152 maps at 3-4 mm and real
NIfTI files written to tmp_path."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.stats import spearmanr

from kit.data.synth import (COHORTS, LAYOUTS, SyntheticSubject, make_subject, sample_subject_plan, synth_cohort,
                            write_subject)
from kit.data import synth
from kit.data.synth import _BRAIN_CENTRE_MM
from kit.data.synth_atlas import load_atlas

COARSE = 4.0
MEDIUM = 3.0
COLUMNS = ["subject", "cohort", "age", "sex", "tumor_present", "tumor_type", "idh", "lesion_volume_ml",
           "n_lesions", "seed"]


def auc(positives, negatives) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos, neg = np.asarray(positives, float)[:, None], np.asarray(negatives, float)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def grid(n_1mm: int, r: float) -> int:
    return int(np.floor(n_1mm / r + 0.5))


def read_tsv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader.fieldnames), list(reader)


def relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tumour_plans():
    return [sample_subject_plan("tumor", i, seed=0) for i in range(1500)]


def first_index(plans, predicate, skip: int = 0) -> int:
    hits = [i for i, p in enumerate(plans) if predicate(p)]
    return hits[skip]


@pytest.fixture(scope="module")
def wildtype_glioma(tumour_plans) -> tuple[int, SyntheticSubject]:
    index = first_index(tumour_plans, lambda p: p.idh == "wildtype" and p.foci[0].rim_mm > 4
                        and p.foci[0].core_kind == "necrotic" and p.foci[0].rim_coverage > 0.8)
    return index, make_subject("tumor", index, seed=0, resolution_mm=MEDIUM)


def normal_wm(subject: SyntheticSubject, resolution: float) -> np.ndarray:
    """Voxels of (nearly) pure white matter in the atlas, away from any lesion."""
    atlas = load_atlas(resolution)
    wm = atlas.wm > 0.95
    if subject.label is not None:
        wm &= ~ndi.binary_dilation(subject.label > 0, iterations=2)
    return wm & (subject.images["t1"] > 0)


# --- API contract -------------------------------------------------------------------------------

def test_unknown_cohort_or_layout_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="healthy, tumor, stroke"):
        make_subject("cancer", 0, resolution_mm=COARSE)
    with pytest.raises(ValueError, match="brats2021, brats2023, atlas2, ukb, flat"):
        synth_cohort("healthy", "bids", n=1, out=tmp_path, resolution_mm=COARSE)
    with pytest.raises(ValueError, match="healthy, tumor, stroke"):
        synth_cohort("lesion", "flat", n=1, out=tmp_path, resolution_mm=COARSE)
    subject = make_subject("healthy", 0, resolution_mm=COARSE)
    with pytest.raises(ValueError, match="brats2021"):
        write_subject(subject, "nifti", tmp_path, 0)
    assert COHORTS == ("healthy", "tumor", "stroke")
    assert LAYOUTS == ("brats2021", "brats2023", "atlas2", "ukb", "flat")


def test_same_seed_same_arrays_other_seed_or_index_differs():
    a = make_subject("tumor", 1, seed=0, resolution_mm=COARSE)
    b = make_subject("tumor", 1, seed=0, resolution_mm=COARSE)
    for name in ("t1", "t1ce", "t2", "flair"):
        assert a.images[name].tobytes() == b.images[name].tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert a.phenotype == b.phenotype
    assert not np.array_equal(make_subject("tumor", 1, seed=1, resolution_mm=COARSE).images["t1"], a.images["t1"])
    assert not np.array_equal(make_subject("tumor", 2, seed=0, resolution_mm=COARSE).images["t1"], a.images["t1"])


@pytest.mark.parametrize("resolution", [MEDIUM, COARSE])
def test_grid_affine_dtype_and_skull_stripping(resolution):
    s = make_subject("healthy", 0, seed=0, resolution_mm=resolution)
    shape = (grid(197, resolution), grid(233, resolution), grid(189, resolution))
    assert np.allclose(np.diag(s.affine)[:3], resolution)
    assert np.allclose(s.affine[:3, :3], np.diag([resolution] * 3))
    brain = s.images["t1"] > 0
    assert 0.15 < brain.mean() < 0.35  # the MNI brain fills ~22% of the grid
    for name in ("t1", "t1ce", "t2", "flair"):
        image = s.images[name]
        assert image.shape == shape and image.dtype == np.float32
        assert np.array_equal(image > 0, brain)  # same skull-stripped support in every contrast
        assert image.min() >= 0 and 300 < np.percentile(image[brain], 95) < 2000  # scanner-like range
    assert s.label is None
    # The brain is centred on the MNI origin (the affine maps it to mm, not voxels).
    centre = s.affine[:3, :3] @ np.argwhere(brain).mean(0) + s.affine[:3, 3]
    assert np.all(np.abs(centre - np.array([0.0, -18.0, 10.0])) < 12.0)


# --- layouts ------------------------------------------------------------------------------------

EXPECTED_FILES = {
    "brats2021": ("tumor", lambda i: [f"BraTS2021_{i:05d}/BraTS2021_{i:05d}_{s}.nii.gz"
                                      for s in ("flair", "t1", "t1ce", "t2", "seg")]),
    "brats2023": ("tumor", lambda i: [f"BraTS-GLI-{i:05d}-000/BraTS-GLI-{i:05d}-000-{s}.nii.gz"
                                      for s in ("t2f", "t1n", "t1c", "t2w", "seg")]),
    "atlas2": ("stroke", lambda i: [
        f"Training/R001/sub-r001s{i + 1:03d}/ses-1/anat/"
        f"sub-r001s{i + 1:03d}_ses-1_space-MNI152NLin2009aSym_{s}.nii.gz"
        for s in ("T1w", "label-L_desc-T1lesion_mask")]),
    "ukb": ("healthy", lambda i: [f"{1000000 + i}/T1/T1_brain_to_MNI.nii.gz",
                                  f"{1000000 + i}/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz"]),
    "flat": ("tumor", lambda i: [f"sub-{i:04d}/sub-{i:04d}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg")]),
}
EXPECTED_IDS = {"brats2021": "BraTS2021_00001", "brats2023": "BraTS-GLI-00001-000", "atlas2": "sub-r001s002",
                "ukb": "1000001", "flat": "sub-0001"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_file_names_headers_and_participants(tmp_path, layout):
    cohort, names = EXPECTED_FILES[layout]
    ids = synth_cohort(cohort, layout, n=2, out=tmp_path, seed=0, resolution_mm=COARSE)
    assert ids[1] == EXPECTED_IDS[layout]
    expected = {"participants.tsv"} | set(names(0)) | set(names(1))
    assert relative_files(tmp_path) == expected  # exact names, and no temporary files left behind
    columns, rows = read_tsv(tmp_path / "participants.tsv")
    assert columns == COLUMNS
    assert [r["subject"] for r in rows] == ids
    assert all(r["cohort"] == cohort and r["seed"] == "0" for r in rows)

    for rel in names(0):
        image = nib.load(tmp_path / rel)
        assert np.allclose(image.header.get_zooms()[:3], COARSE)
        assert int(image.header["qform_code"]) > 0 and int(image.header["sform_code"]) > 0
        is_label = "seg" in rel or "mask" in rel
        assert image.get_data_dtype() == (np.uint8 if is_label else np.float32)
        if layout.startswith("brats"):
            assert image.shape == (60, 60, 39)  # round(240/4), round(240/4), round(155/4)
        else:
            assert image.shape == (grid(197, COARSE), grid(233, COARSE), grid(189, COARSE))


def test_atlas2_site_numbering_and_flat_healthy_has_no_label(tmp_path):
    subject = make_subject("healthy", 12, resolution_mm=COARSE)
    written = write_subject(subject, "atlas2", tmp_path / "atlas", 12)
    assert written["subject"] == "sub-r002s003"
    label_path = Path(written["files"]["label"])
    assert label_path.relative_to(tmp_path / "atlas").as_posix() == (
        "Training/R002/sub-r002s003/ses-1/anat/"
        "sub-r002s003_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz")
    assert not np.asarray(nib.load(label_path).dataobj).any()  # healthy: all-zero lesion mask
    flat = write_subject(subject, "flat", tmp_path / "flat", 12)
    assert sorted(flat["files"]) == ["flair", "t1", "t1ce", "t2"]
    brats = write_subject(subject, "brats2021", tmp_path / "brats", 12)
    assert not np.asarray(nib.load(brats["files"]["label"]).dataobj).any()


def test_brats_grid_keeps_brain_lesion_and_world_coordinates(tmp_path, wildtype_glioma):
    index, subject = wildtype_glioma
    written = write_subject(subject, "brats2021", tmp_path, index)
    t1 = nib.load(written["files"]["t1"])
    seg = np.asarray(nib.load(written["files"]["label"]).dataobj)
    assert t1.shape == seg.shape == (80, 80, 52)  # round(240/3), round(240/3), round(155/3)
    for value in (1, 2, 4):
        assert np.count_nonzero(seg == value) == np.count_nonzero(subject.label == value)
    data = np.asarray(t1.dataobj)
    assert np.count_nonzero(data) >= 0.98 * np.count_nonzero(subject.images["t1"])
    # The same world point holds the same value in the MNI-grid subject and in the BraTS file.
    voxel = np.unravel_index(np.argmax(subject.images["t1ce"]), subject.label.shape)
    world = subject.affine @ np.array([*voxel, 1.0])
    brats_voxel = np.round(np.linalg.inv(t1.affine) @ world)[:3].astype(int)
    t1ce = np.asarray(nib.load(written["files"]["t1ce"]).dataobj)
    assert t1ce[tuple(brats_voxel)] == subject.images["t1ce"][voxel]


def test_participants_values(tmp_path):
    ids = synth_cohort("tumor", "brats2021", n=6, out=tmp_path, seed=0, resolution_mm=COARSE)
    _, rows = read_tsv(tmp_path / "participants.tsv")
    assert [r["subject"] for r in rows] == ids
    kinds = set()
    for row in rows:
        kinds.add(row["tumor_type"])
        assert row["sex"] in ("M", "F") and 18 <= float(row["age"]) <= 90
        assert row["tumor_present"] in ("0", "1")
        assert (row["tumor_present"] == "0") == (row["tumor_type"] == "none")
        assert row["idh"] in (("mutant", "wildtype") if row["tumor_type"] == "glioma" else ("NA",))
        seg = np.asarray(nib.load(tmp_path / row["subject"] / f"{row['subject']}_seg.nii.gz").dataobj)
        assert float(row["lesion_volume_ml"]) == pytest.approx(np.count_nonzero(seg) * COARSE**3 / 1000, abs=1e-3)
        assert (int(row["n_lesions"]) > 0) == (row["tumor_present"] == "1")
    assert "none" in kinds and len(kinds) >= 2

    synth_cohort("healthy", "ukb", n=1, out=tmp_path / "ukb", seed=5, resolution_mm=COARSE)
    _, (row,) = read_tsv(tmp_path / "ukb" / "participants.tsv")
    assert row["subject"] == "1000000" and row["seed"] == "5"
    assert row["tumor_present"] == "" and row["tumor_type"] == "" and row["idh"] == "NA"
    assert float(row["lesion_volume_ml"]) == 0 and row["n_lesions"] == "0"


def test_cohort_is_deterministic_across_workers_and_resumes(tmp_path):
    one = synth_cohort("stroke", "flat", n=3, out=tmp_path / "a", seed=3, resolution_mm=COARSE, workers=1)
    two = synth_cohort("stroke", "flat", n=3, out=tmp_path / "b", seed=3, resolution_mm=COARSE, workers=2)
    assert one == two
    for rel in relative_files(tmp_path / "a"):
        if rel.endswith(".nii.gz"):
            a = np.asarray(nib.load(tmp_path / "a" / rel).dataobj)
            b = np.asarray(nib.load(tmp_path / "b" / rel).dataobj)
            assert a.tobytes() == b.tobytes(), rel
    assert (tmp_path / "a" / "participants.tsv").read_text() == (tmp_path / "b" / "participants.tsv").read_text()
    # A rerun with one more subject writes only the new one.
    first = tmp_path / "a" / "sub-0000" / "sub-0000_t1.nii.gz"
    stamp = first.stat().st_mtime_ns
    os.utime(first, ns=(stamp - 10**9, stamp - 10**9))
    synth_cohort("stroke", "flat", n=4, out=tmp_path / "a", seed=3, resolution_mm=COARSE)
    assert first.stat().st_mtime_ns == stamp - 10**9
    _, rows = read_tsv(tmp_path / "a" / "participants.tsv")
    assert [r["subject"] for r in rows] == ["sub-0000", "sub-0001", "sub-0002", "sub-0003"]


# --- appearance ---------------------------------------------------------------------------------

def test_contrast_ordering_inside_tissue():
    plans = [sample_subject_plan("healthy", i, seed=0) for i in range(20)]
    index = next(i for i, p in enumerate(plans) if p.age < 40)  # little atrophy: atlas tissue ~ subject tissue
    s = make_subject("healthy", index, seed=0, resolution_mm=MEDIUM)
    atlas = load_atlas(MEDIUM)
    regions = {"wm": atlas.wm > 0.95, "gm": atlas.gm > 0.9, "csf": (atlas.csf > 0.9) & (atlas.mask > 0.99)}
    # subjects are the template shrunk by MEAN_HEAD_SCALE about the brain centre: map the regions
    centre = (np.linalg.inv(s.affine) @ np.append(_BRAIN_CENTRE_MM, 1.0))[:3]
    scale = synth.MEAN_HEAD_SCALE
    regions = {k: ndi.affine_transform(v.astype(np.float32), np.eye(3) / scale, offset=centre - centre / scale,
                                           order=0) > 0.5 for k, v in regions.items()}
    mean = {c: {k: float(s.images[c][v].mean()) for k, v in regions.items()} for c in s.images}
    assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
    assert mean["t1ce"]["wm"] > mean["t1ce"]["gm"] > mean["t1ce"]["csf"]
    assert mean["t2"]["csf"] > mean["t2"]["gm"] > mean["t2"]["wm"]
    assert mean["flair"]["gm"] > mean["flair"]["wm"] > mean["flair"]["csf"]
    assert mean["flair"]["csf"] < 0.7 * mean["flair"]["wm"]  # fluid suppressed
    # Noise and bias: pure WM is not a constant.
    assert 0.02 < np.std(s.images["t1"][regions["wm"]]) / mean["t1"]["wm"] < 0.3


def test_tumour_compartments_look_like_brats(wildtype_glioma):
    _, s = wildtype_glioma
    label = s.label
    assert set(np.unique(label)) == {0, 1, 2, 4}
    wm = normal_wm(s, MEDIUM)
    m = {c: {k: float(s.images[c][label == k].mean()) for k in (1, 2, 4)} | {"wm": float(s.images[c][wm].mean())}
         for c in s.images}
    assert m["t1ce"][4] > 1.2 * m["t1ce"][2]  # enhancing rim brighter than edema on T1ce
    assert m["t1ce"][4] > 1.2 * m["t1ce"]["wm"]
    assert m["flair"][2] > 1.2 * m["flair"]["wm"]  # edema bright on FLAIR ...
    assert m["t2"][2] > 1.2 * m["t2"]["wm"]  # ... and T2
    assert m["t1"][2] < m["t1"]["wm"]  # edema slightly dark on T1
    assert m["t1"][1] < 0.7 * m["t1"]["wm"]  # necrosis dark on T1 and T1ce, bright-ish on T2
    assert m["t1ce"][1] < 0.7 * m["t1ce"]["wm"]
    assert m["t2"][1] > 1.5 * m["t2"]["wm"]


def test_brats2023_uses_3_for_enhancing(tmp_path, wildtype_glioma):
    index, s = wildtype_glioma
    seg21 = np.asarray(nib.load(write_subject(s, "brats2021", tmp_path / "a", index)["files"]["label"]).dataobj)
    seg23 = np.asarray(nib.load(write_subject(s, "brats2023", tmp_path / "b", index)["files"]["label"]).dataobj)
    assert set(np.unique(seg23)) == {0, 1, 2, 3}
    assert np.array_equal(seg23, np.where(seg21 == 4, 3, seg21))


def test_stroke_lesions_binary_dark_on_t1_bright_on_t2_flair(tmp_path):
    for index in range(3):
        plan = sample_subject_plan("stroke", index, seed=0)
        s = make_subject("stroke", index, seed=0, resolution_mm=MEDIUM)
        lesion = s.label == 1
        assert set(np.unique(s.label)) == {0, 1} and s.phenotype["lesion_volume_ml"] > 0
        wm = normal_wm(s, MEDIUM)
        mean = {c: (float(s.images[c][lesion].mean()), float(s.images[c][wm].mean())) for c in s.images}
        assert mean["t1"][0] < 0.7 * mean["t1"][1], index
        assert mean["t2"][0] > 1.5 * mean["t2"][1], index
        assert mean["flair"][0] > 1.1 * mean["flair"][1], index
        # One hemisphere: the lesion stays on its side of the midline.
        x_mm = s.affine[0, 0] * np.argwhere(lesion)[:, 0] + s.affine[0, 3]
        assert np.mean(np.sign(x_mm) == plan.hemisphere) > 0.95
    mask = nib.load(write_subject(s, "atlas2", tmp_path, index)["files"]["label"])
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) == {0, 1}


def test_age_brings_atrophy():
    ages, dark = [], []
    for index in range(24):
        s = make_subject("healthy", index, seed=0, resolution_mm=COARSE)
        t1 = s.images["t1"][s.images["t1"] > 0]
        ages.append(s.phenotype["age"])
        dark.append(np.mean(t1 < 0.45 * np.percentile(t1, 90)))  # CSF-like share of the brain
    assert 20 <= min(ages) and max(ages) <= 85
    assert spearmanr(ages, dark)[0] > 0.5


# --- phenotypes ---------------------------------------------------------------------------------

def test_tumour_free_subjects_have_empty_labels(tumour_plans):
    free = np.mean([p.tumor_present == 0 for p in tumour_plans])
    assert 0.2 < free < 0.3
    for skip in range(2):
        index = first_index(tumour_plans, lambda p: p.tumor_present == 0, skip)
        s = make_subject("tumor", index, seed=0, resolution_mm=COARSE)
        assert s.label is not None and not s.label.any()
        assert s.phenotype | {"age": None, "sex": None} == dict(
            cohort="tumor", age=None, sex=None, tumor_present=0, tumor_type="none", idh="NA",
            lesion_volume_ml=0.0, n_lesions=0, seed=0)
    for skip in range(3):
        index = first_index(tumour_plans, lambda p: p.tumor_present == 1, skip)
        s = make_subject("tumor", index, seed=0, resolution_mm=COARSE)
        assert s.phenotype["tumor_present"] == 1 and s.label.any() and s.phenotype["lesion_volume_ml"] > 0


def test_metastases_have_more_lesions(tumour_plans):
    mets = [p for p in tumour_plans if p.tumor_type == "metastasis"]
    gliomas = [p for p in tumour_plans if p.tumor_type == "glioma"]
    assert all(len(p.foci) == 1 for p in gliomas)
    assert np.mean([len(p.foci) for p in mets]) > 1.8
    assert 0.2 < np.mean([len(p.foci) == 1 for p in mets]) < 0.4  # solitary ones overlap with gliomas
    # In the images: metastases show more separate tumour cores than gliomas.
    counts = {}
    for kind in ("metastasis", "glioma"):
        for skip in range(6):
            index = first_index(tumour_plans, lambda p: p.tumor_type == kind, skip)
            s = make_subject("tumor", index, seed=0, resolution_mm=COARSE)
            counts.setdefault(kind, []).append(s.phenotype["n_lesions"])
            cores = ndi.label(np.isin(s.label, (1, 4)), structure=np.ones((3, 3, 3)))[1]
            counts.setdefault(kind + "_cores", []).append(cores)
    assert np.mean(counts["metastasis"]) > np.mean(counts["glioma"]) == 1.0
    assert np.mean(counts["metastasis_cores"]) > np.mean(counts["glioma_cores"])


def test_idh_link_present_but_imperfect_in_plans(tumour_plans):
    gliomas = [p for p in tumour_plans if p.tumor_type == "glioma"]
    assert len(gliomas) > 400
    enh = {k: [p.foci[0].expected_enhancing_ml() for p in gliomas if p.idh == k] for k in ("wildtype", "mutant")}
    score = auc(enh["wildtype"], enh["mutant"])
    assert 0.7 < score < 0.95, score
    assert 0.25 < np.mean(np.array(enh["mutant"]) > 0) < 0.55  # some mutants enhance ...
    assert 0.05 < np.mean(np.array(enh["wildtype"]) == 0) < 0.3  # ... some wildtypes do not
    age = {k: [p.age for p in gliomas if p.idh == k] for k in ("wildtype", "mutant")}
    assert 0.7 < auc(age["wildtype"], age["mutant"]) < 0.95
    frontal = {k: np.mean([p.foci[0].centre_mm[1] > 5 for p in gliomas if p.idh == k]) for k in enh}
    assert frontal["mutant"] > frontal["wildtype"] + 0.2
    assert all(p.idh == "NA" for p in tumour_plans if p.tumor_type != "glioma")


def test_idh_link_present_but_imperfect_in_images(tumour_plans):
    enhancing = {"wildtype": [], "mutant": []}
    for skip in range(30):
        index = first_index(tumour_plans, lambda p: p.tumor_type == "glioma", skip)
        s = make_subject("tumor", index, seed=0, resolution_mm=COARSE)
        enhancing[s.phenotype["idh"]].append(np.count_nonzero(s.label == 4) * COARSE**3 / 1000)
    assert min(len(v) for v in enhancing.values()) >= 8
    score = auc(enhancing["wildtype"], enhancing["mutant"])
    assert 0.65 < score < 0.97, score  # well above chance, far from a perfect marker


def test_lesions_are_physical_across_resolutions(tumour_plans):
    index = first_index(tumour_plans, lambda p: p.tumor_type == "glioma")
    coarse = make_subject("tumor", index, seed=0, resolution_mm=COARSE)
    medium = make_subject("tumor", index, seed=0, resolution_mm=MEDIUM)
    same = {k: v for k, v in coarse.phenotype.items() if k != "lesion_volume_ml"}
    assert same == {k: v for k, v in medium.phenotype.items() if k != "lesion_volume_ml"}
    assert coarse.phenotype["lesion_volume_ml"] == pytest.approx(medium.phenotype["lesion_volume_ml"], rel=0.25)
    centres = [s.affine[:3, :3] @ np.argwhere(s.label > 0).mean(0) + s.affine[:3, 3] for s in (coarse, medium)]
    assert np.linalg.norm(centres[0] - centres[1]) < 4.0
