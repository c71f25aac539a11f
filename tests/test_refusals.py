"""Wrong inputs to `kit pretrain` and `kit reproduce` (issue #24): each is refused before any file is written.

Every refusal is checked the same way (:func:`refused`): exit code 1, one line on stderr naming the
argument, setting or file, the inputs byte for byte as they were, and no new file in the run folder.
The data are real: two healthy (UK Biobank layout, t1 + flair) and two tumour subjects (BraTS 2021) made
by the synthetic cohorts at 4 mm, notebook 01's datalist and slice table, and a 1-step MoCo v3 checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from kit.cli import main as kit_main
from kit.data.cohorts import combined_datalist, prepare_cohorts
from kit.data.curate import SliceFilter, curate_slices
from kit.pipeline import write_json_atomic
from kit.profiles import profile_config

QUICK = ["--set", "steps=1", "--set", "warmup_steps=0", "--set", "batch_size=2"]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """A run folder after notebook 01: datalist.json and slices.csv of 2 healthy and 2 tumour subjects."""
    from kit.train.pretrain import stage_settings

    run = tmp_path_factory.mktemp("curated")
    smoke = profile_config("smoke")
    cohorts = ["healthy", stage_settings("smoke", 2).get("cohort", "tumor")]  # the cohorts stages 1 and 2 read
    results = prepare_cohorts({name: {**smoke["cohorts"][name], "n": 2} for name in cohorts}, run, resolution_mm=4.0,
                              progress=False)
    datalist = combined_datalist(results)
    write_json_atomic(run / "01_curation" / "datalist.json", datalist)
    rule = smoke["slice_filter"]
    tables = []
    for cohort in cohorts:
        table = curate_slices(datalist[cohort], SliceFilter(axis=rule["axis"], entropy_threshold=rule["entropy_threshold"],
                                                            position_window=tuple(rule["position_window"])))
        tables.append(table.assign(cohort=cohort))
    pd.concat(tables).to_csv(run / "01_curation" / "slices.csv", index=False)
    return run


def fresh_run(curated: Path, to: Path) -> Path:
    """A copy of the curated run's 01_curation folder (its data stay where the datalist points)."""
    shutil.copytree(curated / "01_curation", to / "01_curation")
    return to


def single_contrast(run: Path) -> Path:
    """Rewrite the run's datalist so that the healthy cohort has its first contrast only (t1); returns its path."""
    datalist = run / "01_curation" / "datalist.json"
    data = json.loads(datalist.read_text())
    data["cohorts"]["healthy"]["modality"] = {"0": "t1"}
    for entry in data["healthy"]:
        entry["image"] = entry["image"][:1]
    datalist.write_text(json.dumps(data))
    return datalist


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders``: path -> sha256 (a new, removed or changed file shows up)."""
    out = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def refused(argv: list[str], capsys, expected: str, *watched: Path) -> str:
    """Run ``kit ARGV``; assert exit 1, one stderr line holding ``expected`` and nothing changed under ``watched``."""
    before = snapshot(*watched)
    code = kit_main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "Warning" not in err, err
    assert expected in err, err
    assert snapshot(*watched) == before, "a refusal changed or added files"
    return err.strip()


def pretrain(run: Path, *extra: str, stage: str = "1") -> list[str]:
    return ["pretrain", "--profile", "smoke", "--stage", stage, "--out", str(run), "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="module")
def moco_checkpoint(curated, tmp_path_factory):
    """A real 1-step MoCo v3 stage 1 (a 2D resnet18_2d checkpoint); --set batch_size wins over moco_v3's own."""
    run = fresh_run(curated, tmp_path_factory.mktemp("moco") / "run")
    assert kit_main(pretrain(run, "--objective", "moco_v3", *QUICK)) == 0
    checkpoint = run / "02_stage1" / "checkpoint.pt"
    from kit.models import load_checkpoint

    stored = load_checkpoint(checkpoint)
    assert stored["model_config"]["name"] == "resnet18_2d"
    assert stored["extra"]["config"]["batch_size"] == 2  # the --set, not moco_v3's stage setting (8)
    assert json.loads((run / "02_stage1" / "metrics.json").read_text())["records"][-1]["step"] == 1
    return checkpoint


# ----------------------------------------------------------------------------- the issue's cases


@pytest.mark.parametrize("setting, expected", [
    ("steps=-5", "kit pretrain: --set steps=-5: steps must be a positive integer"),
    ("steps=abc", "kit pretrain: --set steps=abc: steps must be a positive integer"),
])
def test_bad_steps_are_refused_before_the_cache(curated, tmp_path, capsys, setting, expected):
    run = fresh_run(curated, tmp_path / "run")
    assert refused(pretrain(run, "--set", setting), capsys, expected, run, curated) == expected
    assert not (run / "02_stage1").exists()


def test_missing_init_is_refused_without_a_warning_or_a_cache(curated, tmp_path, capsys, monkeypatch):
    run = fresh_run(curated, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    err = refused(pretrain(run, "--init", "nope.pt"), capsys, "--init nope.pt: no such file", run, curated)
    assert err == "kit pretrain: --init nope.pt: no such file"
    assert not (run / "02_stage1").exists()


def test_stage2_init_from_a_2d_checkpoint_is_refused(curated, moco_checkpoint, tmp_path, capsys):
    run = fresh_run(curated, tmp_path / "run")
    err = refused(pretrain(run, "--init", str(moco_checkpoint), stage="2"), capsys,
                  f"--init {moco_checkpoint}: a 2D checkpoint (resnet18_2d, objective 'moco_v3') cannot start this "
                  "3D stage (segresnet_small, objective 'swin_trio')", run, curated, moco_checkpoint.parent)
    assert err.startswith("kit pretrain: --init") and not (run / "03_stage2").exists()


def test_moco_v3_when_the_slice_filter_kept_no_slice(curated, tmp_path, capsys):
    run = fresh_run(curated, tmp_path / "run")
    table = pd.read_csv(run / "01_curation" / "slices.csv")
    table.assign(kept=False).to_csv(run / "01_curation" / "slices.csv", index=False)
    slices = run / "01_curation" / "slices.csv"
    err = refused(pretrain(run, "--objective", "moco_v3"), capsys,
                  f"{slices}: the slice filter kept no slice of cohort 'healthy'", run, curated)
    assert "entropy_threshold 3.0" in err and "slices.curated=false" in err and "GlobalBatchSampler" not in err
    assert not (run / "02_stage1").exists()


def test_cross_contrast_on_a_single_contrast_datalist(curated, tmp_path, capsys):
    run = fresh_run(curated, tmp_path / "run")
    datalist = single_contrast(run)
    expected = (f"kit pretrain: objective 'cross_contrast' needs >= 2 contrasts; {datalist} cohort 'healthy' "
                "has 1 (t1)")
    assert refused(pretrain(run, "--objective", "cross_contrast"), capsys, expected, run, curated) == expected
    assert not (run / "02_stage1").exists()


# ----------------------------------------------------------------------------- wrong inputs of our own


@pytest.mark.parametrize("extra, expected", [
    (["--set", "lr=NaN"], "--set lr=NaN: lr must be a positive finite number"),
    (["--set", "betas=[0.9]"], "--set betas=[0.9]: betas must be two numbers in [0, 1)"),
    (["--set", "device=cuda"], "--set device=cuda: device is set by the command's --device option"),
    (["--set", "batch_size=2.5"], "--set batch_size=2.5: batch_size must be a positive integer"),
    (["--set", "amp=fp8"], "--set amp=fp8: amp must be one of"),
    (["--set", "crop=20"], "crop 20 does not fit backbone 'segresnet_small': segresnet_small: spatial size (20, 20, 20) "
                           "must be a multiple of 8"),
    (["--objective", "mim", "--set", "crop=16"], "objective 'mim' needs crop >= 32 voxels per side; the stage's crop is 16"),
    (["--set", 'objective_cfg={"mask_budget": [0.5, 0.2]}'], "objective 'swin_trio' with objective_cfg"),
    (["--objective", "moco_v3", "--set", 'slices={"channels": "t2"}'], "slices.channels: no contrast 't2'"),
    (["--objective", "moco_v3", "--set", "slices=null"], "objective 'moco_v3' trains on 2D slices"),
    (["--set", 'slices={"axis": 5}'], 'slices={"axis": 5}: slices.axis must be 0, 1 or 2'),
])
def test_wrong_settings_name_the_setting_and_write_nothing(curated, tmp_path, capsys, extra, expected):
    run = fresh_run(curated, tmp_path / "run")
    refused(pretrain(run, *extra), capsys, expected, run, curated)
    assert sorted(p.name for p in run.iterdir()) == ["01_curation"]


def test_an_init_that_is_not_a_checkpoint_is_refused(curated, tmp_path, capsys):
    run = fresh_run(curated, tmp_path / "run")
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes, not weights")
    refused(pretrain(run, "--init", str(notes)), capsys, f"--init {notes}: cannot read checkpoint", run, curated, notes)
    assert notes.read_text() == "my notes, not weights"


def test_valid_settings_still_train_after_the_checks(curated, tmp_path, capsys):
    """The checks refuse nothing valid: a 1-step stage with --set crop=16 trains and writes its checkpoint."""
    run = fresh_run(curated, tmp_path / "run")
    assert kit_main(pretrain(run, *QUICK, "--set", "crop=16")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps_run"] == 1 and (run / "02_stage1" / "checkpoint.pt").is_file()
    # stage 2 from that checkpoint (2 -> 4 contrasts) passes the --init checks, for another objective too
    assert kit_main(pretrain(run, *QUICK, "--set", "crop=32", "--objective", "mim", stage="2")) == 0
    assert (run / "03_stage2" / "checkpoint.pt").is_file()


# ----------------------------------------------------------------------------- kit export-bundle

from test_reliability import seg_checkpoint  # noqa: E402,F401  (a real 1-step t1+flair fine-tune at 2 mm)


def strict_json(path: Path):
    """``json.loads`` that refuses NaN and infinities, which Python reads but JSON does not allow."""
    def reject(token):
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=reject)


def export(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["export-bundle", "--checkpoint", str(checkpoint), "--out", str(out), *extra]


@pytest.mark.parametrize("spacing", [["0", "-1", "nan"], ["inf", "1", "1"], ["1", "1", "-0.5"]])
def test_export_refuses_spacing_that_is_not_three_finite_positive_numbers(seg_checkpoint, tmp_path, capsys, spacing):
    out = tmp_path / "bundle"
    shown = " ".join(f"{float(v):g}" for v in spacing)
    err = refused(export(seg_checkpoint, out, "--spacing", *spacing), capsys,
                  f"kit export-bundle: --spacing {shown}: spacing must be 3 finite positive numbers in mm", tmp_path,
                  seg_checkpoint.parent)
    assert err.endswith("(e.g. 1 1 1)") and not out.exists()


def _resaved(checkpoint: Path, to: Path, **extra) -> Path:
    """The fine-tune re-saved with some of its ``extra`` changed (a real checkpoint file)."""
    from kit.models import load_checkpoint, save_checkpoint

    stored = load_checkpoint(checkpoint)
    return save_checkpoint(to, model_config=stored["model_config"], state_dict=stored["state_dict"],
                           extra={**stored["extra"], **extra})


@pytest.mark.parametrize("extra, expected", [
    ({"modalities": ["t1", "flair", "t2"]}, "the network reads 2 channels but extra['modalities'] names 3 (t1, flair, t2)"),
    ({"modalities": ["t1", "../flair"]}, "contrast name '../flair' cannot be part of a file name"),
    ({"modalities": ["t1", "t1"]}, "contrast names repeat: ['t1', 't1']"),
    ({"spacing_mm": [2.0, float("nan"), 2.0]}, "extra['spacing_mm'] 2 nan 2: spacing must be 3 finite positive numbers"),
])
def test_export_refuses_a_checkpoint_whose_channels_or_spacing_are_wrong(seg_checkpoint, tmp_path, capsys, extra,
                                                                         expected):
    checkpoint = _resaved(seg_checkpoint, tmp_path / "odd.pt", **extra)
    out = tmp_path / "bundles" / "odd"
    err = refused(export(checkpoint, out), capsys, expected, tmp_path)
    assert err.startswith(f"kit export-bundle: {checkpoint}") and not (tmp_path / "bundles").exists()


def test_export_refuses_an_out_below_a_file_or_on_an_input(seg_checkpoint, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    refused(export(seg_checkpoint, notes / "bundle"), capsys, f"--out {notes / 'bundle'}: {notes} is a file, not a folder",
            tmp_path, seg_checkpoint.parent)
    refused(export(seg_checkpoint, seg_checkpoint), capsys, f"{seg_checkpoint} exists", tmp_path, seg_checkpoint.parent)


def test_every_exported_json_parses_strictly(seg_checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert kit_main(export(seg_checkpoint, out, "--spacing", "2", "2", "2.5")) == 0
    files = sorted(out.rglob("*.json"))
    assert {p.name for p in files} == {"inference.json", "metadata.json"}
    meta = {p.name: strict_json(p) for p in files}["metadata.json"]
    assert meta["network_data_format"]["inputs"]["image"]["spacing_mm"] == [2.0, 2.0, 2.5]
    assert meta["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "t1", "1": "flair"}
    default = tmp_path / "default"  # without --spacing: the checkpoint's own (2 mm)
    assert kit_main(export(seg_checkpoint, default)) == 0
    assert strict_json(default / "configs" / "metadata.json")["kit"]["spacing_mm"] == [2.0, 2.0, 2.0]


# ----------------------------------------------------------------------------- kit reproduce

from test_reliability import _notebook, _STAGE_CELL, notebooks  # noqa: E402,F401  (tiny real notebooks)


def reproduce_args(run: Path, notebooks: Path, *extra: str) -> list[str]:
    return ["reproduce", "--profile", "smoke", "--out", str(run), "--notebooks", str(notebooks), "--quiet",
            "--cell-timeout", "120", *extra]


def stage_record(run: Path, stage: str) -> dict:
    return json.loads((run / "run.json").read_text())["stages"][stage]


def test_from_02_with_another_objective_on_a_run_holding_only_stage_01(tmp_path, notebooks, capsys):
    """The issue's case: stage 01 does not depend on the objective, so changing it from stage 02 works."""
    run = tmp_path / "run"
    assert kit_main(reproduce_args(run, notebooks, "--to", "01")) == 0
    assert "objective" not in json.loads((run / "run.json").read_text())  # nothing pretrained yet
    assert kit_main(reproduce_args(run, notebooks, "--from", "02", "--objective", "mim")) == 0
    assert stage_record(run, "02_stage1")["objective"] == "mim" and stage_record(run, "02_stage1")["status"] == "done"
    assert json.loads((run / "run.json").read_text())["objective"] == "mim"
    capsys.readouterr()
    # the real conflicts are refused, naming the stage done with the other objective, and change nothing
    err = refused(reproduce_args(run, notebooks, "--from", "02", "--objective", "cross_contrast"), capsys,
                  "02_stage1 is already done in this run directory with other settings (objective 'mim' then, "
                  "'cross_contrast' now): pass --force 02_stage1", run)
    assert err.startswith("kit reproduce: ")
    _notebook(notebooks / "03_stage2_pretrain.ipynb", ["STAGE = '03_stage2'", _STAGE_CELL])
    refused(reproduce_args(run, notebooks, "--from", "03", "--objective", "cross_contrast"), capsys,
            f"--objective cross_contrast: {run / '02_stage1'} was pretrained with 'mim' and 03_stage2 continues "
            "from its weights; rerun from stage 02 (--from 02 --force 02_stage1)", run)
    assert kit_main(reproduce_args(run, notebooks, "--from", "02", "--objective", "cross_contrast",
                                   "--force", "02_stage1")) == 0
    assert stage_record(run, "02_stage1")["objective"] == stage_record(run, "03_stage2")["objective"] == "cross_contrast"


def test_a_stage_02_started_with_another_objective_is_not_resumed_with_a_new_one(tmp_path, notebooks, capsys):
    run = tmp_path / "run"
    _notebook(notebooks / "02_stage1_pretrain.ipynb", ["STAGE = '02_stage1'", "raise RuntimeError('out of memory')"])
    assert kit_main(reproduce_args(run, notebooks, "--objective", "mim")) == 1
    capsys.readouterr()
    assert stage_record(run, "02_stage1")["status"] == "failed"
    refused(reproduce_args(run, notebooks, "--from", "02", "--objective", "swin_trio"), capsys,
            f"--objective swin_trio: {run / '02_stage1'} was started with 'mim' (failed); pass --force 02_stage1 to "
            "start it over with 'swin_trio'", run)


def test_reproduce_refuses_a_datalist_the_objective_cannot_use(curated, tmp_path, notebooks, capsys):
    run = fresh_run(curated, tmp_path / "run")
    datalist = single_contrast(run)
    refused(reproduce_args(run, notebooks, "--from", "02", "--objective", "cross_contrast"), capsys,
            f"kit reproduce: 02_stage1: objective 'cross_contrast' needs >= 2 contrasts; {datalist} cohort 'healthy' "
            "has 1 (t1)", run, curated)
    slices = run / "01_curation" / "slices.csv"
    pd.read_csv(slices).assign(kept=False).to_csv(slices, index=False)
    refused(reproduce_args(run, notebooks, "--from", "02", "--objective", "moco_v3"), capsys,
            f"kit reproduce: 02_stage1: {slices}: the slice filter kept no slice of cohort 'healthy'", run, curated)


def test_reproduce_refuses_an_init_that_is_not_a_checkpoint_before_creating_the_run(tmp_path, notebooks, capsys):
    notes = tmp_path / "notes.pt"
    notes.write_text("not weights")
    run = tmp_path / "run"
    refused(reproduce_args(run, notebooks, "--init", f"mine={notes}"), capsys,
            f"kit reproduce: --init mine={notes}: cannot read checkpoint", tmp_path)
    assert not run.exists() and notes.read_text() == "not weights"


def test_reproduce_refuses_profile_settings_before_notebook_01(tmp_path, notebooks, capsys, monkeypatch):
    """A profile whose crop the objective cannot use (mim needs two 16-voxel patches) is refused up front."""
    from kit import profiles

    smoke = json.loads(json.dumps(profiles.PROFILES["smoke"]))
    smoke["stage1"]["crop"] = 16
    monkeypatch.setitem(profiles.PROFILES, "smoke", smoke)
    run = tmp_path / "run"
    refused(reproduce_args(run, notebooks, "--objective", "mim"), capsys,
            "kit reproduce: 02_stage1: objective 'mim' needs crop >= 32 voxels per side; the stage's crop is 16", tmp_path)
    assert not run.exists()
