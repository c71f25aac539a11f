"""Pretraining pools apart from the study's subjects, and the committed checkpoints' provenance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kit.data.synth import synth_cohort
from kit.train.pools import (PROVENANCE_KEYS, check_disjoint, check_provenance, committed_checkpoint, held_out_split,
                             sha256_of)
from kit.train.provenance import seen_subjects

ROOT = Path(__file__).resolve().parents[1]


def test_disjoint_pools_refuse_a_shared_subject_by_id():
    check_disjoint({"pool": ["BraTS2021_10000", "BraTS2021_10001"], "test": ["BraTS2021_00001"]})
    with pytest.raises(ValueError, match="subject 'BraTS2021_00007' is in both 'stage-2 pool' and 'validation'"):
        check_disjoint({"stage-2 pool": ["BraTS2021_10000", "BraTS2021_00007"], "validation": ["BraTS2021_00007"]})


def test_held_out_split_is_deterministic_and_disjoint():
    subjects = [f"s{i:02d}" for i in range(20)]
    train, held = held_out_split(subjects, 4, seed=3)
    assert (train, held) == held_out_split(list(reversed(subjects)), 4, seed=3)
    assert len(held) == 4 and not set(train) & set(held) and sorted(train + held) == subjects
    assert held != held_out_split(subjects, 4, seed=4)[1]


def test_synth_first_index_gives_ids_no_labelled_cohort_uses(tmp_path):
    ids = synth_cohort("tumor", "brats2021", 2, tmp_path, seed=5, resolution_mm=8.0, first_index=10_000)
    assert ids == ["BraTS2021_10000", "BraTS2021_10001"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ids
    table = pd.read_csv(tmp_path / "participants.tsv", sep="\t")
    assert table.subject.tolist() == ids
    # rerun reuses the files
    before = (tmp_path / ids[0] / f"{ids[0]}_flair.nii.gz").stat().st_mtime_ns
    synth_cohort("tumor", "brats2021", 2, tmp_path, seed=5, resolution_mm=8.0, first_index=10_000)
    assert (tmp_path / ids[0] / f"{ids[0]}_flair.nii.gz").stat().st_mtime_ns == before


def test_provenance_check_refuses_a_changed_checkpoint(tmp_path):
    from kit.train.pools import write_provenance

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"weights")
    info = {k: 0 for k in PROVENANCE_KEYS if k not in ("checkpoint", "sha256")}
    path = write_provenance(tmp_path / "provenance.json", ckpt, info)
    assert check_provenance(path)["sha256"] == sha256_of(ckpt)
    ckpt.write_bytes(b"other weights")
    with pytest.raises(ValueError, match="provenance.json: checkpoint.pt has sha256"):
        check_provenance(path)
    record = json.loads(path.read_text())
    del record["command"]
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"provenance lacks \['command'\]"):
        check_provenance(path)


def test_pretrain_pool_smoke_writes_a_complete_record_and_resumes(tmp_path):
    """The committed checkpoints' script, shrunk: pools apart from the labelled cohort, curves from step 0,
    a provenance file whose sha256 matches, and a rerun that trains nothing more."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pretrain_pool.py"), "--objective", "mim", "--smoke", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    results = tmp_path / "results" / "mim"
    record = check_provenance(results / "provenance.json")
    assert record["partial"] is False and record["checkpoint"] == "checkpoint.pt"
    assert record["stages"]["1"]["crops"] == 16 and record["stages"]["2"]["crops"] == 8
    curves = pd.read_csv(results / "curves.csv")
    assert curves.groupby("stage").step.apply(list).to_dict() == {1: [0, 4, 8], 2: [0, 4]}
    seen = seen_subjects(results / "checkpoint.pt")
    pool = {s for subjects in seen.values() for s in subjects}
    labelled = {f"BraTS2021_{i:05d}" for i in range(80)}
    assert pool and not pool & labelled
    held = set(record["pool"]["stage2"]["held_out_subjects"])
    assert held and not held & pool  # pretext metrics come from subjects pretraining never saw
    assert seen_subjects(results / "stage1" / "checkpoint.pt").keys() == {"stage1"}
    assert not (results / "resume").exists() or not any((results / "resume").iterdir())
    path, committed = committed_checkpoint("mim", root=tmp_path / "results")
    assert path == results / "checkpoint.pt" and committed["partial"] is False
    with pytest.raises(FileNotFoundError, match="python benchmarks/pretrain_pool.py --objective swin_trio"):
        committed_checkpoint("swin_trio", root=tmp_path / "results")
    sha = sha256_of(results / "checkpoint.pt")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert again.returncode == 0, again.stderr[-2000:]
    assert sha256_of(results / "checkpoint.pt") == sha and len(pd.read_csv(results / "curves.csv")) == len(curves)


def test_run_cohorts_keep_the_unlabelled_pool_apart(tmp_path):
    """prepare_cohorts: a synthetic pool gets IDs of its own, a pool that reuses the labelled IDs is refused by
    ID, and on a real dataset the pool is drawn from the subjects the labelled cohort left."""
    from kit.data.cohorts import prepare_cohorts

    tumor = {"layout": "brats2021", "manifest": "brats2021", "n": 2}
    pool = {"kind": "tumor", "layout": "brats2021", "manifest": "brats2021", "n": 2, "first_index": 10000}
    results = prepare_cohorts({"tumor": tumor, "tumor_pool": pool}, tmp_path / "run", resolution_mm=8.0, progress=False)
    assert list(results) == ["tumor", "tumor_pool"]
    assert [e["subject"] for e in results["tumor_pool"].subjects] == ["BraTS2021_10000", "BraTS2021_10001"]
    with pytest.raises(ValueError, match="subject 'BraTS2021_00000' is in both 'tumor' and 'tumor_pool'"):
        prepare_cohorts({"tumor": tumor, "tumor_pool": {**pool, "first_index": 0}}, tmp_path / "run2",
                        resolution_mm=8.0, progress=False)
    # real data: one BraTS folder of 5 subjects serves both cohorts, without a subject in common
    synth_cohort("tumor", "brats2021", 5, tmp_path / "data" / "brats2021", seed=9, resolution_mm=8.0)
    real = prepare_cohorts({"tumor": {**tumor, "n": 3}, "tumor_pool": {**pool, "n": 3}}, tmp_path / "run3",
                           data_root=tmp_path / "data", resolution_mm=8.0, progress=False)
    labelled = {e["subject"] for e in real["tumor"].subjects}
    pooled = {e["subject"] for e in real["tumor_pool"].subjects}
    assert len(labelled) == 3 and len(pooled) == 2 and not labelled & pooled


def test_committed_checkpoints_match_their_provenance_and_saw_no_study_subject():
    """Every committed pool-pretrained checkpoint: a complete provenance whose sha256 is the file's, <= 5 MiB,
    pools apart from every synthetic profile's labelled tumour cohort; the profiles' committed inits resolve."""
    from kit.finetune.study import committed_inits
    from kit.profiles import PROFILES
    from kit.train.pools import COMMITTED_DIR

    records = sorted(COMMITTED_DIR.glob("**/provenance.json"))  # beside every committed checkpoint
    assert records, f"no committed pretraining in {COMMITTED_DIR}"
    labelled = {f"BraTS2021_{i:05d}" for i in range(max(p["cohorts"]["tumor"]["n"] for p in PROFILES.values()))}
    for path in records:
        record = check_provenance(path)
        checkpoint = path.parent / record["checkpoint"]
        assert checkpoint.stat().st_size <= 5 * 2**20, checkpoint
        seen = seen_subjects(checkpoint)
        assert seen and not {s for ids in seen.values() for s in ids} & labelled, path
        assert record["objective"] in (path.parent.name, path.parent.parent.name) and isinstance(record["partial"], bool)
    for name, profile in PROFILES.items():
        wanted = profile["finetune"].get("committed_inits", [])
        assert len(committed_inits(wanted)) == len(wanted), name


def test_a_changed_committed_checkpoint_changes_the_study_settings_id(tmp_path):
    """A committed pretraining continued in a later session changes its file: rows fine-tuned from the old
    version must not be kept by a resumed study (their settings id changes with the provenance's sha256)."""
    from kit.finetune import FinetuneConfig
    from kit.finetune.study import settings_id
    from kit.train.pools import write_provenance

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"version 1")
    config = FinetuneConfig(steps=10, init=str(ckpt))
    plain = settings_id(config, ["a"], ["b"], ["c"])
    assert plain == settings_id(FinetuneConfig(steps=10, init=str(tmp_path / "moved.pt")), ["a"], ["b"], ["c"])
    info = {k: 0 for k in PROVENANCE_KEYS if k not in ("checkpoint", "sha256")}
    write_provenance(tmp_path / "provenance.json", ckpt, info)
    first = settings_id(config, ["a"], ["b"], ["c"])
    ckpt.write_bytes(b"version 2")
    write_provenance(tmp_path / "provenance.json", ckpt, info)
    assert len({plain, first, settings_id(config, ["a"], ["b"], ["c"])}) == 3
