"""Study statistics: CI against scipy by hand, pairing, summaries."""

import numpy as np
import pandas as pd
import pytest

from kit.train.stats import mean_ci, paired_difference, summarise


def test_mean_ci_matches_textbook_t_interval():
    x = [0.61, 0.55, 0.72, 0.66]
    m, lo, hi = mean_ci(x)
    sd = np.std(x, ddof=1)
    half = 3.182446305284263 * sd / 2  # t(0.975, df=3) * s / sqrt(4)
    assert m == pytest.approx(np.mean(x)) and lo == pytest.approx(m - half) and hi == pytest.approx(m + half)
    assert np.isnan(mean_ci([0.5])[1]) and np.isnan(mean_ci([])[0])
    assert mean_ci([0.5, float("nan"), 0.7])[0] == pytest.approx(0.6)


def test_paired_difference_removes_shared_split_noise():
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(6):
        split_effect = rng.normal(0, 0.2)  # large, shared by both arms
        rows.append({"init": "scratch", "task": "seg", "label_fraction": 0.05, "seed": seed, "dice": 0.4 + split_effect})
        rows.append({"init": "stage12", "task": "seg", "label_fraction": 0.05, "seed": seed, "dice": 0.45 + split_effect + rng.normal(0, 0.005)})
    df = pd.DataFrame(rows)
    diff = paired_difference(df, "dice", "stage12").iloc[0]
    assert diff.mean_diff == pytest.approx(0.05, abs=0.01)
    assert diff.ci_low > 0 and diff.n_pairs == 6 and diff.p_value < 0.001
    # unpaired intervals overlap heavily: the pairing is what makes the effect visible
    s = summarise(df, "dice").set_index("init")
    assert s.loc["scratch", "ci_high"] > s.loc["stage12", "ci_low"]


def test_summarise_groups():
    df = pd.DataFrame({"init": ["a", "a", "b"], "task": ["t"] * 3, "label_fraction": [0.1, 0.1, 0.1], "auc": [0.6, 0.8, 0.9]})
    s = summarise(df, "auc")
    assert list(s.init) == ["a", "b"] and list(s.n) == [2, 1] and s.loc[0, "mean"] == pytest.approx(0.7)
