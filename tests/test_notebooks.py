"""The notebooks, executed headless by papermill in the smoke profile on synthetic cohorts.

One `kit reproduce` run (the README's main command) exercises every existing notebook in order;
the assertions check each stage's contract outputs, not just that nothing raised.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit.data.cohorts import load_cohort
from kit.pipeline import STAGES

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("smoke") / "run"
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "reproduce", "--profile", "smoke", "--out", str(run), "--quiet"],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    assert proc.returncode == 0, f"kit reproduce failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return run


def test_stage01_curation_outputs(smoke_run):
    out = smoke_run / "01_curation"
    assert (out / "01_curation.ipynb").exists()  # executed copy
    entries, meta = load_cohort(out / "datalist.json", "tumor")
    assert [meta["modality"][str(i)] for i in range(4)] == ["flair", "t1ce", "t1", "t2"]
    assert len(entries) == 8 and all(Path(p).exists() for e in entries for p in e["image"] + [e["label"]])
    healthy, _ = load_cohort(out / "datalist.json", "healthy")
    assert len(healthy) == 6 and len(healthy[0]["image"]) == 2
    qc = (out / "qc.csv").read_text().splitlines()
    assert len(qc) == 1 + 6 + 8 + 4 + 4  # healthy, tumor, stroke and the unlabelled tumour pool
    pool, _ = load_cohort(out / "datalist.json", "tumor_pool")
    assert len(pool) == 4 and not {e["subject"] for e in pool} & {e["subject"] for e in entries}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"]["problems"] == 0
    assert 0 < summary["figures"]["slices_retained_fraction"] < 1
    for plot in summary["plots"]:
        assert (out / plot).stat().st_size > 5000, plot


def test_pretraining_stages_chain(smoke_run):
    import torch

    from kit.models.checkpoints import load_checkpoint

    s1 = load_checkpoint(smoke_run / "02_stage1" / "checkpoint.pt")
    s2 = load_checkpoint(smoke_run / "03_stage2" / "checkpoint.pt")
    assert s1["extra"]["modalities"] == ["t1", "flair"]
    assert s2["extra"]["modalities"] == ["flair", "t1ce", "t1", "t2"]
    metrics = json.loads((smoke_run / "03_stage2" / "metrics.json").read_text())
    assert metrics["records"][-1]["step"] == 6
    # stage 2 started from stage 1: deep layers (same shapes) moved only a little from stage 1's
    # weights, far less than their distance to a fresh initialisation
    key = next(k for k, v in s1["state_dict"].items() if v.ndim == 5 and k in s2["state_dict"]
               and v.shape == s2["state_dict"][k].shape and "convInit" not in k)  # a deep layer, not the first
    w1, w2 = s1["state_dict"][key], s2["state_dict"][key]
    assert torch.linalg.norm(w2 - w1) < 0.5 * torch.linalg.norm(w1)


def test_finetune_study_outputs(smoke_run):
    import pandas as pd

    results = pd.read_csv(smoke_run / "04_finetune" / "results.csv")
    for column in ("init", "task", "label_fraction", "seed", "n_train", "n_test"):
        assert column in results
    seg = results[results.task == "tumor_seg"]
    # the smoke profile compares mim with its own objective (notebook 03): its stage 1+2 is one more init
    assert set(seg.init) == {"scratch", "stage1", "stage1+2", "mim:stage1+2"} and set(seg.label_fraction) == {0.5, 1.0}
    assert seg.dice_mean.between(0, 1).all() and {"dice_TC", "dice_WT", "dice_ET", "hd95_mean"} <= set(seg)
    # nested splits: the smaller fraction trains on fewer subjects, every init on the same number
    sizes = seg.groupby("label_fraction").n_train.agg(["min", "max"])
    assert (sizes["min"] == sizes["max"]).all() and sizes.loc[0.5, "max"] < sizes.loc[1.0, "max"]
    cls = results[results.task == "tumor_present"]
    assert cls.accuracy.between(0, 1).all()
    assert set(results[results.task == "stroke_seg"].init) == {"scratch", "stage1"}
    assert (smoke_run / "04_finetune" / "models" / "tumor_present__stage1+2.pt").exists()
    # the notebook's verdict is in the report, with the number of seeds it rests on
    assert "stage1+2 minus scratch" in (smoke_run / "report.md").read_text()
    # model selection on a validation split, learning curves, probes, the leakage flag
    assert (results.n_val >= 1).all() and (results.best_step <= results.steps_run).all()
    curves = pd.read_csv(smoke_run / "04_finetune" / "curves.csv")
    assert {"init", "task", "step", "val_dice_mean", "best"} <= set(curves)
    finetuned = pd.read_csv(smoke_run / "04_finetune" / "finetune_summary.csv")
    assert list(finetuned.columns[:9]) == ["init", "task", "label_fraction", "protocol", "metric", "mean", "ci_low",
                                           "ci_high", "n"]  # fine-tunes are summarised per protocol
    probes = pd.read_csv(smoke_run / "04_finetune" / "probe_summary.csv")
    assert list(probes.columns[:8]) == ["init", "task", "label_fraction", "metric", "mean", "ci_low", "ci_high", "n"]
    assert set(probes.init) == {"scratch", "stage1", "stage1+2", "mim:stage1+2"}
    assert set(probes.task) == {"tumor_seg", "tumor_present"}
    seg_probes = probes[probes.task == "tumor_seg"]  # smoke's 2 test subjects may hold one class: AUC nan
    assert (seg_probes[seg_probes.label_fraction == 1.0].n == 1).all() and seg_probes.n.max() <= 2  # "all": fitted once
    # stage 2 pretrained on the unlabelled tumour pool, so the refusing guard let every init through
    seen = json.loads((smoke_run / "03_stage2" / "seen_subjects.json").read_text())["stages"]
    assert [s["stage"] for s in seen] == ["02_stage1", "03_stage2"]
    assert seen[1]["subjects"] and all(x.startswith("BraTS2021_1") for x in seen[1]["subjects"])  # IDs 10000...
    assert not (smoke_run / "04_finetune" / "leakage.json").exists()
    assert "no study subject (test, validation or labelled) seen in pretraining" in (smoke_run / "report.md").read_text()
    # every init against scratch, probe and fine-tune, in comparison.csv and in the report's table
    comparison = pd.read_csv(smoke_run / "04_finetune" / "comparison.csv")
    assert set(comparison.readout) == {"linear probe", "fine-tune"}
    assert {"stage1", "stage1+2", "mim:stage1+2"} <= set(comparison.treatment) and set(comparison.control) == {"scratch"}
    assert comparison.dropna(subset=["ci_low"]).eval("ci_low <= mean_diff <= ci_high").all()
    assert "Every init against scratch" in (smoke_run / "report.md").read_text()
    assert (smoke_run / "03_stage2" / "objectives" / "mim" / "checkpoint.pt").exists()


def test_saliency_outputs(smoke_run):
    import pandas as pd

    table = pd.read_csv(smoke_run / "05_saliency" / "saliency.csv")
    for column in ("init", "method", "case", "mass_in_lesion", "pointing_hit"):
        assert column in table
    assert set(table.init) == {"scratch", "stage1+2"} and len(set(table.method)) == 6
    assert table.mass_in_lesion.dropna().between(0, 1).all()


def test_report_lists_every_stage(smoke_run):
    report = (smoke_run / "report.md").read_text()
    for stage in STAGES:
        assert f"## {stage}" in report
    assert "![" in report
    status = json.loads((smoke_run / "run.json").read_text())["stages"]
    assert all(status[stage]["status"] == "done" for stage in STAGES)


@pytest.mark.parametrize("objective", ["cross_contrast", "mim", "anatomy_hierarchy"])  # moco_v3: the test below
def test_stage02_runs_with_every_objective(tmp_path, objective):
    """`kit reproduce --profile smoke --to 02 --objective NAME` trains and draws each objective's preview."""
    from kit.models.checkpoints import load_checkpoint

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "reproduce", "--profile", "smoke", "--out", str(run), "--to", "02",
         "--objective", objective, "--quiet"],
        capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"), timeout=900,
    )
    assert proc.returncode == 0, f"kit reproduce failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads((run / "02_stage1" / "summary.json").read_text())
    assert summary["figures"]["objective"] == objective and summary["figures"]["steps"] == 8
    assert json.loads((run / "run.json").read_text())["objective"] == objective
    checkpoint = load_checkpoint(run / "02_stage1" / "checkpoint.pt")
    assert checkpoint["extra"]["ssl_objective"]["name"] == objective
    for plot in summary["plots"]:
        assert (run / "02_stage1" / plot).stat().st_size > 5000, plot


def test_moco_v3_runs_every_stage_on_the_2d_path(tmp_path):
    """`kit reproduce --profile smoke --objective moco_v3`: MoCo v3 on curated slices in 02-03, the 2D slice
    study in 04 (scratch, curated and uncurated pretraining; label counts in subjects; paired seeds) and
    slice saliency in 05, with none of the 3D tasks' cells."""
    import pandas as pd

    from kit.models.checkpoints import load_checkpoint

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "reproduce", "--profile", "smoke", "--out", str(run), "--objective", "moco_v3",
         "--quiet"],
        capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"), timeout=1200,
    )
    assert proc.returncode == 0, f"kit reproduce failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert all(s["status"] == "done" for s in json.loads((run / "run.json").read_text())["stages"].values())
    summary = json.loads((run / "02_stage1" / "summary.json").read_text())
    assert summary["figures"]["objective"] == "moco_v3" and summary["figures"]["steps"] == 8
    for stage in ("02_stage1", "03_stage2"):
        assert load_checkpoint(run / stage / "checkpoint.pt")["extra"]["ssl_objective"]["name"] == "moco_v3"
    out = run / "04_finetune"
    results = pd.read_csv(out / "results.csv")
    final, uncurated = "moco_v3:stage1+2", "moco_v3:stage1+2 uncurated"
    assert set(results.init) == {"scratch", final, uncurated} and set(results["mode"]) == {"finetune"}
    assert set(results.n_train_subjects) == {1, 6} and set(results.seed) == {0, 1} and len(results) == 12
    assert results.auc.between(0, 1).all()
    assert load_checkpoint(out / "uncurated" / "stage2" / "checkpoint.pt")["extra"]["step"] == 6  # same budget
    assert not (run / "03_stage2" / "objectives").exists()  # the 3D objectives are not compared on slices
    differences = pd.read_csv(out / "differences.csv")
    assert {(final, "scratch"), (uncurated, "scratch"), (final, uncurated)} == set(zip(differences.treatment,
                                                                                        differences.control))
    assert (differences.n_pairs == 2).all() and (out / "summary.csv").exists()
    assert (out / "figures" / "slice_inits_vs_scratch.png").stat().st_size > 5000
    assert not (out / "probe_summary.csv").exists() and not (out / "cache_stroke").exists()  # no 3D cells ran
    report = (run / "report.md").read_text()
    assert "moco_v3:stage1+2 minus scratch" in report and "offline" in report
    saliency = pd.read_csv(run / "05_saliency" / "saliency.csv")
    assert set(saliency.init) == {"scratch", final, uncurated} and len(set(saliency.method)) == 6
    assert saliency.mass_in_lesion.dropna().between(0, 1).all()
    for plot in json.loads((run / "05_saliency" / "summary.json").read_text())["plots"]:
        assert (run / "05_saliency" / plot).stat().st_size > 5000, plot
