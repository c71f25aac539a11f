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


def _per_subject(diff_by_seed_subject, base=0.5):
    """A per_subject table of two inits whose differences are ``diff[s, j]``, with noise both share."""
    rng = np.random.default_rng(7)
    diff = np.asarray(diff_by_seed_subject, float)
    rows = []
    for s in range(diff.shape[0]):
        for j in range(diff.shape[1]):
            shared = base + rng.normal(0, 0.1)  # the split and subject difficulty both inits see
            rows.append({"init": "scratch", "task": "seg", "label_fraction": 0.1, "seed": s, "subject": f"x{j}",
                         "dice_mean": shared})
            rows.append({"init": "p", "task": "seg", "label_fraction": 0.1, "seed": s, "subject": f"x{j}",
                         "dice_mean": shared + diff[s, j]})
    return pd.DataFrame(rows)


def test_bootstrap_replicates_equal_a_slow_explicit_loop_with_the_same_rng():
    from kit.finetune.stats import bootstrap_statistics

    diff = np.array([[0.1, 0.3, np.nan, 0.0], [0.2, -0.1, 0.05, 0.4], [0.3, 0.3, 0.1, np.nan]])
    fast = bootstrap_statistics(diff, 300, seed=5)
    rng = np.random.default_rng(5)
    seeds = rng.integers(0, 3, size=(300, 3))
    subjects = rng.integers(0, 4, size=(300, 3, 4))
    slow = []
    for b in range(300):
        per_seed = []
        for k in range(3):
            values = [diff[seeds[b, k], subjects[b, k, j]] for j in range(4)]
            values = [v for v in values if not np.isnan(v)]
            if values:
                per_seed.append(sum(values) / len(values))
        slow.append(sum(per_seed) / len(per_seed))
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_bootstrap_matches_exact_enumeration_of_a_tiny_case():
    """2 seeds x 3 subjects: every seed draw (2^2 = 4) and subject draw (3^3 = 27 per drawn seed)
    enumerated; the bootstrap's mean, variance and 2.5 / 97.5 % quantiles match the exact distribution."""
    import itertools

    from kit.finetune.stats import bootstrap_statistics, paired_bootstrap

    diff = np.array([[0.0, 0.1, 0.5], [0.2, 0.3, -0.2]])
    per_seed_draws = [[float(np.mean(diff[s, list(j)])) for j in itertools.product(range(3), repeat=3)] for s in range(2)]
    exact = np.array([(a + b) / 2 for s1, s2 in itertools.product(range(2), repeat=2)
                      for a in per_seed_draws[s1] for b in per_seed_draws[s2]])  # equally likely outcomes
    boot = bootstrap_statistics(diff, 40000, seed=1)
    assert boot.mean() == pytest.approx(exact.mean(), abs=0.003)
    assert boot.var() == pytest.approx(exact.var(), rel=0.04)
    table = paired_bootstrap(_per_subject(diff), "dice_mean", "p", n_boot=40000, seed=1)
    row = table.iloc[0]
    assert row.mean_diff == pytest.approx(diff.mean()) and (row.n_seeds, row.n_subjects) == (2, 3)
    assert row.ci_low == pytest.approx(np.quantile(exact, 0.025), abs=0.01)
    assert row.ci_high == pytest.approx(np.quantile(exact, 0.975), abs=0.01)


def test_paired_bootstrap_keeps_the_pairing_and_the_present_rule():
    from kit.finetune.stats import comparison_table, paired_bootstrap

    # a constant +0.05 under large shared noise: paired, the interval is exactly the difference
    table = _per_subject(np.full((3, 5), 0.05))
    row = paired_bootstrap(table, "dice_mean", "p", n_boot=500).iloc[0]
    assert row.ci_low == pytest.approx(0.05) and row.ci_high == pytest.approx(0.05)
    # dice_ET_present: subjects without ET in the reference leave the bootstrap
    et = table.assign(dice_ET=table.dice_mean, ref_voxels_ET=np.where(table.subject == "x0", 0, 10))
    assert paired_bootstrap(et, "dice_ET_present", "p", n_boot=200).iloc[0].n_subjects == 4
    # comparison.csv carries the bootstrap interval beside the t-interval
    results = table.groupby(["init", "task", "label_fraction", "seed"], as_index=False).dice_mean.mean()
    comp = comparison_table(results, "dice_mean", "fine-tune", per_subject=table, n_boot=200)
    assert {"boot_ci_low", "boot_ci_high", "boot_n_subjects"} <= set(comp.columns)
    assert comp.boot_ci_low.iloc[0] == pytest.approx(0.05)


def test_label_efficiency_figure_draws_points_marks_single_runs_and_chance():
    import matplotlib

    matplotlib.use("Agg")
    from kit.finetune.stats import plot_label_efficiency

    s = pd.DataFrame({"init": ["scratch", "scratch", "p"], "label_fraction": [0.1, 1.0, 1.0], "metric": ["auc"] * 3,
                      "mean": [0.6, 0.8, 0.9], "ci_low": [0.5, 0.7, np.nan], "ci_high": [0.7, 0.9, np.nan],
                      "n": [3, 3, 1], "n_train": [1, 10, 10]})
    ax = plot_label_efficiency(s)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert len(lines["scratch"].get_xdata()) == 2  # a curve through two label counts
    assert not any(len(ln.get_xdata()) > 1 and ln.get_color() == lines["p"].get_color() and ln.get_linestyle() != "None"
                   for ln in ax.get_lines() if ln.get_label() != "chance (AUC 0.5)")  # one count: points only
    hollow = [ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "white" and len(ln.get_xdata())]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [100.0]  # the n = 1 mean, marked apart
    assert "one run (no interval)" in lines and list(lines["chance (AUC 0.5)"].get_ydata()) == [0.5, 0.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 subject\n(10%)", "10 subjects\n(100%)"]
