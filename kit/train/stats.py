"""Honest numbers for the label-efficiency study: means with confidence intervals, paired differences.

Every figure the notebooks report about "pretrained vs scratch" comes from here, with the number
of seeds it rests on and a 95 % interval, so a reader can tell a real effect from noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["mean_ci", "summarise", "paired_difference", "plot_label_efficiency"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of ``values`` (nan entries dropped).

    With one value the interval is (nan, nan): one seed says nothing about spread.

    Returns:
        (mean, low, high).

    Example:
        >>> m, lo, hi = mean_ci([0.5, 0.6, 0.7]); round(m, 2), lo < m < hi
        (0.6, True)
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half


def summarise(results: pd.DataFrame, metric: str, by: Sequence[str] = ("init", "task", "label_fraction")) -> pd.DataFrame:
    """Mean, 95 % CI and n of ``metric`` per group (the results table has one row per run).

    Example:
        >>> df = pd.DataFrame({"init": ["a"] * 3, "task": ["seg"] * 3, "label_fraction": [0.1] * 3, "dice": [.5, .6, .7]})
        >>> summarise(df, "dice").loc[0, "n"]
        3
    """
    rows = []
    for key, group in results.groupby(list(by), sort=True):
        mean, lo, hi = mean_ci(group[metric].tolist())
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "metric": metric,
                     "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(group[metric].notna().sum())})
    return pd.DataFrame(rows)


def paired_difference(
    results: pd.DataFrame, metric: str, treatment: str, control: str = "scratch",
    pair_on: Sequence[str] = ("task", "label_fraction", "seed"), by: Sequence[str] = ("task", "label_fraction"),
) -> pd.DataFrame:
    """Treatment minus control of ``metric``, paired on the same split and seed, with a 95 % CI.

    Pairing removes the split-to-split variation that both arms share (same training subjects,
    same test set), which is most of the noise at small label fractions.

    Returns:
        One row per ``by`` group: mean difference, CI, n pairs, and the paired t-test p-value.

    Example:
        >>> df = pd.DataFrame({"init": ["scratch", "s12"] * 3, "task": ["seg"] * 6, "label_fraction": [.1] * 6,
        ...                    "seed": [0, 0, 1, 1, 2, 2], "dice": [.5, .6, .4, .55, .45, .5]})
        >>> round(paired_difference(df, "dice", "s12").loc[0, "mean_diff"], 3)
        0.1
    """
    keys = list(pair_on)
    a = results[results.init == treatment].set_index(keys)[metric]
    b = results[results.init == control].set_index(keys)[metric]
    paired = pd.concat({"treatment": a, "control": b}, axis=1).dropna().reset_index()
    paired["diff"] = paired.treatment - paired.control
    rows = []
    for key, group in paired.groupby(list(by), sort=True):
        mean, lo, hi = mean_ci(group["diff"].tolist())
        p = float(stats.ttest_1samp(group["diff"], 0.0).pvalue) if len(group) > 1 and group["diff"].std() > 0 else float("nan")
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "metric": metric,
                     "treatment": treatment, "control": control, "mean_diff": mean, "ci_low": lo, "ci_high": hi,
                     "n_pairs": len(group), "p_value": p})
    return pd.DataFrame(rows)


def plot_label_efficiency(summary: pd.DataFrame, title: str = "", ax=None):
    """Metric against label fraction (log axis), one line per initialisation, CI as a band.

    Args:
        summary: output of :func:`summarise` for one task and metric.

    Example:
        >>> s = pd.DataFrame({"init": ["scratch"] * 2, "label_fraction": [.1, 1.], "mean": [.4, .7],
        ...                   "ci_low": [.3, .6], "ci_high": [.5, .8], "metric": ["dice"] * 2})
        >>> plot_label_efficiency(s).axes.get_xscale()
        'log'
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    for init, group in summary.groupby("init", sort=False):
        group = group.sort_values("label_fraction")
        x = group.label_fraction.to_numpy(dtype=float) * 100
        line = ax.plot(x, group["mean"], marker="o", label=str(init))[0]
        ax.fill_between(x, group.ci_low, group.ci_high, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training subjects (%)")
    ax.set_ylabel(str(summary["metric"].iloc[0]) if len(summary) else "metric")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
