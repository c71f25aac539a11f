"""Does the saliency sit on the lesion? Mass, pointing game and their chance levels.

Conventions (the same in every function):

- Saliency maps are ``(X, Y, Z)`` arrays, higher = more important. Only POSITIVE saliency is
  counted as mass (negatives, e.g. occlusion regions whose removal raises the score, are clipped
  to 0).
- Masks are ``(X, Y, Z)`` bool arrays on the same grid. A 2D slice classifier's maps and masks are
  ``(H, W)`` arrays and go through the same functions (areas instead of volumes).
- With a ``brain_mask``, the lesion (and its dilation) is intersected with the brain, and saliency
  OUTSIDE the brain still counts, as mass outside the lesion (a map that lights up skull or
  background is penalised, not forgiven). The pointing game likewise takes the argmax over the
  whole volume: a maximum outside the brain is a miss. Random baselines live inside the brain, so
  the chance level of ``mass_in_lesion`` is the lesion's share of the brain volume.

Example:
    >>> import numpy as np
    >>> sal = np.zeros((4, 4, 4)); sal[0, 0, 0] = 3; sal[3, 3, 3] = 1
    >>> lesion = np.zeros((4, 4, 4), bool); lesion[:2, :2, :2] = True
    >>> mass_in_region(sal, lesion), pointing_game(sal, lesion)
    (0.75, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = [
    "LOCALISATION_COLUMNS",
    "dilate",
    "localisation_table",
    "mass_in_region",
    "pointing_game",
    "random_baseline",
    "score_saliency",
    "summarise_localisation",
    "localisation_figures",
]

#: Columns of one row of a localisation table (the notebook's saliency.csv), in order.
LOCALISATION_COLUMNS: tuple[str, ...] = (
    "init",
    "method",
    "case",
    "mass_in_lesion",
    "mass_in_dilated",
    "pointing_hit",
    "random_share",
)
_REQUIRED_COLUMNS = ("init", "method", "case", "mass_in_lesion", "pointing_hit")
_SUMMARY_METRICS = ("mass_in_lesion", "mass_in_dilated", "pointing_hit", "random_share")


def _check_pair(saliency: np.ndarray, mask: np.ndarray, what: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    saliency = np.asarray(saliency, dtype=np.float64)
    mask = np.asarray(mask)
    if saliency.ndim not in (2, 3):
        raise ValueError(f"saliency must be (X, Y, Z) or a 2D slice (H, W), got shape {saliency.shape}")
    if mask.shape != saliency.shape:
        raise ValueError(f"{what} shape {mask.shape} does not match saliency shape {saliency.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{what} must be boolean (or 0/1), got values {np.unique(mask)[:5]}")
        mask = mask.astype(bool)
    if not np.isfinite(saliency).all():
        raise ValueError("saliency contains NaN or inf")
    return saliency, mask


def _in_brain(mask: np.ndarray, brain_mask: np.ndarray | None) -> np.ndarray:
    if brain_mask is None:
        return mask
    brain_mask = np.asarray(brain_mask)
    if brain_mask.shape != mask.shape:
        raise ValueError(f"brain_mask shape {brain_mask.shape} does not match mask shape {mask.shape}")
    return mask & brain_mask.astype(bool)


def mass_in_region(saliency: np.ndarray, mask: np.ndarray, brain_mask: np.ndarray | None = None) -> float:
    """Fraction of the positive saliency mass that lies inside ``mask``.

    ``sum(max(s, 0) inside mask) / sum(max(s, 0))``. With ``brain_mask`` the mask is intersected
    with the brain; saliency outside the brain stays in the denominator (counts as outside).

    Args:
        saliency: ``(X, Y, Z)`` map, any units (scale-free).
        mask: ``(X, Y, Z)`` bool (or 0/1) region.
        brain_mask: optional ``(X, Y, Z)`` bool brain.

    Returns:
        A fraction in [0, 1]; ``nan`` when the map has no positive mass (nothing to localise).

    Example:
        >>> s = np.zeros((2, 2, 2)); s[0, 0, 0] = 3; s[1, 1, 1] = 1; s[1, 0, 0] = -5
        >>> m = np.zeros((2, 2, 2), bool); m[0] = True
        >>> mass_in_region(s, m)
        0.75
    """
    saliency, mask = _check_pair(saliency, mask)
    mask = _in_brain(mask, brain_mask)
    positive = np.clip(saliency, 0.0, None)
    total = positive.sum()
    if total <= 0:
        return float("nan")
    return float(positive[mask].sum() / total)


def _ellipsoid(radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    half = [int(np.floor(radius_mm / s + 1e-9)) for s in spacing_mm]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def dilate(mask: np.ndarray, radius_mm: float, spacing_mm: float | Sequence[float] = 1.0) -> np.ndarray:
    """Dilate a 3D mask (or a 2D slice mask) by ``radius_mm`` millimetres with an ellipsoidal (in voxels) ball.

    The structuring element holds every voxel offset ``(i, j, k)`` with
    ``(i*sx)^2 + (j*sy)^2 + (k*sz)^2 <= r^2``: a sphere in mm, an ellipsoid in voxels when the
    spacing is anisotropic (scipy.ndimage.binary_dilation).

    Args:
        mask: ``(X, Y, Z)`` (or ``(H, W)``) bool (or 0/1).
        radius_mm: dilation radius in mm (>= 0; 0 returns a copy).
        spacing_mm: voxel size in mm, one number or one per axis.

    Example:
        >>> m = np.zeros((9, 9, 5), bool); m[4, 4, 2] = True
        >>> int(dilate(m, 3.0, (1.0, 1.0, 3.0)).sum())   # 29 in-plane + 1 above + 1 below
        31
        >>> int(dilate(m[:, :, 2], 3.0, (1.0, 1.0)).sum())   # the same disc on one slice
        29
    """
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"dilate: mask must be (X, Y, Z) or (H, W), got shape {mask.shape}")
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_mm, dtype=float), (mask.ndim,)))
    if any(s <= 0 for s in spacing):
        raise ValueError(f"dilate: spacing_mm must be positive, got {spacing}")
    if radius_mm < 0:
        raise ValueError(f"dilate: radius_mm must be >= 0, got {radius_mm}")
    mask = mask.astype(bool)
    if radius_mm == 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=_ellipsoid(float(radius_mm), spacing))


def pointing_game(
    saliency: np.ndarray,
    mask: np.ndarray,
    tolerance_vox: int = 0,
    brain_mask: np.ndarray | None = None,
) -> bool:
    """Is the saliency maximum inside the (optionally tolerance-dilated) mask?

    Ties: a hit only if ALL voxels that share the maximum value lie inside. This is the
    conservative choice: a flat or saturated map (e.g. all zeros after ReLU, a clipped CAM) cannot
    score by luck. A map with no positive value is a miss.

    Args:
        saliency: ``(X, Y, Z)`` map.
        mask: ``(X, Y, Z)`` bool lesion.
        tolerance_vox: dilate the mask by this many voxels (a ball in voxel units) first, the usual
            pointing-game tolerance for small lesions.
        brain_mask: optional brain; the lesion is intersected with it (a maximum outside the brain
            is a miss).

    Example:
        >>> s = np.zeros((5, 5, 5)); s[3, 2, 2] = 1
        >>> m = np.zeros((5, 5, 5), bool); m[2, 2, 2] = True
        >>> pointing_game(s, m), pointing_game(s, m, tolerance_vox=1)
        (False, True)
    """
    saliency, mask = _check_pair(saliency, mask)
    if tolerance_vox < 0:
        raise ValueError(f"pointing_game: tolerance_vox must be >= 0, got {tolerance_vox}")
    if tolerance_vox:
        mask = dilate(mask, float(tolerance_vox), 1.0)
    mask = _in_brain(mask, brain_mask)
    peak = saliency.max()
    if peak <= 0:
        return False
    return bool(mask[saliency == peak].all())


def random_baseline(
    mask: np.ndarray,
    brain_mask: np.ndarray | None,
    n: int,
    rng: np.random.Generator | int | None = 0,
    *,
    sigma_vox: float = 2.0,
    tolerance_vox: int = 0,
) -> dict[str, Any]:
    """Chance levels of the mass and pointing metrics for one lesion.

    The expected ``mass_in_lesion`` of a map with no preference is the lesion's share of the brain
    volume (``|lesion & brain| / |brain|``). To also get the spread and the pointing hit rate,
    ``n`` smooth random maps are simulated: white Gaussian noise smoothed with a Gaussian of
    ``sigma_vox`` voxels (scipy.ndimage.gaussian_filter), set to 0 outside the brain, scored
    exactly like real maps (negatives clipped).

    Args:
        mask: ``(X, Y, Z)`` bool lesion.
        brain_mask: ``(X, Y, Z)`` bool brain, or None for the whole volume.
        n: number of simulated maps (>= 1).
        rng: numpy Generator or seed.
        sigma_vox: smoothness of the random maps (voxels).
        tolerance_vox: pointing-game tolerance, as in :func:`pointing_game`.

    Returns:
        dict with ``share`` (expected mass), ``mass`` (n values), ``mass_mean``, ``mass_sd``,
        ``pointing_hits`` (n bools), ``pointing_rate``, ``n``, ``sigma_vox``.

    Example:
        >>> lesion = np.zeros((12, 12, 12), bool); lesion[2:6, 2:6, 2:6] = True
        >>> base = random_baseline(lesion, None, n=5, rng=0)
        >>> round(base["share"], 4)
        0.037
    """
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"random_baseline: mask must be (X, Y, Z) or (H, W), got shape {mask.shape}")
    mask = mask.astype(bool)
    brain = np.ones_like(mask) if brain_mask is None else np.asarray(brain_mask).astype(bool)
    if brain.shape != mask.shape:
        raise ValueError(f"random_baseline: brain_mask shape {brain.shape} does not match mask shape {mask.shape}")
    if not brain.any():
        raise ValueError("random_baseline: brain_mask is empty")
    if n < 1:
        raise ValueError(f"random_baseline: n must be >= 1, got {n}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    lesion = mask & brain
    masses = np.empty(n)
    hits = np.empty(n, dtype=bool)
    for i in range(n):
        noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma=sigma_vox)
        noise[~brain] = 0.0
        masses[i] = mass_in_region(noise, lesion)
        hits[i] = pointing_game(noise, mask, tolerance_vox=tolerance_vox, brain_mask=brain)
    return {
        "share": float(lesion.sum() / brain.sum()),
        "mass": masses,
        "mass_mean": float(np.nanmean(masses)),
        "mass_sd": float(np.nanstd(masses)),
        "pointing_hits": hits,
        "pointing_rate": float(hits.mean()),
        "n": int(n),
        "sigma_vox": float(sigma_vox),
    }


def score_saliency(
    saliency: np.ndarray,
    lesion_mask: np.ndarray,
    *,
    brain_mask: np.ndarray | None = None,
    spacing_mm: float | Sequence[float] = 1.0,
    dilate_mm: float = 5.0,
    tolerance_vox: int = 0,
) -> dict[str, float | bool]:
    """All per-case metrics of one map: the numeric columns of a localisation table row.

    Returns ``mass_in_lesion``, ``mass_in_dilated`` (lesion dilated by ``dilate_mm`` in mm, then
    intersected with the brain), ``pointing_hit`` and ``random_share`` (the chance level of
    ``mass_in_lesion``: lesion share of the brain volume).

    Example:
        >>> s = np.zeros((6, 6, 6)); s[1, 1, 1] = 2; s[1, 1, 3] = 2
        >>> m = np.zeros((6, 6, 6), bool); m[1, 1, 1] = True
        >>> r = score_saliency(s, m, dilate_mm=2.0)
        >>> r["mass_in_lesion"], r["mass_in_dilated"], r["pointing_hit"]
        (0.5, 1.0, False)
    """
    saliency, lesion = _check_pair(saliency, lesion_mask, "lesion_mask")
    brain = np.ones_like(lesion) if brain_mask is None else _in_brain(np.ones_like(lesion), brain_mask)
    lesion_in_brain = lesion & brain
    return {
        "mass_in_lesion": mass_in_region(saliency, lesion_in_brain),
        "mass_in_dilated": mass_in_region(saliency, dilate(lesion, dilate_mm, spacing_mm) & brain),
        "pointing_hit": pointing_game(saliency, lesion_in_brain, tolerance_vox=tolerance_vox),
        "random_share": float(lesion_in_brain.sum() / brain.sum()),
    }


def localisation_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (dicts) -> a DataFrame with the standard columns first (saliency.csv layout).

    Each row needs ``init, method, case, mass_in_lesion, pointing_hit``; ``mass_in_dilated`` and
    ``random_share`` are optional (NaN if absent); extra keys are kept after the standard columns.

    Example:
        >>> df = localisation_table([{"init": "scratch", "method": "vanilla", "case": "c1",
        ...                           "mass_in_lesion": 0.8, "pointing_hit": True}])
        >>> list(df.columns)[:5]
        ['init', 'method', 'case', 'mass_in_lesion', 'mass_in_dilated']
    """
    rows = [dict(r) for r in rows]
    for i, row in enumerate(rows):
        missing = [c for c in _REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"localisation_table: row {i} misses {missing} (has {sorted(row)})")
    df = pd.DataFrame(rows)
    for col in LOCALISATION_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan if col not in ("init", "method", "case") else pd.Series(dtype=object)
    extra = [c for c in df.columns if c not in LOCALISATION_COLUMNS]
    df = df[list(LOCALISATION_COLUMNS) + extra]
    for col in ("mass_in_lesion", "mass_in_dilated", "random_share"):
        df[col] = df[col].astype(float)
    df["pointing_hit"] = df["pointing_hit"].astype(bool)
    return df


def _bootstrap_ci(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def summarise_localisation(
    df: pd.DataFrame,
    by: Sequence[str] = ("init", "method"),
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean and percentile-bootstrap CI (over cases) of each metric, per group.

    For every metric present among ``mass_in_lesion, mass_in_dilated, pointing_hit (rate),
    random_share`` the output has ``<metric>_mean``, ``<metric>_ci_low``, ``<metric>_ci_high``;
    ``n_cases`` counts rows per group. NaN values (maps without positive mass) are left out of that
    metric. Each group/metric is resampled with the same ``seed``, so results do not depend on
    the order of the groups.

    Example:
        >>> df = localisation_table([{"init": "ssl", "method": "vanilla", "case": f"c{i}",
        ...                           "mass_in_lesion": v, "pointing_hit": v > 0.5}
        ...                          for i, v in enumerate([0.6, 0.8, 1.0])])
        >>> s = summarise_localisation(df)
        >>> round(float(s["mass_in_lesion_mean"].iloc[0]), 3), float(s["pointing_hit_mean"].iloc[0])
        (0.8, 1.0)
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"summarise_localisation: group columns {missing} not in {list(df.columns)}")
    if not 0 < level < 1:
        raise ValueError(f"summarise_localisation: level must be in (0, 1), got {level}")
    metrics = [m for m in _SUMMARY_METRICS if m in df.columns and df[m].notna().any()]
    out = []
    for key, group in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        row["n_cases"] = len(group)
        for metric in metrics:
            values = group[metric].astype(float).to_numpy()
            values = values[~np.isnan(values)]
            low, high = _bootstrap_ci(values, n_boot, level, seed)
            row[f"{metric}_mean"] = float(values.mean()) if values.size else float("nan")
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        out.append(row)
    return pd.DataFrame(out)


def localisation_figures(table, chance: float, min_auc: float, test_auc: dict, not_explained: dict, cases: int,
                         methods) -> dict:
    """The report's key figures of notebook 05 (3D and 2D paths): cases, methods, the random-map share,
    each classifier's test AUC, which were not explained, and per init and method the mean mass in
    the lesion with its 95 % CI and the pointing-game hit rate (from :func:`summarise_localisation`).

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"init": ["a"], "method": ["vanilla"], "mass_in_lesion_mean": [0.5],
        ...                   "mass_in_lesion_ci_low": [0.4], "mass_in_lesion_ci_high": [0.6], "pointing_hit_mean": [1.0]})
        >>> localisation_figures(t, 0.1, 0.85, {"a": 0.9}, {}, 4, ["vanilla"])["a vanilla mass_in_lesion"]
        '0.500 [0.400, 0.600]'
    """
    figures = {"cases": cases, "methods": ", ".join(methods), "random_share": round(chance, 3),
               "min_auc": min_auc, **{f"{init} test AUC": round(auc, 3) for init, auc in test_auc.items()},
               "not explained (AUC below min_auc)": ", ".join(not_explained) or "none"}
    for r in table.itertuples():
        figures[f"{r.init} {r.method} mass_in_lesion"] = (
            f"{r.mass_in_lesion_mean:.3f} [{r.mass_in_lesion_ci_low:.3f}, {r.mass_in_lesion_ci_high:.3f}]")
        figures[f"{r.init} {r.method} pointing_hit"] = f"{r.pointing_hit_mean:.2f}"
    return figures
