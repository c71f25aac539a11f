"""Tests for kit.data.manifest: shipped manifests load and say what the layouts need; schema
errors name the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from kit.data.manifest import available_manifests, load_manifest, manifest_dir, parse_manifest

SHIPPED = ["atlas2", "brats2021", "brats2023", "ixi", "oasis3", "synthetic", "ukb"]

MINIMAL = {
    "name": "toy",
    "subjects": "sub-*",
    "images": [{"name": "t1", "pattern": "{subject}_t1.nii.gz"}],
    "label": {"pattern": "{subject}_seg.nii.gz", "values": [0, 1], "names": {0: "bg", 1: "lesion"}},
}


def _write(tmp_path: Path, data, name: str = "toy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_manifest_dir_is_repo_folder():
    assert manifest_dir() == Path(__file__).resolve().parents[1] / "data_manifests"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_manifest_loads(name):
    assert name in available_manifests()
    by_name = load_manifest(name)
    by_path = load_manifest(manifest_dir() / f"{name}.yaml")
    assert by_name == by_path
    assert by_name.name == name
    assert by_name.obtain and by_name.citation and by_name.title
    assert by_name.modalities and len(set(by_name.modalities)) == len(by_name.modalities)
    assert by_name.geometry.ndim == 3
    for region, values in by_name.regions.items():
        assert set(values) <= set(by_name.label_values), region


def test_no_unlisted_manifests():
    assert set(available_manifests()) == set(SHIPPED)


def test_brats_conventions():
    b21, b23 = load_manifest("brats2021"), load_manifest("brats2023")
    assert b21.modalities == ("flair", "t1ce", "t1", "t2")  # BrainSegFounder's channel order
    assert b23.modalities == b21.modalities
    assert b21.label_values == (0, 1, 2, 4) and b23.label_values == (0, 1, 2, 3)
    assert dict(b21.regions) == {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
    assert dict(b23.regions) == {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}
    assert b21.label_names[4] == "enhancing tumour" and b23.label_names[3] == "enhancing tumour"
    assert b21.geometry.shape == (240, 240, 155) and b21.geometry.space == "SRI24"
    obtain = " ".join(b21.obtain.split())
    assert "Synapse" in obtain and "data-use agreement" in obtain


def test_layout_patterns_match_the_documented_file_names():
    b23 = load_manifest("brats2023")
    subject = "BraTS-GLI-00007-000"
    assert [s.pattern.format(subject=subject) for s in b23.images] == [
        f"{subject}-t2f.nii.gz", f"{subject}-t1c.nii.gz", f"{subject}-t1n.nii.gz", f"{subject}-t2w.nii.gz"]
    atlas = load_manifest("atlas2")
    assert atlas.subjects_glob == "Training/R*/sub-*"
    assert atlas.label.pattern.format(subject="sub-r001s001") == (
        "ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz")
    assert atlas.geometry.shape == (197, 233, 189) and atlas.label_values == (0, 1)
    ukb = load_manifest("ukb")
    assert ukb.modalities == ("t1", "flair") and ukb.label is None
    assert ukb.geometry.shape == (182, 218, 182)  # FSL MNI152 1 mm grid of real UKB
    assert "approved" in ukb.obtain
    assert "CC BY-SA 3.0" in load_manifest("ixi").obtain
    assert load_manifest("ixi").geometry.same_grid is False
    assert load_manifest("synthetic").label.required is False


def test_manifest_is_frozen():
    manifest = load_manifest("brats2021")
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.name = "other"


def test_minimal_manifest_from_file(tmp_path):
    manifest = load_manifest(_write(tmp_path, MINIMAL))
    assert manifest.modalities == ("t1",)
    assert manifest.label_values == (0, 1) and manifest.label.required is True
    assert manifest.regions == {} and manifest.phenotypes is None
    assert manifest.source == tmp_path / "toy.yaml"


@pytest.mark.parametrize(
    "change, key, message",
    [
        (lambda d: d.pop("images"), "images", "missing"),
        (lambda d: d.update(images=[]), "images", "non-empty"),
        (lambda d: d.update(subjects=None), "subjects", "missing"),
        (lambda d: d["label"].update(values=[0, "one"]), "label.values", "must be an integer"),
        (lambda d: d["label"].update(values=[0, 1.5]), "label.values", "must be an integer"),
        (lambda d: d["label"].update(values=[1, 2]), "label.values", "must include 0"),
        (lambda d: d["label"].update(names={0: "bg", 7: "ghost"}), "label.names", "not in label.values"),
        (lambda d: d["images"][0].update(pattern="{session}/{subject}_t1.nii.gz"), "images[0].pattern",
         "only {subject}"),
        (lambda d: d["images"].append({"name": "t1", "pattern": "x.nii.gz"}), "images", "duplicate"),
        (lambda d: d["images"][0].pop("pattern"), "images[0].pattern", "missing"),
        (lambda d: d.update(regions={"ET": [4]}), "regions.ET", "not in label.values"),
        (lambda d: d.update(colour="blue"), "colour", "unknown key"),
        (lambda d: d.update(geometry={"ndim": 3, "shape": [16, 16]}), "geometry.shape", "3 integers"),
        (lambda d: d.update(geometry={"ndim": 3, "spacing": [1, 1, -1]}), "geometry.spacing", "positive"),
        (lambda d: d.update(phenotypes={"id_column": "subject"}), "phenotypes.file", "missing"),
        (lambda d: d.update(subjects={"glob": "*.nii.gz", "id_regex": "no-group"}), "subjects.id_regex",
         "capturing group"),
    ],
)
def test_schema_errors_name_file_and_key(tmp_path, change, key, message):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(ValueError) as caught:
        load_manifest(path)
    text = str(caught.value)
    assert str(path) in text
    assert f"'{key}'" in text
    assert message in text


def test_yaml_syntax_error_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nimages: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        load_manifest(path)


def test_unknown_name_lists_shipped(tmp_path):
    with pytest.raises(FileNotFoundError, match="brats2021"):
        load_manifest("no_such_dataset")
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path / "missing.yaml")


def test_parse_manifest_without_file():
    manifest = parse_manifest({"name": "flat", "subjects": {"glob": "IXI*-T1.nii.gz", "id_regex": "^(IXI\\d+)"},
                               "images": [{"name": "t1", "pattern": "{subject}-T1.nii.gz"}]})
    assert manifest.subject_id_regex == "^(IXI\\d+)" and manifest.source is None
    with pytest.raises(ValueError, match="<manifest>: key 'images'"):
        parse_manifest({"name": "flat", "subjects": "*"})


def test_manifest_by_name_or_checkout_path_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    from kit.data.manifest import load_manifest as load

    assert load("brats2021").name == load("data_manifests/brats2021.yaml").name
    with pytest.raises(FileNotFoundError, match="not found"):
        load("data_manifests/nope.yaml")
    with pytest.raises(FileNotFoundError, match="not found"):
        load("elsewhere/brats2021.yaml")
