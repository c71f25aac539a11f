"""Notebook 04-05's 2D path: which objectives take it, the profile's settings, the study's summary."""

import pandas as pd
import pytest

from kit.pipeline import cells_to_drop
from kit.finetune.slice_run import (UNCURATED, is_slice_objective, slice_inits, slice_study_settings, study_table,
                                 summarise_slice_study)


def test_objectives_declare_their_path():
    assert is_slice_objective("moco_v3") and not any(is_slice_objective(o) for o in ("swin_trio", "mim", None))
    assert cells_to_drop("moco_v3") == ("3d",) and cells_to_drop("cross_contrast") == ("2d",) == cells_to_drop(None)


@pytest.mark.parametrize("profile", ["smoke", "workshop", "study", "full"])
def test_every_profile_has_a_slice_study_on_its_2d_stage(profile):
    settings = slice_study_settings(profile, "moco_v3")
    assert settings["backbone"].endswith("_2d") and settings["slices"]["curated"] is True
    assert settings["counts"][-1] == "all" and len(settings["seeds"]) >= 2  # paired seeds, CIs
    assert settings["uncurated"] and set(settings["modes"]) <= {"probe", "finetune"}
    with pytest.raises(ValueError, match="spatial_dims 3"):
        slice_study_settings(profile, "swin_trio")


def test_summary_pairs_every_init_with_scratch_and_curated_with_uncurated():
    final = "moco_v3:stage1+2"
    inits = slice_inits("run", "moco_v3", "u.pt")
    assert list(inits) == ["scratch", final, f"{final} {UNCURATED}"]
    rows = []
    for seed in range(3):
        for fraction, n in ((0.2, 1), (1.0, 5)):
            for init, auc in (("scratch", 0.6), (final, 0.8), (f"{final} {UNCURATED}", 0.7)):
                rows.append({"init": init, "mode": "finetune", "fraction": fraction, "seed": seed,
                             "n_train_subjects": n, "auc": auc + 0.01 * seed + (0.1 if fraction == 1 else 0)})
    report = summarise_slice_study(study_table(pd.DataFrame(rows)), final)
    diffs = report["differences"].set_index(["treatment", "control", "label_fraction"]).mean_diff
    assert diffs[(final, "scratch", 0.2)] == pytest.approx(0.2) and diffs[(final, f"{final} {UNCURATED}", 1.0)] == pytest.approx(0.1)
    assert "with 1 labelled subject(s): +0.200" in report["verdict"] and "3 paired seeds" in report["verdict"]
    assert "not reached" in report["catch_up"]
    assert set(report["summary"].init) == set(inits) and (report["summary"].n == 3).all()
