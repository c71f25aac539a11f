"""Linear probes on frozen encoders: hypercolumns, voxel sampling, fitted heads, the summary table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kit.models import create_model
from kit.finetune.probes import (
    SegmentationProbeData,
    encoder_hypercolumn,
    pooled_features,
    probe_encoder,
    probe_summary,
    run_probes,
    sample_voxels,
)

from test_finetune import BRATS21
from test_study import cohort  # noqa: F401  (10 subjects, 8 with a tumour)


def test_hypercolumn_is_the_upsampled_encoder_levels():
    net = create_model("segresnet_small", in_channels=2, init_filters=8).eval()
    image = torch.randn(2, 16, 24, 16)
    column = encoder_hypercolumn(net, image)
    assert column.shape == (8 + 16 + 32 + 64, 16, 24, 16)
    with torch.no_grad():
        from monai.networks.nets import SegResNet

        _, levels = SegResNet.encode(net, image[None])
    assert torch.allclose(column[:8], levels[0][0], atol=1e-6)  # full-resolution level unchanged
    assert pooled_features(net, image).shape == (120,)


def test_sampled_voxels_are_balanced_and_weighted_back():
    label = np.zeros((12, 12, 12), int)
    label[:2] = 2
    label[0, 0, :3] = 4
    brain = np.ones_like(label, bool)
    brain[-1] = False  # background outside the brain is never sampled
    idx, values, weights = sample_voxels(label, brain, 30, np.random.default_rng(0), [0, 1, 2, 4])
    assert sorted(set(values)) == [0, 2, 4] and (values == 4).sum() == 3 and (values == 2).sum() == 30
    assert weights[values == 0].sum() == pytest.approx((brain & (label == 0)).sum())
    assert weights[values == 2].sum() == pytest.approx((label == 2).sum())
    assert not np.isin(idx, np.flatnonzero(~brain.ravel() & (label.ravel() == 0))).any()


def test_segmentation_probe_learns_the_tumour_from_frozen_random_features(cohort):  # noqa: F811
    net = probe_encoder("scratch", 2, ["flair", "t1ce"], {"backbone": "segresnet_small", "model": {"init_filters": 8}})
    data = SegmentationProbeData(net, cohort, [0, 1, 2], [3, 4], [0, 1, 2, 4], per_value=200)
    probe = data.fit([0, 1, 2])
    table = data.evaluate(probe, BRATS21)
    # the toy tumour is bright on flair: even random features separate it linearly
    assert list(table.subject) == ["s3", "s4"] and table.dice_WT.min() > 0.7
    full = data.evaluate(probe, BRATS21, with_hd95=True)  # the fine-tune metrics give the same Dice
    assert np.allclose(full.dice_mean, table.dice_mean) and {"hd95_empty", "hd95_mean"} <= set(full.columns)


def test_run_probes_resumes_and_summarises(cohort, tmp_path):  # noqa: F811
    tasks = [{"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion"},
             {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor",
              "counts": [2, "all"]}]
    base = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "input_size": 16}
    kwargs = dict(test_fraction=3, val_size=1, regions={"tumor": BRATS21}, label_values={"tumor": [0, 1, 2, 4]},
                  per_value=100, progress=False)
    table = run_probes({"tumor": cohort}, tasks, {"scratch": "scratch"}, [0, 1], [1, "all"], base,
                       tmp_path / "probes.csv", **kwargs)
    # every seed draws the same set at "all": that probe is fitted once (repeats would fake a zero-width CI)
    # (on this 4-subject toy pool both seeds may also draw the same single subject: fitted once too)
    assert table.groupby("task").n_train.max().to_dict() == {"tumor_present": 6, "tumor_seg": 4}
    per_fraction = table.groupby(["task", "label_fraction"]).seed.nunique()
    assert (per_fraction[per_fraction.index.get_level_values(1) == 1.0] == 1).all() and per_fraction.max() == 2
    assert table[table.task == "tumor_seg"].dice_mean.between(0, 1).all()
    assert table[table.task == "tumor_present"].auc.notna().all()
    again = run_probes({"tumor": cohort}, tasks, {"scratch": "scratch"}, [0, 1], [1, "all"], base,
                       tmp_path / "probes.csv", **kwargs)
    assert len(again) == len(table)  # nothing refitted
    summary = probe_summary(again)
    assert list(summary.columns[:8]) == ["init", "task", "label_fraction", "metric", "mean", "ci_low", "ci_high", "n"]
    assert set(summary.metric) == {"dice_mean", "auc"}
    assert (summary.n[summary.label_fraction == 1.0] == 1).all()
    assert ((summary.ci_low >= 0) | summary.ci_low.isna()).all() and ((summary.ci_high <= 1) | summary.ci_high.isna()).all()


def test_max_pooling_sees_a_small_tumour_that_the_mean_dilutes(cohort, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    net = create_model("segresnet_small", in_channels=1, init_filters=8).eval()
    brain = torch.ones(1, 32, 32, 32) + 0.05 * torch.randn(1, 32, 32, 32)
    tumour = brain.clone()
    tumour[0, 12:16, 12:16, 12:16] += 4.0  # 64 of 32768 voxels (0.2 %)

    def change(pool):
        a, b = pooled_features(net, brain, pool), pooled_features(net, tumour, pool)
        return float(np.linalg.norm(b - a) / np.linalg.norm(a))

    assert change("max") > 5 * change("avg")
    both = pooled_features(net, tumour, "avgmax")
    assert np.array_equal(both, np.concatenate([pooled_features(net, tumour, "avg"), pooled_features(net, tumour, "max")]))
    with pytest.raises(ValueError, match="pool"):
        pooled_features(net, tumour, "median")
    # run_probes pools the classification probes as asked and records it per row
    task = {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor",
            "counts": ["all"]}
    table = run_probes({"tumor": cohort}, [task], {"scratch": "scratch"}, [0], ["all"],
                       {"backbone": "segresnet_small", "model": {"init_filters": 8}, "input_size": 16},
                       tmp_path / "p.csv", test_fraction=3, val_size=1, progress=False, pool="avgmax")
    assert list(table["pool"]) == ["avgmax"] and table.auc.notna().all()


def test_probes_refuse_an_init_that_saw_a_study_subject(cohort, tmp_path):  # noqa: F811
    """The study's leakage guard also stands before the probes: a validation or test subject in an init's
    pretraining, or an init without a record, stops them before any feature is computed."""
    from kit.train.provenance import record_seen_subjects

    task = {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion"}
    base = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "input_size": 16}
    kwargs = dict(test_fraction=3, val_size=1, regions={"tumor": BRATS21}, per_value=100, progress=False)
    seen = record_seen_subjects(tmp_path / "pre", "pool", [str(e["subject"]) for e in cohort.entries], cohort="tumor")
    with pytest.raises(ValueError, match=r"run_probes: task 'tumor_seg': init 'pre' saw study subjects in pretraining \(3 test, 1 validation, 1 labelled subjects"):
        run_probes({"tumor": cohort}, [task], {"pre": str(seen.with_name("checkpoint.pt"))}, [0], [1], base,
                   tmp_path / "probes.csv", **kwargs)
    with pytest.raises(ValueError, match="has no seen_subjects.json beside it"):
        run_probes({"tumor": cohort}, [task], {"pre": str(tmp_path / "none" / "checkpoint.pt")}, [0], [1], base,
                   tmp_path / "probes.csv", **kwargs)
    assert not (tmp_path / "probes.csv").exists()
