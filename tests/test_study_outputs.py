"""What the study writes for its statistics: per-subject test rows, the empty-ET count, the protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kit.data.cache import build_cache
from kit.finetune.study import run_study

from test_finetune import BRATS21, write_subject

BASE = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "steps": 2, "batch_size": 1, "crop": 16,
        "val_every": 1, "inference": "whole", "augment": False}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Eight tumours, three of them without enhancing tumour (no label 4: et_value=2 paints oedema there)."""
    folder = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(3)
    written = [write_subject(folder, f"s{i}", rng, et_value=2 if i % 3 == 0 else 4) for i in range(8)]
    entries = [{"subject": f"s{i}", "image": files, "label": label} for i, (files, label) in enumerate(written)]
    return build_cache(entries, ["flair", "t1ce"], folder / "cache")


def test_per_subject_rows_and_the_empty_et_count(cohort, tmp_path):
    spec = {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion", "inits": ["scratch"]}
    kw = dict(test_fraction=4, val_size=1, counts=[1], device="cpu", progress=False, regions={"tumor": BRATS21},
              leakage="flag")
    out = tmp_path / "results.csv"
    results = run_study({"tumor": cohort}, [spec], {"scratch": "scratch"}, None, [0], BASE, out, **kw)
    row = results.iloc[0]
    subjects = pd.read_csv(tmp_path / "per_subject.csv")
    assert len(subjects) == row.n_test == 4
    assert {"init", "protocol", "task", "label_fraction", "n_train", "seed", "subject", "dice_TC", "dice_WT",
            "dice_ET", "dice_TC_WT", "ref_voxels_ET"} <= set(subjects.columns)
    assert set(subjects.protocol) == {"full"} and row.protocol == "full"
    # the row's numbers are the per-subject rows' summaries, and the empty-ET rule's reach is counted
    absent = subjects.ref_voxels_ET == 0
    truth = [int(not (np.asarray(cohort.labels()[int(s[1:])]) == 4).any()) for s in subjects.subject]
    assert list(absent.astype(int)) == truth and row.n_ET_absent == sum(truth) >= 1
    assert row.dice_WT == pytest.approx(subjects.dice_WT.mean())
    if (~absent).any():
        assert row.dice_ET_present == pytest.approx(subjects.dice_ET[~absent].mean())
    assert np.isfinite(row.val_first) and row.val_first_step == 1
    # a changed recipe reruns the run: its subjects are replaced, never duplicated
    again = run_study({"tumor": cohort}, [{**spec, "config": {"steps": 3}}], {"scratch": "scratch"}, None, [0], BASE,
                      out, **kw)
    assert list(again.steps_run) == [3]
    subjects = pd.read_csv(tmp_path / "per_subject.csv")
    assert len(subjects) == 4 and subjects.settings_id.nunique() == 1
    assert subjects.settings_id.iloc[0] == again.settings_id.iloc[0]
