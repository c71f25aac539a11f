"""Figures of results a reader can trust: integer subject counts, bounded axes, chance levels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_qc_volumes", "plot_localisation_bars"]


def plot_qc_volumes(qc: pd.DataFrame, cohort_column: str = "cohort"):
    """Histograms of intracranial volume and lesion volume per cohort, counts in whole subjects.

    Args:
        qc: output of :func:`kit.data.curate.volume_qc` with a cohort column; ``brain_volume_ml``
            is the nonzero (skull-stripped, intracranial) volume in mL, ``lesion_volume_ml`` the
            labelled volume in mL.

    Example:
        >>> qc = pd.DataFrame({"cohort": ["a", "a", "b"], "brain_volume_ml": [1400., 1500., 1450.],
        ...                    "lesion_volume_ml": [None, None, 20.]})
        >>> fig = plot_qc_volumes(qc)
        >>> fig.axes[0].get_ylabel(), all(float(t).is_integer() for t in fig.axes[0].get_yticks())
        ('subjects', True)
    """
    fig, (ax_vol, ax_les) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    for name, part in qc.groupby(cohort_column, sort=False):
        ax_vol.hist(part["brain_volume_ml"].dropna(), bins=10, alpha=0.6, label=str(name))
    ax_vol.set_xlabel("intracranial volume (nonzero voxels, mL)")
    lesions = qc.dropna(subset=["lesion_volume_ml"]) if "lesion_volume_ml" in qc else qc.iloc[:0]
    for name, part in lesions.groupby(cohort_column, sort=False):
        ax_les.hist(part["lesion_volume_ml"], bins=10, alpha=0.6, label=str(name))
    ax_les.set_xlabel("lesion volume (mL)")
    for ax in (ax_vol, ax_les):
        ax.set_ylabel("subjects")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def plot_localisation_bars(table: pd.DataFrame, chance: float, metric: str = "mass_in_lesion", ax=None):
    """Saliency localisation per method and init with bootstrap CIs and the random-map level.

    The y axis is scaled to the data (values near 0.01 stay visible) and never leaves [0, 1].

    Args:
        table: output of :func:`kit.explain.summarise_localisation` (``init``, ``method``,
            ``{metric}_mean``, ``{metric}_ci_low``, ``{metric}_ci_high``).
        chance: what a map without information scores (the lesion's share of the brain).

    Example:
        >>> t = pd.DataFrame({"init": ["scratch"] * 2, "method": ["gradcam", "occlusion"],
        ...                   "mass_in_lesion_mean": [.01, .02], "mass_in_lesion_ci_low": [.005, .01],
        ...                   "mass_in_lesion_ci_high": [.015, .03]})
        >>> ax = plot_localisation_bars(t, chance=0.03)
        >>> bool(ax.get_ylim()[1] < 0.1)
        True
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    methods = list(dict.fromkeys(table["method"]))
    inits = list(dict.fromkeys(table["init"]))
    width = 0.8 / max(len(inits), 1)
    top = chance if np.isfinite(chance) else 0.0
    for k, init in enumerate(inits):
        part = table[table.init == init].set_index("method").reindex(methods)
        x = np.arange(len(methods)) + k * width
        mean = part[f"{metric}_mean"].to_numpy(dtype=float)
        low = np.clip(part[f"{metric}_ci_low"].to_numpy(dtype=float), 0, 1)
        high = np.clip(part[f"{metric}_ci_high"].to_numpy(dtype=float), 0, 1)
        err = np.nan_to_num(np.vstack([mean - low, high - mean]).clip(min=0))
        ax.bar(x, mean, width, yerr=err, capsize=3, label=str(init))
        top = max(top, float(np.nanmax(np.concatenate([mean, high]))) if len(mean) else 0.0)
    if np.isfinite(chance):
        ax.axhline(chance, color="k", ls="--", lw=1, label=f"random map ({chance:.3f})")
    ax.set_xticks(np.arange(len(methods)) + width * (len(inits) - 1) / 2, methods, rotation=20)
    ax.set_ylabel(f"{metric.replace('_', ' ')} (fraction of positive saliency)")
    ax.set_ylim(0, min(1.0, max(top * 1.25, 1e-3)))
    ax.legend(fontsize=8)
    return ax
