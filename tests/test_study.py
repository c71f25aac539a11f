"""The study's design (test / validation / label counts), its leakage guard and resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kit.data.cache import build_cache
from kit.train.provenance import guard_leakage, leakage_report, record_seen_subjects, seen_subjects
from kit.finetune.study import counts_to_fractions, run_study, study_design, study_splits

from test_finetune import BRATS21, write_subject


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(1)
    entries = []
    for i in range(10):
        files, label = write_subject(folder, f"s{i}", rng, tumour=i < 8)
        entries.append({"subject": f"s{i}", "image": files, "label": label, "tumor_present": int(i < 8)})
    return build_cache(entries, ["flair", "t1ce"], folder / "cache")


def test_design_test_val_and_counts_are_disjoint_and_fixed(cohort):
    spec = {"task": "segmentation", "pool": "lesion"}
    design = study_design(cohort, spec, None, [0, 1], test_fraction=3, val_size=2, counts=[1, 2, "all"])
    test, val = set(design["test"]), set(design["val"])
    assert len(test) == 3 and len(val) == 2 and not test & val and design["pool"] == 3
    for seed, subsets in design["per_seed"].items():
        sizes = [len(subsets[f]) for f in design["fractions"]]
        assert sizes == [1, 2, 3]
        assert all(not set(v) & (test | val) for v in subsets.values())
        assert set(subsets[design["fractions"][0]]) <= set(subsets[design["fractions"][1]])
    # the test set does not depend on the validation split (nor on the seeds)
    plain_test, _ = study_splits(cohort, spec, [1.0], [5], 3)
    assert set(plain_test) == test
    assert counts_to_fractions([1, 4, "all"], 8) == [0.125, 0.5, 1.0]
    with pytest.raises(ValueError, match="outside"):
        counts_to_fractions([9], 8)


def test_seen_subjects_follow_the_lineage(tmp_path):
    one = record_seen_subjects(tmp_path / "02_stage1", "02_stage1", ["h1", "h0"], cohort="healthy")
    two = record_seen_subjects(tmp_path / "03_stage2", "03_stage2", ["s3", "s1"], cohort="tumor",
                               init_checkpoint=one.with_name("checkpoint.pt"))
    assert seen_subjects(two.with_name("checkpoint.pt")) == {"02_stage1": ["h0", "h1"], "03_stage2": ["s1", "s3"]}
    assert seen_subjects(tmp_path / "nowhere" / "checkpoint.pt") is None
    inits = {"scratch": "scratch", "stage1": str(one.with_name("checkpoint.pt")),
             "stage1+2": str(two.with_name("checkpoint.pt"))}
    assert leakage_report(inits, ["s1", "s2"]) == {"stage1+2": {"stages": ["03_stage2"], "subjects": ["s1"],
                                                                "roles": {"test": ["s1"]}}}
    assert leakage_report({"x": str(tmp_path / "ckpt.pt")}, ["s1"])["x"]["unrecorded"] is True
    with pytest.warns(UserWarning, match="cannot check"):
        assert guard_leakage({"x": str(tmp_path / "ckpt.pt")}, ["s1"], "flag", "here") == {}


def test_guard_refuses_validation_subjects_and_unrecorded_checkpoints(tmp_path):
    one = record_seen_subjects(tmp_path / "p", "pool", ["v1", "u9"], cohort="tumor").with_name("checkpoint.pt")
    roles = {"test": ["t1"], "validation": ["v1", "v2"], "labelled": ["l1"]}
    with pytest.raises(ValueError, match=r"here: init 'pre' saw study subjects in pretraining \(1 validation subjects"):
        guard_leakage({"pre": str(one)}, roles, "refuse", "here")
    assert guard_leakage({"pre": str(one)}, roles, "flag", "here")["pre"]["roles"] == {"validation": ["v1"]}
    clean = record_seen_subjects(tmp_path / "q", "pool", ["u1"], cohort="tumor").with_name("checkpoint.pt")
    assert guard_leakage({"pre": str(clean), "scratch": "scratch"}, roles, "refuse", "here") == {}
    with pytest.raises(ValueError, match="has no seen_subjects.json beside it"):
        guard_leakage({"pre": str(tmp_path / "r" / "checkpoint.pt")}, roles, "refuse", "here")


def test_study_refuses_or_flags_test_subjects_seen_in_pretraining(cohort, tmp_path):
    spec = {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion"}
    test = [cohort.entries[i]["subject"] for i in study_design(cohort, spec, [1.0], [0], 3)["test"]]
    stage2 = record_seen_subjects(tmp_path / "03_stage2", "03_stage2", [test[0], "other"], cohort="tumor")
    inits = {"scratch": "scratch", "stage1+2": str(stage2.with_name("checkpoint.pt"))}
    base = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "steps": 2, "batch_size": 1, "crop": 16,
            "val_every": 1, "inference": "whole", "augment": False}
    with pytest.raises(ValueError, match=f"saw study subjects in pretraining \\(1 test subjects.*{test[0]}"):
        run_study({"tumor": cohort}, [spec], inits, [1.0], [0], base, tmp_path / "r.csv", test_fraction=3,
                  device="cpu", progress=False)
    assert not (tmp_path / "r.csv").exists()
    # flagged: only scratch runs here (the checkpoint file does not exist), the overlap is recorded
    flagged = run_study({"tumor": cohort}, [{**spec, "inits": ["scratch"]}], inits, None, [0], base,
                        tmp_path / "r.csv", test_fraction=3, val_size=1, counts=[1], device="cpu", progress=False,
                        regions={"tumor": BRATS21}, leakage="flag")
    assert (tmp_path / "leakage.json").exists() is False  # scratch alone cannot leak
    row = flagged.iloc[0]
    assert row.n_train == 1 and row.n_val == 1 and row.n_test == 3 and row.test_seen_in_pretraining == 0
    assert {"hd95_empty", "best_step", "steps_run"} <= set(flagged.columns)
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert list(curves.step) == [1, 2] and "val_dice_mean" in curves
    assert not (tmp_path / "finetune_runs").exists()  # a finished run's resumable folder is removed
    # resume: nothing runs twice
    again = run_study({"tumor": cohort}, [{**spec, "inits": ["scratch"]}], inits, None, [0], base,
                      tmp_path / "r.csv", test_fraction=3, val_size=1, counts=[1], device="cpu", progress=False,
                      regions={"tumor": BRATS21}, leakage="flag")
    assert len(again) == 1 and len(pd.read_csv(tmp_path / "curves.csv")) == 2


def test_flagged_leak_is_written_beside_the_results(cohort, tmp_path):
    spec = {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion", "inits": []}
    test = [cohort.entries[i]["subject"] for i in study_design(cohort, spec, [1.0], [0], 3)["test"]]
    stage2 = record_seen_subjects(tmp_path / "03_stage2", "03_stage2", test, cohort="tumor")
    inits = {"stage1+2": str(stage2.with_name("checkpoint.pt"))}
    run_study({"tumor": cohort}, [{**spec, "inits": ["stage1+2"], "counts": []}], inits, None, [0], {},
              tmp_path / "r.csv", test_fraction=3, device="cpu", progress=False, leakage="flag")
    leak = json.loads((tmp_path / "leakage.json").read_text())
    assert leak["tumor_seg"]["stage1+2"]["subjects"] == sorted(test)


def test_parallel_workers_and_per_count_config_match_one_process(cohort, tmp_path):
    """Two worker processes give the rows one process gives; count_config lengthens only its count."""
    spec = {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion", "inits": ["scratch"],
            "count_config": {"all": {"steps": 3}}}
    base = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "steps": 2, "batch_size": 1, "crop": 16,
            "val_every": 1, "inference": "whole", "augment": False}
    kw = dict(test_fraction=3, val_size=1, counts=[1, "all"], device="cpu", progress=False,
              regions={"tumor": BRATS21}, leakage="flag")
    inits = {"scratch": "scratch"}
    one = run_study({"tumor": cohort}, [spec], inits, None, [0], base, tmp_path / "one" / "r.csv", **kw)
    two = run_study({"tumor": cohort}, [spec], inits, None, [0], base, tmp_path / "two" / "r.csv", workers=2, **kw)
    key = ["label_fraction", "seed"]
    one, two = one.sort_values(key).reset_index(drop=True), two.sort_values(key).reset_index(drop=True)
    assert list(one.steps_run) == [2, 3] and list(two.steps_run) == [2, 3]
    assert list(one.n_train) == list(two.n_train) == [1, 4]
    np.testing.assert_allclose(two.dice_mean, one.dice_mean, atol=0.02)
    curves = pd.read_csv(tmp_path / "two" / "curves.csv")
    assert sorted(curves.groupby("label_fraction").step.max()) == [2, 3]
    assert not (tmp_path / "two" / "finetune_runs").exists()


def test_count_config_must_name_a_count_of_the_task():
    from kit.finetune.study import count_overrides

    assert count_overrides({"count_config": {"1": {"lr": 1e-3}}}, [1, 4, "all"], 8) == {0.125: {"lr": 1e-3}}
    with pytest.raises(ValueError, match=r"count_config names counts \['2'\]"):
        count_overrides({"name": "t", "count_config": {2: {"steps": 9}}}, [1, "all"], 8)


def test_resume_reruns_only_the_runs_whose_settings_changed(cohort, tmp_path):
    spec = {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion", "inits": ["scratch"]}
    base = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "steps": 2, "batch_size": 1, "crop": 16,
            "val_every": 1, "inference": "whole", "augment": False}
    kw = dict(test_fraction=3, val_size=1, counts=[1, "all"], device="cpu", progress=False,
              regions={"tumor": BRATS21}, leakage="flag")
    out = tmp_path / "r.csv"
    first = run_study({"tumor": cohort}, [spec], {"scratch": "scratch"}, None, [0], base, out, **kw)
    assert first.settings_id.nunique() == 2
    # the all-label cell gets a longer schedule: only its row is redone, the 1-subject row is kept as is
    longer = {**spec, "count_config": {"all": {"steps": 3}}}
    second = run_study({"tumor": cohort}, [longer], {"scratch": "scratch"}, None, [0], base, out, **kw)
    second = second.sort_values("label_fraction").reset_index(drop=True)
    assert len(second) == 2 and list(second.steps_run) == [2, 3]
    kept = first.sort_values("label_fraction").iloc[0]
    assert second.iloc[0].settings_id == kept.settings_id and second.iloc[0].wall_s == kept.wall_s
    assert second.iloc[1].settings_id != first.sort_values("label_fraction").iloc[1].settings_id
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert sorted(curves.groupby("label_fraction").step.apply(list).tolist()) == [[1, 2], [1, 2, 3]]
    # a table from before settings ids is trusted (nothing reruns)
    pd.read_csv(out).drop(columns="settings_id").to_csv(out, index=False)
    third = run_study({"tumor": cohort}, [spec], {"scratch": "scratch"}, None, [0], base, out, **kw)
    assert list(third.sort_values("label_fraction").steps_run) == [2, 3]
