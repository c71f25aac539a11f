"""Tests for kit.data.validate on real NIfTI files written with nibabel into tmp_path.

The fixture is a small BraTS-2021-layout dataset (3 subjects, 16x16x10 voxels, a small tumour);
each test breaks it in one way and checks that the problem names the bad file and the reason.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged

from kit.data.manifest import load_manifest, parse_manifest
from kit.data.validate import Problem, datalist_dict, validate_dataset, write_datalist

SHAPE = (16, 16, 10)
AFFINE = np.array([[2.0, 0, 0, -16], [0, 2.0, 0, -20], [0, 0, 2.0, -10], [0, 0, 0, 1]])
BRATS21 = ("flair", "t1ce", "t1", "t2")
TSV_COLUMNS = ["subject", "cohort", "age", "sex", "tumor_present", "tumor_type", "idh",
               "lesion_volume_ml", "n_lesions", "seed"]


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def image(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def tumour(shape=SHAPE, enhancing: int = 4) -> np.ndarray:
    """Edema shell (2) around a core (1) with an enhancing rim voxel set (enhancing)."""
    label = np.zeros(shape, np.uint8)
    label[5:11, 5:11, 3:8] = 2
    label[6:10, 6:10, 4:7] = enhancing
    label[7:9, 7:9, 5] = 1
    return label


def write_tsv(root: Path, rows: list[dict]) -> Path:
    lines = ["\t".join(TSV_COLUMNS)]
    for row in rows:
        lines.append("\t".join(str(row.get(c, "")) for c in TSV_COLUMNS))
    path = root / "participants.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def brats_row(subject: str, index: int, present: int = 1) -> dict:
    return {"subject": subject, "cohort": "tumor", "age": 40.5 + index, "sex": "F" if index % 2 else "M",
            "tumor_present": present, "tumor_type": "glioma" if present else "", "idh": "",
            "lesion_volume_ml": 0.3 if present else 0, "n_lesions": present, "seed": index}


def make_brats2021(root: Path, n: int = 3, table: bool = True) -> list[str]:
    subjects = []
    for i in range(n):
        subject = f"BraTS2021_{i:05d}"
        folder = root / subject
        for c, modality in enumerate(BRATS21):
            save(folder / f"{subject}_{modality}.nii.gz", image(10 * i + c))
        save(folder / f"{subject}_seg.nii.gz", tumour())
        subjects.append(subject)
    if table:
        write_tsv(root, [brats_row(s, i) for i, s in enumerate(subjects)])
    return subjects


def file_of(root: Path, subject: str, suffix: str) -> Path:
    return root / subject / f"{subject}_{suffix}.nii.gz"


def problems_for(result, path: Path) -> list[Problem]:
    return [p for p in result.problems if Path(p.path) == path]


def only_problem(result, path: Path) -> Problem:
    found = problems_for(result, path)
    assert len(found) == 1, [str(p) for p in result.problems]
    assert str(found[0]).startswith(f"{path}: ")
    return found[0]


@pytest.fixture
def brats(tmp_path):
    root = tmp_path / "BraTS2021"
    return root, make_brats2021(root)


# ----------------------------------------------------------------------------- clean data

def test_clean_dataset_validates_and_loads_with_monai(brats, tmp_path):
    root, subjects = brats
    result = validate_dataset("brats2021", root)
    assert result.ok and result.problems == []
    assert result.n_found == 3 and [e["subject"] for e in result.subjects] == subjects
    # coarse synthetic-like geometry differs from the manifest's: warning, not problem
    geometry = [w for w in result.warnings if "expects shape 240x240x155" in w.reason]
    assert len(geometry) == 1 and "3 of 3 subjects have shape 16x16x10, spacing 2x2x2 mm" in geometry[0].reason

    entry = result.subjects[0]
    assert entry["image"] == [str(file_of(root, subjects[0], m)) for m in BRATS21]
    assert entry["label"] == str(file_of(root, subjects[0], "seg"))
    assert entry["age"] == 40.5 and entry["tumor_present"] == 1 and entry["seed"] == 0
    assert entry["sex"] == "M" and entry["idh"] is None

    out = write_datalist(result, tmp_path / "out" / "datalist.json")
    assert sorted(os.listdir(out.parent)) == ["datalist.json"]  # no temp file left behind
    raw = json.loads(out.read_text())
    assert raw["modality"] == {"0": "flair", "1": "t1ce", "2": "t1", "3": "t2"}
    assert raw["labels"]["4"] == "enhancing tumour" and raw["regions"]["WT"] == [1, 2, 4]
    assert raw["numTraining"] == 3 and raw["manifest"] == "brats2021" and raw["root"] == str(root)

    items = load_decathlon_datalist(out, data_list_key="training")
    assert [item["subject"] for item in items] == subjects
    loaded = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(items[1])
    assert tuple(loaded["image"].shape) == (4, *SHAPE)
    assert tuple(loaded["label"].shape) == (1, *SHAPE)
    np.testing.assert_allclose(loaded["image"][0].numpy(), image(10), rtol=1e-6)  # channel 0 = flair


def test_datalist_dict_without_label_or_table(tmp_path):
    root = tmp_path / "ukb"
    for eid in ("1000017", "1000025"):
        save(root / eid / "T1" / "T1_brain_to_MNI.nii.gz", image(1))
        save(root / eid / "T2_FLAIR" / "T2_FLAIR_brain_to_MNI.nii.gz", image(2))
    (root / "README.txt").write_text("a stray file matching [0-9]* would not be a subject")
    result = validate_dataset("ukb", root)
    assert result.ok, [str(p) for p in result.problems]
    data = datalist_dict(result)
    assert "labels" not in data and data["modality"] == {"0": "t1", "1": "flair"}
    assert [e["subject"] for e in data["training"]] == ["1000017", "1000025"]
    assert set(data["training"][0]) == {"subject", "image"}


# ----------------------------------------------------------------------------- one test per problem class

def test_root_missing(tmp_path):
    result = validate_dataset("brats2021", tmp_path / "nowhere")
    assert not result.ok
    assert str(result.problems[0]) == (f"{tmp_path / 'nowhere'}: data root does not exist "
                                       "(manifest brats2021, subject glob 'BraTS2021_*')")


def test_no_subjects_found(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "BraTS2021_00000.txt").write_text("a file, not a subject folder")
    result = validate_dataset("brats2021", tmp_path / "empty")
    assert not result.ok and result.n_found == 0
    problem = only_problem(result, tmp_path / "empty")
    assert "no subjects found: glob 'BraTS2021_*'" in problem.reason


def test_missing_modality(brats):
    root, subjects = brats
    missing = file_of(root, subjects[1], "t1ce")
    missing.unlink()
    result = validate_dataset("brats2021", root)
    problem = only_problem(result, missing)
    assert problem.reason == "missing t1ce image (pattern '{subject}_t1ce.nii.gz')"
    assert problem.subject == subjects[1] and len(result.problems) == 1
    assert [e["subject"] for e in result.subjects] == [subjects[0], subjects[2]]


def test_missing_required_label(brats):
    root, subjects = brats
    missing = file_of(root, subjects[0], "seg")
    missing.unlink()
    result = validate_dataset("brats2021", root)
    assert only_problem(result, missing).reason.startswith("missing label")


def test_optional_label_may_be_absent(tmp_path):
    root = tmp_path / "synthetic"
    for i in range(2):
        subject = f"sub-{i:04d}"
        for c, modality in enumerate(("t1", "t1ce", "t2", "flair")):
            save(root / subject / f"{subject}_{modality}.nii.gz", image(c))
    result = validate_dataset("synthetic", root)
    assert result.ok and "label" not in result.subjects[0]


def test_unreadable_file(brats):
    root, subjects = brats
    bad = file_of(root, subjects[2], "t2")
    bad.write_bytes(b"this is not a NIfTI file at all")
    result = validate_dataset("brats2021", root)
    assert only_problem(result, bad).reason.startswith("unreadable: not a NIfTI image")


def test_truncated_gzip(brats):
    root, subjects = brats
    bad = file_of(root, subjects[0], "flair")
    payload = bad.read_bytes()
    bad.write_bytes(payload[: len(payload) // 2])
    assert nib.load(str(bad)).shape == SHAPE  # the header still reads: only decoding the data shows it
    result = validate_dataset("brats2021", root)
    assert only_problem(result, bad).reason.startswith("truncated or corrupt image data")


def test_truncated_uncompressed_nifti(tmp_path):
    root = tmp_path / "flat"
    bad = save(root / "sub-1" / "sub-1_t1.nii", image(0))
    bad.write_bytes(bad.read_bytes()[:-100])
    manifest = parse_manifest({"name": "plain", "subjects": "sub-*",
                               "images": [{"name": "t1", "pattern": "{subject}_t1.nii"}]})
    problem = only_problem(validate_dataset(manifest, root), bad)
    assert problem.reason.startswith("truncated or corrupt image data")
    assert "\n" not in str(problem)  # the CLI prints one line per problem


def test_nan_and_inf_voxels_are_counted(brats):
    root, subjects = brats
    bad = file_of(root, subjects[1], "t1")
    data = image(11)
    data[0, 0, :3] = np.nan
    data[1, 1, :2] = np.inf
    save(bad, data)
    result = validate_dataset("brats2021", root)
    assert only_problem(result, bad).reason == f"5 non-finite voxels (NaN: 3, inf: 2) of {np.prod(SHAPE)}"


def test_real_4d_is_error_and_singleton_is_squeezed(brats):
    root, subjects = brats
    four_d = file_of(root, subjects[0], "t2")
    save(four_d, np.stack([image(1), image(2)], axis=-1))
    singleton = file_of(root, subjects[1], "t2")
    save(singleton, image(3)[..., None])
    result = validate_dataset("brats2021", root)
    assert only_problem(result, four_d).reason == "is 4D (shape 16x16x10x2) where 3D is expected"
    assert problems_for(result, singleton) == []
    squeezed = [w for w in result.warnings if Path(w.path) == singleton]
    assert len(squeezed) == 1 and "squeezed to 3D" in squeezed[0].reason
    assert [e["subject"] for e in result.subjects] == subjects[1:]


def test_shape_mismatch_within_subject(brats):
    root, subjects = brats
    bad = file_of(root, subjects[0], "t1")
    save(bad, image(5, (16, 16, 9)))
    result = validate_dataset("brats2021", root)
    reason = only_problem(result, bad).reason
    assert reason == f"shape 16x16x9 differs from flair ({subjects[0]}_flair.nii.gz) 16x16x10"


def test_affine_mismatch_within_subject_with_tolerance(brats):
    root, subjects = brats
    shifted, nudged = AFFINE.copy(), AFFINE.copy()
    shifted[0, 3] += 0.5
    nudged[0, 3] += 1e-5  # below the 1e-3 mm tolerance
    bad = save(file_of(root, subjects[1], "t2"), image(1), shifted)
    fine = save(file_of(root, subjects[2], "t2"), image(2), nudged)
    result = validate_dataset("brats2021", root)
    reason = only_problem(result, bad).reason
    assert reason.startswith("affine differs from flair") and "0.5 mm" in reason
    assert problems_for(result, fine) == [] and len(result.problems) == 1


def test_brats2023_labels_under_2021_manifest(brats):
    root, subjects = brats
    bad = save(file_of(root, subjects[2], "seg"), tumour(enhancing=3))
    result = validate_dataset("brats2021", root)
    reason = only_problem(result, bad).reason
    assert reason.startswith("label values {3} not in manifest set [0, 1, 2, 4]")
    assert "BraTS 2023 labels under the 2021 manifest?" in reason


def test_brats2023_layout_validates_under_its_manifest(tmp_path):
    root = tmp_path / "BraTS2023"
    names = ("t2f", "t1c", "t1n", "t2w")
    for i in range(2):
        subject = f"BraTS-GLI-{i:05d}-000"
        for c, name in enumerate(names):
            save(root / subject / f"{subject}-{name}.nii.gz", image(c))
        save(root / subject / f"{subject}-seg.nii.gz", tumour(enhancing=3))
    result = validate_dataset("brats2023", root)
    assert result.ok, [str(p) for p in result.problems]
    assert [Path(p).name for p in result.subjects[0]["image"]] == [
        f"BraTS-GLI-00000-000-{n}.nii.gz" for n in names]
    # and the 2021 labels under the 2023 manifest are caught the other way round
    bad = save(root / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz", tumour(enhancing=4))
    result = validate_dataset("brats2023", root)
    assert "label values {4} not in manifest set [0, 1, 2, 3]" in only_problem(result, bad).reason


def test_non_integer_label_values(brats):
    root, subjects = brats
    bad = file_of(root, subjects[0], "seg")
    label = tumour().astype(np.float32)
    label[8, 8, 5] = 0.5
    save(bad, label)
    result = validate_dataset("brats2021", root)
    reason = only_problem(result, bad).reason
    assert reason.startswith("non-integer label values (1 voxels, e.g. 0.5)")


def test_float_label_with_integer_values_is_fine(brats):
    root, subjects = brats
    save(file_of(root, subjects[0], "seg"), tumour().astype(np.float32))
    assert validate_dataset("brats2021", root).ok


def test_empty_label_needs_lesion_free_mark(tmp_path):
    root = tmp_path / "BraTS2021"
    subjects = make_brats2021(root, n=3)
    unmarked = save(file_of(root, subjects[0], "seg"), np.zeros(SHAPE, np.uint8))  # table: tumour present
    save(file_of(root, subjects[1], "seg"), np.zeros(SHAPE, np.uint8))
    contradicted = file_of(root, subjects[2], "seg")  # keeps its tumour
    write_tsv(root, [brats_row(subjects[0], 0, present=1), brats_row(subjects[1], 1, present=0),
                     brats_row(subjects[2], 2, present=0)])
    result = validate_dataset("brats2021", root)
    assert only_problem(result, unmarked).reason == (
        "label is empty (all background) and participants.tsv does not mark the subject "
        "lesion-free (tumor_present = 0)")
    reason = only_problem(result, contradicted).reason
    assert reason.startswith(f"label has {np.count_nonzero(tumour())} foreground voxels but participants.tsv "
                             "marks the subject lesion-free")
    assert [e["subject"] for e in result.subjects] == [subjects[1]]  # all-zero label, marked lesion-free
    assert result.subjects[0]["tumor_present"] == 0


def test_empty_label_without_table(tmp_path):
    root = tmp_path / "BraTS2021"
    subjects = make_brats2021(root, n=2, table=False)
    bad = save(file_of(root, subjects[1], "seg"), np.zeros(SHAPE, np.uint8))
    result = validate_dataset("brats2021", root)
    assert "label is empty (all background)" in only_problem(result, bad).reason
    assert not any("phenotype" in str(p) for p in result.problems)  # table optional here


def test_subject_symlink_outside_root(brats, tmp_path):
    root, subjects = brats
    elsewhere = tmp_path / "elsewhere"
    make_brats2021(elsewhere, n=1, table=False)
    link = root / "BraTS2021_00099"
    link.symlink_to(elsewhere / "BraTS2021_00000", target_is_directory=True)
    result = validate_dataset("brats2021", root)
    reason = only_problem(result, link).reason
    assert "subject directory resolves outside the data root" in reason and "(symlink)" in reason
    assert str(elsewhere / "BraTS2021_00000") in reason
    assert len(result.subjects) == 3


def test_file_symlink_outside_root(brats, tmp_path):
    root, subjects = brats
    outside = save(tmp_path / "stash" / "flair.nii.gz", image(0))
    link = file_of(root, subjects[0], "flair")
    link.unlink()
    link.symlink_to(outside)
    result = validate_dataset("brats2021", root)
    assert "flair file resolves outside the data root" in only_problem(result, link).reason


def test_pattern_escaping_root(brats, tmp_path):
    root, subjects = brats
    # a file the bad pattern would reach, so only the root check can stop it
    save(tmp_path / "BraTS2021_00000_flair.nii.gz", image(0))
    data = {"name": "escape", "subjects": "BraTS2021_*",
            "images": [{"name": "flair", "pattern": "../../{subject}_flair.nii.gz"}]}
    result = validate_dataset(parse_manifest(data), root)
    escaped = tmp_path / "BraTS2021_00000_flair.nii.gz"
    assert "flair file resolves outside the data root" in only_problem(result, escaped).reason
    assert len(result.problems) == 3 and result.subjects == []


def test_phenotype_table_required_and_missing_subject(tmp_path):
    root = tmp_path / "BraTS2021"
    subjects = make_brats2021(root, n=3, table=False)
    data = {"name": "strict", "subjects": "BraTS2021_*",
            "images": [{"name": "flair", "pattern": "{subject}_flair.nii.gz"}],
            "phenotypes": {"file": "participants.tsv", "required": True}}
    result = validate_dataset(parse_manifest(data), root)
    assert only_problem(result, root / "participants.tsv").reason == (
        "phenotype table is missing (required by the manifest)")

    write_tsv(root, [brats_row(subjects[0], 0), brats_row(subjects[2], 2)])
    result = validate_dataset(parse_manifest(data), root)
    assert result.ok
    missing = [w for w in result.warnings if w.subject == subjects[1]]
    assert str(missing[0]) == f"{root / 'participants.tsv'}: subject '{subjects[1]}' is not in the phenotype table"
    assert "age" not in result.subjects[1] and result.subjects[2]["age"] == 42.5


def test_phenotype_table_without_id_column(brats):
    root, _ = brats
    (root / "participants.tsv").write_text("participant\tage\nBraTS2021_00000\t40\n")
    result = validate_dataset("brats2021", root)
    assert "has no id column 'subject'" in only_problem(result, root / "participants.tsv").reason


# ----------------------------------------------------------------------------- whole runs

def test_all_problems_of_several_subjects_in_one_run(tmp_path):
    root = tmp_path / "BraTS2021"
    subjects = make_brats2021(root, n=6)
    file_of(root, subjects[0], "t1").unlink()
    file_of(root, subjects[0], "seg").unlink()
    file_of(root, subjects[1], "t2").write_bytes(gzip.compress(b"not nifti"))
    nan = image(3)
    nan[2, 2, 2] = np.nan
    save(file_of(root, subjects[2], "flair"), nan)
    save(file_of(root, subjects[3], "seg"), tumour(enhancing=3))
    save(file_of(root, subjects[3], "t1ce"), image(4, (16, 16, 8)))
    result = validate_dataset("brats2021", root, progress=True)
    found = {(Path(p.path).name, p.reason.split(" (")[0]) for p in result.problems}
    assert found == {
        (f"{subjects[0]}_t1.nii.gz", "missing t1 image"),
        (f"{subjects[0]}_seg.nii.gz", "missing label"),
        (f"{subjects[1]}_t2.nii.gz", "unreadable: not a NIfTI image"),
        (f"{subjects[2]}_flair.nii.gz", "1 non-finite voxels"),
        (f"{subjects[3]}_seg.nii.gz", "label values {3} not in manifest set [0, 1, 2, 4]"),
        (f"{subjects[3]}_t1ce.nii.gz", "shape 16x16x8 differs from flair"),
    }
    assert [e["subject"] for e in result.subjects] == subjects[4:]
    assert result.summary().startswith(f"brats2021 at {root}: 6 subjects found, 2 clean, 6 problems")


@pytest.mark.parametrize("layout", ["atlas2", "synthetic", "ixi", "oasis3"])
def test_documented_layouts_validate_with_shipped_manifests(tmp_path, layout):
    root = tmp_path / layout
    expected_images: list[str] = []
    if layout == "atlas2":
        for subject in ("sub-r001s001", "sub-r002s004"):
            anat = root / "Training" / f"R{subject[5:8]}" / subject / "ses-1" / "anat"
            save(anat / f"{subject}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", image(0))
            save(anat / f"{subject}_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz",
                 (tumour() > 0).astype(np.uint8))
            expected_images.append(f"{subject}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz")
    elif layout == "synthetic":
        for i in range(2):
            subject = f"sub-{i:04d}"
            for c, modality in enumerate(("t1", "t1ce", "t2", "flair")):
                save(root / subject / f"{subject}_{modality}.nii.gz", image(c))
            save(root / subject / f"{subject}_seg.nii.gz", tumour())
            expected_images.append(f"{subject}_t1.nii.gz")
        write_tsv(root, [brats_row("sub-0000", 0), brats_row("sub-0001", 1)])
    elif layout == "ixi":
        for subject in ("IXI002-Guys-0828", "IXI012-HH-1211"):
            save(root / f"{subject}-T1.nii.gz", image(1, (16, 16, 12)))  # IXI T1 is not on the T2 grid
            save(root / f"{subject}-T2.nii.gz", image(2))
            save(root / f"{subject}-PD.nii.gz", image(3))
            expected_images.append(f"{subject}-T1.nii.gz")
        save(root / "IXI002-Guys-0828-MRA.nii.gz", image(4))  # other contrasts are ignored
    elif layout == "oasis3":
        for subject in ("sub-OAS30001", "sub-OAS30002"):
            for session in ("ses-d0129", "ses-d2430"):
                save(root / subject / session / "anat" / f"{subject}_{session}_T1w.nii.gz", image(0))
            expected_images.append(f"{subject}_ses-d0129_T1w.nii.gz")
    result = validate_dataset(layout, root)
    assert result.ok, [str(p) for p in result.problems]
    assert [Path(e["image"][0]).name for e in result.subjects] == expected_images
    if layout == "oasis3":  # several sessions: the first sorted is used, with a warning
        several = [w for w in result.warnings if "matched 2 files" in w.reason]
        assert len(several) == 2 and "others: sub-OAS30001_ses-d2430_T1w.nii.gz" in several[0].reason
    if layout == "ixi":
        assert [e["subject"] for e in result.subjects] == ["IXI002-Guys-0828", "IXI012-HH-1211"]


def test_progress_and_thread_pool_keep_sorted_order(tmp_path):
    root = tmp_path / "BraTS2021"
    subjects = make_brats2021(root, n=5)
    result = validate_dataset(root=root, manifest=load_manifest("brats2021"), progress=True)
    assert [e["subject"] for e in result.subjects] == sorted(subjects)
