"""Honest numbers for the label-efficiency study: means with confidence intervals, paired differences.

Every figure the notebooks report about "pretrained vs scratch" comes from here, with the number
of seeds it rests on and a 95 % interval, so a reader can tell a real effect from noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["mean_ci", "metric_range", "summarise", "paired_difference", "minimal_detectable_difference",
           "catch_up_point", "plot_label_efficiency", "comparison_table",
           "plot_paired_differences", "paired_bootstrap", "bootstrap_statistics", "subject_metric"]

# Metrics bounded by construction: a t-interval past these limits is clipped (the mean never is).
_UNIT_RANGE_PREFIXES = ("dice", "auc", "accuracy", "sensitivity", "specificity", "mass_in", "pointing")


def metric_range(metric: str) -> tuple[float, float]:
    """The range a metric can take: (0, 1) for Dice, AUC, accuracy, sensitivity, specificity and
    saliency mass/pointing; (0, inf) for distances (``hd95*``, mm); (-inf, inf) otherwise.

    Example:
        >>> metric_range("dice_mean"), metric_range("hd95_TC"), metric_range("loss")
        ((0.0, 1.0), (0.0, inf), (-inf, inf))
    """
    if metric.startswith(_UNIT_RANGE_PREFIXES):
        return 0.0, 1.0
    if metric.startswith("hd"):
        return 0.0, float("inf")
    return float("-inf"), float("inf")


def mean_ci(
    values: Sequence[float], confidence: float = 0.95, bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of ``values`` (nan entries dropped).

    With one value the interval is (nan, nan): one seed says nothing about spread.

    Args:
        bounds: the metric's range (see :func:`metric_range`); the interval is clipped to it, so
            a Dice interval never runs past [0, 1]. The mean is never changed.

    Returns:
        (mean, low, high).

    Example:
        >>> m, lo, hi = mean_ci([0.5, 0.6, 0.7]); round(m, 2), lo < m < hi
        (0.6, True)
        >>> mean_ci([0.9, 1.0, 0.5], bounds=(0, 1))[2]
        1.0
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = float(np.clip(low, *bounds)), float(np.clip(high, *bounds))
    return mean, low, high


def _with_protocol(results: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """``keys`` plus ``protocol`` when the table has that column (rows from before it: 'full')."""
    keys = list(keys)
    if "protocol" in results.columns and "protocol" not in keys:
        results = results.assign(protocol=results["protocol"].fillna("full"))
        keys.append("protocol")
    return results, keys


def summarise(results: pd.DataFrame, metric: str, by: Sequence[str] = ("init", "task", "label_fraction")) -> pd.DataFrame:
    """Mean, 95 % CI and n of ``metric`` per group (the results table has one row per run).

    When the results carry a ``protocol`` column (kit.finetune.study), it is one more group key.

    The interval is clipped to the metric's range (:func:`metric_range`). When the results carry
    ``n_train`` (labelled subjects), its median per group is kept, for the figures' x-axis.

    Example:
        >>> df = pd.DataFrame({"init": ["a"] * 3, "task": ["seg"] * 3, "label_fraction": [0.1] * 3, "dice": [.5, .6, .7]})
        >>> int(summarise(df, "dice").loc[0, "n"])
        3
    """
    rows = []
    results, by = _with_protocol(results, by)
    for key, group in results.groupby(list(by), sort=True):
        mean, lo, hi = mean_ci(group[metric].tolist(), bounds=metric_range(metric))
        row = {**dict(zip(by, key if isinstance(key, tuple) else (key,))), "metric": metric,
               "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(group[metric].notna().sum())}
        if "n_train" in group and "n_train" not in by:
            row["n_train"] = int(np.median(group["n_train"]))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(
    results: pd.DataFrame, metric: str, treatment: str, control: str = "scratch",
    pair_on: Sequence[str] = ("task", "label_fraction", "seed"), by: Sequence[str] = ("task", "label_fraction"),
) -> pd.DataFrame:
    """Treatment minus control of ``metric``, paired on the same split and seed, with a 95 % CI.

    Pairing removes the split-to-split variation that both arms share (same training subjects,
    same test set), which is most of the noise at small label fractions. With a ``protocol``
    column, runs pair within a protocol and it is one more group key.

    Returns:
        One row per ``by`` group: mean difference, CI, n pairs, the paired t-test p-value, the SD of
        the differences and the minimal detectable difference at this n
        (:func:`minimal_detectable_difference`, 80 % power, two-sided alpha 0.05).

    Example:
        >>> df = pd.DataFrame({"init": ["scratch", "s12"] * 3, "task": ["seg"] * 6, "label_fraction": [.1] * 6,
        ...                    "seed": [0, 0, 1, 1, 2, 2], "dice": [.5, .6, .4, .55, .45, .5]})
        >>> round(float(paired_difference(df, "dice", "s12").loc[0, "mean_diff"]), 3)
        0.1
    """
    results, keys = _with_protocol(results, pair_on)
    _, by = _with_protocol(results, by)
    a = results[results.init == treatment].set_index(keys)[metric]
    b = results[results.init == control].set_index(keys)[metric]
    paired = pd.concat({"treatment": a, "control": b}, axis=1).dropna().reset_index()
    paired["diff"] = paired.treatment - paired.control
    rows = []
    for key, group in paired.groupby(list(by), sort=True):
        low, high = metric_range(metric)
        # a difference of a metric bounded in [low, high] lies in [low - high, high - low]
        mean, lo, hi = mean_ci(group["diff"].tolist(), bounds=(low - high, high - low))
        p = float(stats.ttest_1samp(group["diff"], 0.0).pvalue) if len(group) > 1 and group["diff"].std() > 0 else float("nan")
        sd = float(group["diff"].std(ddof=1)) if len(group) > 1 else float("nan")
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "metric": metric,
                     "treatment": treatment, "control": control, "mean_diff": mean, "ci_low": lo, "ci_high": hi,
                     "n_pairs": len(group), "p_value": p, "sd_diff": sd,
                     "mdd": minimal_detectable_difference(sd, len(group))})
    return pd.DataFrame(rows)


def comparison_table(results: pd.DataFrame, metric: str, readout: str, control: str = "scratch",
                     per_subject: pd.DataFrame | None = None, n_boot: int = 2000) -> pd.DataFrame:
    """Every initialisation against ``control``: paired differences per task and label count.

    The objectives x label-counts table of a comparison: :func:`paired_difference` for each init in
    ``results`` other than ``control``, with the init's objective (the part before ``:``), its mean,
    the median number of labelled subjects, and ``readout`` (e.g. ``'linear probe'``, ``'fine-tune'``).
    With ``per_subject`` (the study's ``per_subject.csv``), the :func:`paired_bootstrap` interval
    over seeds and test subjects is added as ``boot_ci_low``, ``boot_ci_high`` (and ``boot_n_subjects``)
    beside the t-interval over seeds.

    Example:
        >>> df = pd.DataFrame({"init": ["scratch", "mim:stage1+2"] * 2, "task": ["seg"] * 4, "label_fraction": [.1] * 4,
        ...                    "seed": [0, 0, 1, 1], "n_train": [1] * 4, "dice": [.5, .6, .4, .6]})
        >>> row = comparison_table(df, "dice", "probe").iloc[0]
        >>> row.objective, int(row.n_train), round(float(row.mean_diff), 2), int(row.n_pairs)
        ('mim', 1, 0.15, 2)
    """
    parts = []
    for init in [i for i in dict.fromkeys(results.init) if i != control]:
        diff = paired_difference(results, metric, init, control)
        if not len(diff):
            continue
        rows, by = _with_protocol(results[results.init == init], ["task", "label_fraction"])
        means = rows.groupby(by)[metric].mean().rename("treatment_mean")
        diff = diff.join(means, on=by)
        if "n_train" in rows:
            diff = diff.join(rows.groupby(by)["n_train"].median().astype(int), on=by)
        if per_subject is not None:
            boot = paired_bootstrap(per_subject, metric, init, control, n_boot=n_boot)
            if len(boot):
                boot = boot.set_index(by)[["ci_low", "ci_high", "n_subjects"]].add_prefix("boot_")
                diff = diff.join(boot, on=by)
        diff.insert(0, "objective", init.split(":")[0] if ":" in init else "swin_trio")
        diff.insert(0, "readout", readout)
        parts.append(diff)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def subject_metric(per_subject: pd.DataFrame, metric: str) -> pd.Series:
    """A metric per test subject; ``dice_<R>_present`` is ``dice_<R>`` where the reference has R and nan
    elsewhere (the empty-reference rule, :func:`kit.finetune.evaluate.empty_reference_summary`).

    Example:
        >>> t = pd.DataFrame({"dice_ET": [1.0, 0.4], "ref_voxels_ET": [0, 9]})
        >>> subject_metric(t, "dice_ET_present").tolist()
        [nan, 0.4]
    """
    if metric in per_subject.columns:
        return per_subject[metric].astype(float)
    if metric.startswith("dice_") and metric.endswith("_present"):
        region = metric[len("dice_"):-len("_present")]
        return per_subject[f"dice_{region}"].astype(float).where(per_subject[f"ref_voxels_{region}"] > 0)
    raise KeyError(f"subject_metric: the per-subject table has no {metric!r} (nor what it is computed from)")


def bootstrap_statistics(diff: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of the mean difference of a (seeds, subjects) matrix, resampling seeds and,
    within each drawn seed, subjects (a two-stage, nested bootstrap).

    One replicate draws ``S`` seeds with replacement, then for each drawn seed ``J`` subjects with
    replacement; its value is the mean over the drawn seeds of the mean over their drawn subjects
    (nan entries, e.g. subjects the empty-reference rule leaves out, are skipped). The draws come
    from ``numpy.random.default_rng(seed)``: first the ``(n_boot, S)`` seed indices, then the
    ``(n_boot, S, J)`` subject indices.

    Args:
        diff: (S, J) treatment minus control per seed and test subject (paired: the same seed and subject).
        n_boot: replicates.

    Returns:
        (n_boot,) replicate values.

    Example:
        >>> d = np.array([[0.1, 0.3], [0.2, 0.2]])
        >>> b = bootstrap_statistics(d, 4000)
        >>> b.shape, round(float(b.mean()), 2), float(b.min()) >= 0.1, float(b.max()) <= 0.3
        ((4000,), 0.2, True, True)
    """
    diff = np.asarray(diff, dtype=float)
    n_seeds, n_subjects = diff.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    subjects = rng.integers(0, n_subjects, size=(n_boot, n_seeds, n_subjects))
    drawn = diff[seeds[:, :, None], subjects]  # (n_boot, S, J)
    import warnings

    with warnings.catch_warnings():  # a draw of only nan subjects for one seed: that seed is skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmean(drawn, axis=2), axis=1)


def paired_bootstrap(
    per_subject: pd.DataFrame, metric: str, treatment: str, control: str = "scratch",
    by: Sequence[str] = ("task", "label_fraction"), n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
) -> pd.DataFrame:
    """Treatment minus control of ``metric`` with a percentile interval from a paired, two-stage bootstrap.

    The t-interval of :func:`paired_difference` treats the seeds as the only source of noise; with
    a fixed test set of a few subjects, the choice of those subjects is a second one, which it does
    not see. Here each replicate resamples the seeds, and the test subjects within each drawn seed
    (:func:`bootstrap_statistics`), on the per-subject differences: both inits are scored on the
    same seed and subject, so the pairing is kept. The percentile interval is clipped to the range
    a difference of the metric can take. With one seed the seed stage resamples nothing, so the
    interval is over subjects only (``n_seeds`` says so).

    Args:
        per_subject: the study's ``per_subject.csv`` (``init``, ``seed``, ``subject``, ``by`` columns
            and ``metric``, or what :func:`subject_metric` computes it from).
        metric: e.g. ``'dice_mean'``, ``'dice_TC_WT'``, ``'dice_ET_present'``.
        n_boot, confidence, seed: replicates, interval level, and the bootstrap's RNG seed.

    Returns:
        One row per ``by`` group (and ``protocol`` when present): ``mean_diff`` (mean over seeds of
        the mean over subjects), ``ci_low``, ``ci_high``, ``n_seeds``, ``n_subjects``, ``n_boot``.

    Example:
        >>> rows = [{"init": i, "task": "seg", "label_fraction": 1.0, "seed": s, "subject": j,
        ...          "dice_mean": 0.5 + 0.1 * (i == "p") + 0.02 * s + 0.01 * j}
        ...         for i in ("scratch", "p") for s in range(3) for j in range(4)]
        >>> out = paired_bootstrap(pd.DataFrame(rows), "dice_mean", "p")
        >>> round(float(out.mean_diff[0]), 3), round(float(out.ci_low[0]), 3), round(float(out.ci_high[0]), 3)
        (0.1, 0.1, 0.1)
    """
    table = per_subject.assign(_value=subject_metric(per_subject, metric))
    table, by = _with_protocol(table, by)
    keys = [*by, "seed", "subject"]
    a = table[table.init == treatment].set_index(keys)["_value"]
    b = table[table.init == control].set_index(keys)["_value"]
    paired = pd.concat({"treatment": a, "control": b}, axis=1).dropna(how="any").reset_index()
    paired["diff"] = paired.treatment - paired.control
    low, high = metric_range(metric)
    rows = []
    for key, group in paired.groupby(by, sort=True):
        matrix = group.pivot(index="seed", columns="subject", values="diff").to_numpy(dtype=float)
        point = float(np.nanmean(np.nanmean(matrix, axis=1)))
        replicates = bootstrap_statistics(matrix, int(n_boot), seed)
        alpha = (1 - confidence) / 2
        lo, hi = (float(v) for v in np.nanquantile(replicates, [alpha, 1 - alpha]))
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "metric": metric,
                     "treatment": treatment, "control": control, "mean_diff": point,
                     "ci_low": float(np.clip(lo, low - high, high - low)), "ci_high": float(np.clip(hi, low - high, high - low)),
                     "n_seeds": int(matrix.shape[0]), "n_subjects": int(matrix.shape[1]), "n_boot": int(n_boot)})
    return pd.DataFrame(rows)


def minimal_detectable_difference(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test on ``n`` pairs detects with ``power``.

    Solves ``P(|T| > t_{1-alpha/2, n-1}) = power`` for ``T`` noncentral-t with ``n - 1`` degrees of
    freedom and noncentrality ``delta * sqrt(n) / sd_diff`` (scipy.stats.nct), from the observed SD
    of the paired differences. With many pairs it tends to the textbook
    ``(z_{1-alpha/2} + z_{power}) * sd / sqrt(n)``; with few it is larger (the t tails).
    An observed difference below it is not evidence of "no effect": the study could not see it.

    Returns:
        The difference in the metric's units; nan for fewer than 2 pairs or an undefined SD.

    Example:
        >>> round(minimal_detectable_difference(0.05, 5), 3)
        0.084
        >>> round(minimal_detectable_difference(1.0, 2000), 3)   # ~ (1.96 + 0.84) / sqrt(2000)
        0.063
    """
    from scipy.optimize import brentq

    if n < 2 or not np.isfinite(sd_diff):
        return float("nan")
    if sd_diff == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        ncp = delta * np.sqrt(n) / sd_diff
        achieved = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
        return (1.0 if not np.isfinite(achieved) else achieved) - power  # nan: far in the tail, power ~ 1

    high = sd_diff * (crit + stats.t.ppf(power, df) + 3) / np.sqrt(n)
    return float(brentq(shortfall, 0.0, high, xtol=1e-10 * sd_diff))


def catch_up_point(summary: pd.DataFrame, pretrained: str, control: str = "scratch") -> dict | None:
    """The smallest label fraction at which ``control``'s mean lies within (or above) the 95 % CI of
    ``pretrained`` at that fraction: from there on, labels have made up for pretraining.

    Args:
        summary: :func:`summarise` output for one task and metric (``mean``, ``ci_low``, ``ci_high``,
            optionally ``n_train``).

    Returns:
        ``{"label_fraction", "n_train", "control_mean", "pretrained_mean", "ci_low", "ci_high"}``, or
        None when scratch never catches up within the fractions studied (or no fraction has both,
        with an interval: a single seed has none).

    Example:
        >>> s = pd.DataFrame({"init": ["scratch", "p"] * 3, "label_fraction": [.1, .1, .5, .5, 1, 1],
        ...                   "mean": [.3, .6, .55, .65, .7, .7], "ci_low": [.2, .5, .5, .6, .6, .65],
        ...                   "ci_high": [.4, .7, .6, .7, .8, .75], "n_train": [1, 1, 5, 5, 10, 10]})
        >>> catch_up_point(s, "p")["n_train"]
        10
    """
    a = summary[summary.init == pretrained].set_index("label_fraction")
    b = summary[summary.init == control].set_index("label_fraction")
    for fraction in sorted(set(a.index) & set(b.index)):
        low = a.loc[fraction, "ci_low"]
        if not np.isfinite(low):  # one seed: no interval to be within, so nothing to conclude here
            continue
        if b.loc[fraction, "mean"] >= low:
            return {"label_fraction": float(fraction),
                    "n_train": int(a.loc[fraction, "n_train"]) if "n_train" in a else None,
                    "control_mean": float(b.loc[fraction, "mean"]), "pretrained_mean": float(a.loc[fraction, "mean"]),
                    "ci_low": float(a.loc[fraction, "ci_low"]), "ci_high": float(a.loc[fraction, "ci_high"])}
    return None


def plot_label_efficiency(summary: pd.DataFrame, title: str = "", ax=None):
    """Metric against label fraction (log axis), one line per initialisation, CI as a band.

    The x ticks are the fractions in the study, labelled "N subjects" (with the fraction under it)
    when the summary has ``n_train``; the y axis spans the metric's range where it is bounded. An
    init measured at a single label count is drawn as points with error bars, never a line or a
    band; a mean over one run (``n == 1``: no interval) is an open marker, named in the legend;
    AUC plots carry the chance level (0.5) as a dotted line.

    Args:
        summary: output of :func:`summarise` for one task and metric.

    Example:
        >>> s = pd.DataFrame({"init": ["scratch"] * 2, "label_fraction": [.1, 1.], "mean": [.4, .7],
        ...                   "ci_low": [.3, .6], "ci_high": [.5, .8], "metric": ["dice"] * 2, "n_train": [2, 19]})
        >>> ax = plot_label_efficiency(s)
        >>> ax.get_xscale(), [t.get_text() for t in ax.get_xticklabels()]
        ('log', ['2 subjects\\n(10%)', '19 subjects\\n(100%)'])
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    metric = str(summary["metric"].iloc[0]) if len(summary) else "metric"
    low, high = metric_range(metric)
    single_run = False
    for init, group in summary.groupby("init", sort=False):
        group = group.sort_values("label_fraction")
        x = group.label_fraction.to_numpy(dtype=float) * 100
        mean = group["mean"].to_numpy(dtype=float)
        band_low = np.clip(group.ci_low.to_numpy(dtype=float), low, high)
        band_high = np.clip(group.ci_high.to_numpy(dtype=float), low, high)
        alone = (group["n"].to_numpy() <= 1) if "n" in group else np.zeros(len(group), bool)
        single_run |= bool(alone.any())
        if len(group) > 1:  # a curve only through two label counts or more
            line = ax.plot(x, mean, label=str(init))[0]
            ax.fill_between(x, band_low, band_high, color=line.get_color(), alpha=0.2)
            color = line.get_color()
        else:
            color = ax.plot([], [], marker="o", linestyle="none", label=str(init))[0].get_color()  # legend entry
            err = np.nan_to_num(np.vstack([mean - band_low, band_high - mean]).clip(min=0))
            ax.errorbar(x, mean, yerr=err, fmt="none", capsize=4, color=color)
        ax.plot(x[~alone], mean[~alone], marker="o", linestyle="none", color=color)
        ax.plot(x[alone], mean[alone], marker="o", linestyle="none", markerfacecolor="white", color=color)
    if single_run:
        ax.plot([], [], marker="o", linestyle="none", markerfacecolor="white", color="grey", label="one run (no interval)")
    if metric.startswith("auc"):
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (AUC 0.5)")
    ax.set_xscale("log")
    ticks = summary.drop_duplicates("label_fraction").sort_values("label_fraction")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    labels = [(f"{int(n)} subject{'s' if int(n) != 1 else ''}\n({f:.0%})" if pd.notna(n) else f"{f:.0%}")
              for f, n in zip(ticks.label_fraction, ticks.get("n_train", pd.Series([None] * len(ticks))))]
    ax.set_xticks(ticks.label_fraction.to_numpy(dtype=float) * 100, labels)
    ax.set_xlabel("labelled training subjects (share of the training pool)")
    ax.set_ylabel(metric)
    if (low, high) == (0.0, 1.0):
        ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_paired_differences(table: pd.DataFrame, title: str = "", ax=None):
    """Forest plot of :func:`comparison_table` rows: each init's paired difference against the control,
    with its 95 % interval, one row per init (and label count when the table has several).

    A bar crossing the dashed zero line is a difference the study cannot tell from none; the
    interval's width is the study's resolution.

    Example:
        >>> df = pd.DataFrame({"init": ["scratch", "mim:stage1+2"] * 2, "task": ["seg"] * 4, "label_fraction": [.1] * 4,
        ...                    "seed": [0, 0, 1, 1], "n_train": [1] * 4, "dice": [.5, .6, .4, .6]})
        >>> ax = plot_paired_differences(comparison_table(df, "dice", "probe"))
        >>> ax.get_xlabel()
        'dice difference vs scratch (95% CI)'
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.45 * max(len(table), 2) + 1.2), constrained_layout=True)
    several = table["label_fraction"].nunique() > 1 if len(table) else False
    def count(r) -> str:
        if "n_train" in table and pd.notna(r.n_train):
            return f"{int(r.n_train)} subject{'s' if int(r.n_train) != 1 else ''}"
        return f"{r.label_fraction:.0%} of the labels"

    labels = [f"{r.treatment}" + (f", {count(r)}" if several else "") for r in table.itertuples()]
    y = np.arange(len(table))[::-1]
    mean = table["mean_diff"].to_numpy(float)
    low = np.where(np.isfinite(table["ci_low"]), mean - table["ci_low"], 0.0)
    high = np.where(np.isfinite(table["ci_high"]), table["ci_high"] - mean, 0.0)
    ax.errorbar(mean, y, xerr=[low, high], fmt="o", capsize=4, color="tab:blue")
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels)
    metric = table["metric"].iloc[0] if len(table) else "metric"
    control = table["control"].iloc[0] if len(table) else "control"
    ax.set_xlabel(f"{metric} difference vs {control} (95% CI)")
    ax.set_title(title)
    return ax
