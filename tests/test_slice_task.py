"""2D slice classification (tumour present per slice): subject-level splits, linear probe vs fine-tune,
initialisation from a moco_v3 pretraining checkpoint, on real NIfTI files through the cache."""

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from kit.data.cache import build_cache
from kit.data.curate import SliceFilter, curate_slices
from kit.data.slices import SliceDataset
from kit.models import create_model, load_checkpoint
from kit.ssl import create_objective
from kit.train import TrainConfig, train
from kit.finetune import FinetuneConfig
from kit.finetune.slice_task import evaluate_slice_init, slice_study, slice_targets, train_slice_classifier

MODEL = {"widen_factor": 0.125}


def _write(path, arr):
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return str(path)


@pytest.fixture(scope="module")
def tumour_cohort(tmp_path_factory):
    """8 subjects, 2 contrasts; even subjects carry a bright 'tumour' over slices 8..13."""
    tmp = tmp_path_factory.mktemp("slicetask")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(8):
        tumour = i % 2 == 0
        label = np.zeros((32, 32, 22), np.uint8)
        if tumour:
            label[10 + i % 3 : 18 + i % 3, 12:20, 8:14] = 2
        images = []
        for m, scale in (("t1", 400.0), ("flair", 300.0)):
            a = np.zeros((32, 32, 22), np.float32)
            a[4:28, 4:28, 2:20] = rng.random((24, 24, 18)) * scale + 100
            a[label > 0] *= 4.0 if m == "flair" else 0.5
            images.append(_write(tmp / f"s{i}_{m}.nii.gz", a))
        entries.append({"subject": f"s{i}", "image": images, "label": _write(tmp / f"s{i}_seg.nii.gz", label),
                        "tumor_type": ("glioma" if i % 4 == 0 else "meningioma") if tumour else "NA"})
    table = curate_slices(entries, SliceFilter(axis=2, entropy_threshold=2.0, position_window=(0.05, 0.95)))
    cache = build_cache(entries, ["t1", "flair"], tmp / "cache", margin=1)
    return tmp, table, cache, entries


def _config(**kw):
    return FinetuneConfig(task="classification", target="tumor_present", backbone="resnet18_2d", model=MODEL,
                          steps=kw.pop("steps", 4), batch_size=8, lr=3e-3, warmup_steps=1, device="cpu", **kw)


@pytest.fixture(scope="module")
def moco_checkpoint(tumour_cohort):
    tmp, table, cache, _ = tumour_cohort
    slices = SliceDataset(cache, table, axis=2, size=32)
    torch.manual_seed(0)
    objective = create_objective("moco_v3", create_model("resnet18_2d", in_channels=2, **MODEL), dim=16, mlp_dim=32,
                                 total_steps=2)
    train(objective, slices, TrainConfig(steps=2, batch_size=4, lr=1e-3, warmup_steps=1, progress=False, device="cpu"),
          tmp / "moco", modalities=list(cache.modalities))
    return tmp / "moco" / "checkpoint.pt"


def test_targets_per_slice_from_the_label_map(tumour_cohort):
    _, table, cache, _ = tumour_cohort
    slices = SliceDataset(cache, table, axis=2, size=32)
    rows, y, classes = slice_targets(slices)
    expected = [int(int(r.subject[1:]) % 2 == 0 and 8 <= r.slice <= 13) for r in slices.index.itertuples()]
    assert classes == [0, 1] and y.tolist() == expected and len(rows) == len(slices)
    rows, y, classes = slice_targets(slices, "tumor_type")
    assert classes == ["glioma", "meningioma"] and len(rows) == sum(expected)  # lesion slices only


def test_probe_keeps_the_pretrained_encoder_and_finetune_trains_it(tumour_cohort, moco_checkpoint):
    _, table, cache, _ = tumour_cohort
    slices = SliceDataset(cache, table, axis=2, size=32)
    rows, y, _ = slice_targets(slices)
    pretrained = load_checkpoint(moco_checkpoint)["state_dict"]
    probe, _, _ = train_slice_classifier(_config(init=str(moco_checkpoint), freeze_encoder=True), slices, rows, y, 2)
    state = probe.backbone.state_dict()
    encoder = [k for k in state if not k.startswith("fc.")]
    # weights and BatchNorm statistics are the checkpoint's: a linear probe changes only the head
    assert all(torch.equal(state[k], pretrained[k]) for k in encoder)
    tuned, _, _ = train_slice_classifier(_config(init=str(moco_checkpoint)), slices, rows, y, 2)
    assert any(not torch.equal(tuned.backbone.state_dict()[k], pretrained[k]) for k in encoder if "weight" in k)


def test_scratch_vs_pretrained_probe_and_finetune_on_disjoint_subjects(tumour_cohort, moco_checkpoint):
    _, table, cache, _ = tumour_cohort
    train_subjects, test_subjects = ["s0", "s1", "s2", "s3", "s5", "s6"], ["s4", "s7"]
    train_slices = SliceDataset(cache, table, axis=2, size=32, subjects=train_subjects)
    test_slices = SliceDataset(cache, table, axis=2, size=32, subjects=test_subjects)
    for init in ("scratch", str(moco_checkpoint)):
        results = evaluate_slice_init(init, _config(), train_slices, test_slices)
        assert set(results) == {"probe", "finetune"}
        for metrics in results.values():
            assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
            assert metrics["n"] == len(test_slices) and metrics["n_train_slices"] == len(train_slices)
    with pytest.raises(ValueError, match="both the training and the test"):
        evaluate_slice_init("scratch", _config(), train_slices, SliceDataset(cache, table, axis=2, size=32, subjects=["s0"]))


def test_finetune_learns_tumour_slices(tumour_cohort):
    _, table, cache, _ = tumour_cohort
    train_slices = SliceDataset(cache, table, axis=2, size=32, subjects=["s0", "s1", "s2", "s3", "s5", "s6"])
    test_slices = SliceDataset(cache, table, axis=2, size=32, subjects=["s4", "s7"])
    results = evaluate_slice_init("scratch", _config(steps=30), train_slices, test_slices, modes=("finetune",))
    assert results["finetune"]["auc"] > 0.8, results


def test_slice_study_rows(tumour_cohort):
    _, table, cache, _ = tumour_cohort
    study = slice_study(cache, table, {"scratch": "scratch"}, _config(steps=2), fractions=(0.5, 1.0), seeds=(0,),
                        test_fraction=0.25, size=32, modes=("probe",))
    assert len(study) == 2 and set(study.fraction) == {0.5, 1.0}
    assert study.n_train_subjects.tolist() == [3, 6] and study.auc.between(0, 1).all()


def test_pretraining_stage_on_curated_slices(tumour_cohort, tmp_path):
    from kit.train.pretrain import prepare_pretraining, run_pretraining

    tmp, table, _, entries = tumour_cohort
    table.to_csv(tmp_path / "slices.csv", index=False)
    stage = {"backbone": "resnet18_2d", "model": MODEL, "objective": "moco_v3",
             "objective_cfg": {"dim": 16, "mlp_dim": 32}, "slices": {"axis": 2, "size": 32, "channels": "flair"},
             "steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "ckpt_every": 2}
    setup = prepare_pretraining(stage, entries, ["t1", "flair"], tmp_path / "stage", device="cpu",
                                slices=tmp_path / "slices.csv")
    assert isinstance(setup.dataset, SliceDataset) and len(setup.dataset) == int(table.kept.sum())
    assert setup.objective.total_steps == 2 and setup.objective.augment.lr_dim == 0
    assert setup.modalities == ["flair"] and setup.objective.model.in_channels == 1
    summary = run_pretraining(setup)
    checkpoint = load_checkpoint(tmp_path / "stage" / "checkpoint.pt")
    assert summary["steps"] == 2 and checkpoint["extra"]["modalities"] == ["flair"]
    with pytest.raises(ValueError, match="slices.csv"):
        prepare_pretraining(stage, entries, ["t1", "flair"], tmp_path / "other", device="cpu")


def test_slice_study_in_label_counts_resumes_and_keeps_classifiers(tumour_cohort, tmp_path):
    """Counts in subjects (the smallest holds a tumour subject), paired seeds, one row per finished run in
    results.csv (a rerun trains nothing), and kept classifiers that notebook 05 explains on their test slices."""
    from kit.explain.slices import explain_slices, slice_cases, slice_classifier_auc, slice_test_dataset
    from kit.finetune import load_finetuned
    from kit.finetune.slice_task import labelled_subsets, subject_split

    _, table, cache, _ = tumour_cohort
    results_path, kept = tmp_path / "results.csv", {}

    def keep(init, mode, fraction, seed):
        if fraction == 1.0 and seed == 0:
            kept[init] = tmp_path / f"{init}.pt"
            return kept[init]
        return None

    study = slice_study(cache, table, {"scratch": "scratch"}, _config(steps=2), counts=[1, "all"], seeds=(0, 1),
                        test_fraction=2, size=32, modes=("finetune",), results_path=results_path, save_models=keep)
    assert len(study) == 4 and sorted(study.n_train_subjects) == [1, 1, 6, 6] and (study.n_test_subjects == 2).all()
    assert len(pd.read_csv(results_path)) == 4
    # the one labelled subject of each seed has tumour slices (even subjects carry the tumour)
    pool = sorted(set(table.subject) - set(slice_test_dataset(cache, table, load_finetuned(kept["scratch"])[1]).index.subject))
    for seed in (0, 1):
        (only,) = labelled_subsets(pool, [1 / 6, 1.0], seed, {s: int(s[1:]) % 2 == 0 for s in pool})[1 / 6]
        assert int(only[1:]) % 2 == 0
    before = results_path.read_text()
    again = slice_study(cache, table, {"scratch": "scratch"}, _config(steps=2), counts=[1, "all"], seeds=(0, 1),
                        test_fraction=2, size=32, modes=("finetune",), results_path=results_path)
    assert results_path.read_text() == before and len(again) == 4  # nothing redone
    model, extra = load_finetuned(kept["scratch"])
    assert extra["spatial_dims"] == 2 and extra["slices"]["size"] == 32 and len(extra["test_subjects"]) == 2
    test = slice_test_dataset(cache, table, extra)
    assert sorted(set(test.index.subject)) == extra["test_subjects"]
    assert subject_split(SliceDataset(cache, table, axis=2, size=32), 2)[1] == extra["test_subjects"]
    assert abs(slice_classifier_auc(model, test)["auc"] - extra["test_metrics"]["auc"]) < 1e-6
    cases = slice_cases(test, 5)
    assert cases and all(test.label_slice(r).any() for r in cases)
    rows, maps = explain_slices({"scratch": model}, test, cases[:1], ["vanilla", "gradcam"], dilate_mm=4.0)
    assert len(rows) == 2 and rows.mass_in_lesion.between(0, 1).all() and maps[next(iter(maps))].shape == (32, 32)
    with pytest.raises(ValueError, match="not a slice study's results"):
        slice_study(cache, table, {"scratch": "scratch"}, _config(steps=1), seeds=(0,), size=32, modes=("probe",),
                    results_path=_write_csv(tmp_path / "other.csv"))


def _write_csv(path):
    path.write_text("init,task,label_fraction,seed\nscratch,seg,1.0,0\n")
    return path
