"""Study statistics: CI against scipy by hand, pairing, summaries."""

import numpy as np
import pandas as pd
import pytest

from kit.finetune.stats import mean_ci, paired_difference, summarise


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


def test_intervals_are_clipped_to_the_metric_range():
    from kit.finetune.stats import metric_range

    df = pd.DataFrame({"init": ["a"] * 3, "task": ["t"] * 3, "label_fraction": [1.0] * 3, "seed": [0, 1, 2],
                       "auc": [1.0, 0.98, 0.6], "dice_mean": [0.05, 0.0, 0.3], "hd95_mean": [1.0, 2.0, 30.0]})
    auc = summarise(df, "auc").iloc[0]
    assert auc.ci_high == 1.0 and auc.ci_low < auc["mean"] < 1.0  # the raw t-interval runs past 1
    assert summarise(df, "dice_mean").iloc[0].ci_low == 0.0
    assert summarise(df, "hd95_mean").iloc[0].ci_low == 0.0 and metric_range("hd95_mean") == (0.0, float("inf"))
    # differences of a [0, 1] metric are clipped to [-1, 1]
    pairs = pd.DataFrame({"init": ["s", "p"] * 3, "task": ["t"] * 6, "label_fraction": [1.0] * 6,
                          "seed": [0, 0, 1, 1, 2, 2], "auc": [0.0, 1.0, 0.1, 1.0, 0.9, 0.95]})
    d = paired_difference(pairs, "auc", "p", "s").iloc[0]
    assert d.ci_high == 1.0 and -1.0 <= d.ci_low < d.mean_diff


def test_minimal_detectable_difference_matches_the_power_definition():
    from scipy import stats

    from kit.finetune.stats import minimal_detectable_difference

    sd, n = 0.04, 5
    mdd = minimal_detectable_difference(sd, n)
    crit, ncp = stats.t.ppf(0.975, n - 1), mdd * np.sqrt(n) / sd
    power = stats.nct.sf(crit, n - 1, ncp) + stats.nct.cdf(-crit, n - 1, ncp)
    assert power == pytest.approx(0.8, abs=1e-6)
    # large n: the normal approximation (z_.975 + z_.8) * sd / sqrt(n)
    assert minimal_detectable_difference(1.0, 5000) == pytest.approx(2.8016 / np.sqrt(5000), rel=1e-3)
    assert minimal_detectable_difference(sd, 20) < mdd  # more pairs, smaller detectable effect
    assert np.isnan(minimal_detectable_difference(sd, 1)) and minimal_detectable_difference(0.0, 5) == 0.0
    # paired_difference reports it per group from the observed SD of the differences
    rows = [{"init": i, "task": "t", "label_fraction": 0.1, "seed": s, "dice": v}
            for s, (a, b) in enumerate([(0.4, 0.5), (0.5, 0.55), (0.3, 0.45), (0.45, 0.5), (0.35, 0.5)])
            for i, v in (("scratch", a), ("p", b))]
    d = paired_difference(pd.DataFrame(rows), "dice", "p").iloc[0]
    diffs = np.array([0.1, 0.05, 0.15, 0.05, 0.15])
    assert d.sd_diff == pytest.approx(diffs.std(ddof=1)) and d.mdd == pytest.approx(minimal_detectable_difference(d.sd_diff, 5))


def test_catch_up_point_is_the_first_fraction_inside_the_pretrained_interval():
    from kit.finetune.stats import catch_up_point

    s = pd.DataFrame({"init": ["scratch", "p"] * 4, "label_fraction": [0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 1.0, 1.0],
                      "mean": [0.30, 0.55, 0.50, 0.60, 0.62, 0.63, 0.70, 0.66],
                      "ci_low": [0.2, 0.50, 0.45, 0.55, 0.6, 0.61, 0.65, 0.6],
                      "ci_high": [0.4, 0.60, 0.55, 0.65, 0.64, 0.65, 0.75, 0.7], "n_train": [1, 1, 2, 2, 4, 4, 20, 20]})
    point = catch_up_point(s, "p")
    assert point["n_train"] == 4 and point["label_fraction"] == 0.2 and point["control_mean"] == 0.62
    never = s.assign(mean=np.where(s.init == "scratch", 0.1, s["mean"]))
    assert catch_up_point(never, "p") is None
