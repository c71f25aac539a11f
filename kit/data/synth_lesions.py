"""Phenotypes and lesion plans for the synthetic cohorts, and lesion drawing.

A *plan* is everything random about a subject that does not depend on the voxel grid: age, sex,
tumour type, IDH status and the lesion foci (centre, size and shape in mm). Plans are cheap to draw,
so the phenotype/appearance link can be checked on thousands of subjects without rendering images.

The tumour phenotypes follow the radiology, with deliberately imperfect links:
  * glioma: one infiltrative lesion with a large irregular edema. IDH-mutant gliomas are younger,
    often non-enhancing (about 2 in 5 enhance, with a thin patchy rim), rarely necrotic, frontal in
    about 2 of 3 and sometimes show the T2-FLAIR mismatch sign; IDH-wildtype gliomas are older,
    usually (85%) have a thick enhancing rim around a necrotic core and sit anywhere in the hemispheres.
  * metastasis: 1-4 small ring-enhancing lesions (30% solitary) near the grey-white junction or in
    the cerebellum, with an edema that is large relative to the lesion.
Stroke plans are ATLAS-like chronic infarcts in one hemisphere, in an MCA, ACA, PCA or deep
(lenticulostriate) territory, with a CSF-like cavity and a gliotic rim.

Example:
    >>> from kit.data.synth_atlas import load_atlas
    >>> plan = sample_plan("tumor", np.random.default_rng(3), load_atlas(4.0))
    >>> plan.cohort, plan.tumor_type in ("glioma", "metastasis", "none")
    ('tumor', True)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import ndtri

from .synth_fields import smooth_random_fields

#: Share of tumour-cohort subjects without a tumour (negatives for detection).
TUMOR_FREE_FRACTION = 0.25
#: Share of tumours that are gliomas (the rest are metastases).
GLIOMA_FRACTION = 0.55
#: Share of gliomas that are IDH-mutant.
IDH_MUTANT_FRACTION = 0.45
#: Stroke territories: centre in MNI mm for the right hemisphere (x is mirrored for the left one),
#: positional spread (mm, std) and lesion volume distribution (median ml, log-std).
STROKE_TERRITORIES = {
    "mca": dict(centre=(40.0, -8.0, 14.0), spread=(5.0, 14.0, 10.0), median_ml=12.0, log_sd=1.1, p=0.55),
    "deep": dict(centre=(22.0, 2.0, 6.0), spread=(3.0, 5.0, 5.0), median_ml=1.2, log_sd=0.7, p=0.20),
    "pca": dict(centre=(20.0, -75.0, 6.0), spread=(5.0, 8.0, 6.0), median_ml=10.0, log_sd=1.0, p=0.15),
    "aca": dict(centre=(9.0, 12.0, 46.0), spread=(3.0, 12.0, 8.0), median_ml=8.0, log_sd=1.0, p=0.10),
}


@dataclass
class Focus:
    """One lesion focus, in output MNI mm.

    Attributes:
        centre_mm: (3,) centre.
        radius_mm: mean radius of the tumour core (tumour) or of the whole lesion (stroke).
        axes: (3,) relative semi-axes (geometric mean 1) of the ellipsoid before rotation.
        rotation: (3, 3) rotation of the ellipsoid.
        irregularity: relative amplitude of the smooth boundary perturbation (0 = ellipsoid).
        rim_mm: tumour: enhancing rim thickness (0 = non-enhancing); stroke: gliotic rim thickness.
        rim_coverage: fraction of the rim that enhances (1 = complete ring).
        core_kind: appearance of the label-1 voxels inside the rim: 'necrotic', 'solid'
            (non-enhancing tumour) or 'mismatch' (solid with the T2-FLAIR mismatch sign).
        edema_mm: extent of the edema beyond the core (mm).
        edema_irregularity: relative amplitude of the edema boundary perturbation.
        mass_effect: radial magnification amplitude (> 0 pushes tissue away, < 0 pulls it in).
    """

    centre_mm: np.ndarray
    radius_mm: float
    axes: np.ndarray
    rotation: np.ndarray
    irregularity: float
    rim_mm: float = 0.0
    rim_coverage: float = 1.0
    core_kind: Literal["necrotic", "solid", "mismatch"] = "necrotic"
    edema_mm: float = 0.0
    edema_irregularity: float = 0.3
    mass_effect: float = 0.0

    @property
    def reach_mm(self) -> float:
        """Radius (mm) beyond which the focus draws nothing."""
        shape = self.radius_mm * float(self.axes.max()) * (1.0 + 2.0 * self.irregularity)
        edema = (self.radius_mm + self.edema_mm) * float(self.axes.max()) * (1.0 + 1.5 * self.edema_irregularity)
        return max(shape, edema if self.edema_mm > 0 else 0.0) + 2.0

    def expected_enhancing_ml(self) -> float:
        """Enhancing volume (ml) of the ideal ellipsoidal focus, ignoring brain clipping."""
        if self.rim_mm <= 0:
            return 0.0
        inner = max(self.radius_mm - self.rim_mm, 0.0)
        return float(self.rim_coverage * 4.0 / 3.0 * np.pi * (self.radius_mm**3 - inner**3) / 1000.0)


@dataclass
class SubjectPlan:
    """Grid-independent description of a subject (see module docstring)."""

    cohort: str
    age: float
    sex: str
    tumor_present: int | None = None
    tumor_type: str | None = None
    idh: str = "NA"
    hemisphere: int = 0          # stroke: -1 left, +1 right
    territory: str | None = None  # stroke territory of the first lesion
    foci: list[Focus] = field(default_factory=list)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1.0
    return q


def _axes(rng: np.random.Generator, spread: float) -> np.ndarray:
    a = np.exp(rng.normal(0.0, spread, 3))
    return a / np.prod(a) ** (1.0 / 3.0)


def _pick(rng: np.random.Generator, points_mm: np.ndarray, jitter_mm: float = 2.0) -> np.ndarray:
    return points_mm[rng.integers(len(points_mm))].astype(np.float64) + rng.normal(0.0, jitter_mm, 3)


def _mass_effect(radius_mm: float, edema_mm: float) -> float:
    return float(np.clip(0.08 + 0.01 * (radius_mm + 0.5 * edema_mm), 0.1, 0.45))


def _glioma(rng: np.random.Generator, atlas, mutant: bool) -> Focus:
    wm = atlas.cerebral_wm_mm
    frontal = rng.random() < (0.65 if mutant else 0.3)
    region = wm[wm[:, 1] > 5.0] if frontal else wm[wm[:, 1] <= 5.0]
    centre = _pick(rng, region)
    radius = rng.uniform(12.0, 24.0) if mutant else rng.uniform(10.0, 22.0)
    enhancing = rng.random() < (0.4 if mutant else 0.85)
    if mutant:
        rim = rng.uniform(1.5, 4.0) if enhancing else 0.0
        coverage = rng.uniform(0.25, 0.7)
        if enhancing:
            kind = "necrotic" if rng.random() < 0.15 else "solid"
        else:
            kind = "mismatch" if rng.random() < 0.35 else "solid"
        edema = rng.uniform(2.0, 10.0)
        irregularity = rng.uniform(0.1, 0.25)
    else:
        rim = rng.uniform(3.0, 8.0) if enhancing else 0.0
        coverage = rng.uniform(0.6, 1.0)
        kind = "necrotic" if rng.random() < 0.8 else "solid"
        edema = rng.uniform(6.0, 18.0)
        irregularity = rng.uniform(0.2, 0.4)
    return Focus(centre_mm=centre, radius_mm=radius, axes=_axes(rng, 0.15), rotation=_rotation(rng),
                 irregularity=irregularity, rim_mm=rim, rim_coverage=coverage, core_kind=kind,
                 edema_mm=edema, edema_irregularity=rng.uniform(0.2, 0.4),
                 mass_effect=_mass_effect(radius, edema))


def _metastasis(rng: np.random.Generator, atlas) -> Focus:
    cerebellar = rng.random() < 0.15
    centre = _pick(rng, atlas.cerebellar_wm_mm if cerebellar else atlas.gm_wm_junction_mm)
    radius = float(np.exp(rng.uniform(np.log(4.0), np.log(14.0))))
    enhancing = rng.random() < 0.92
    rim = min(rng.uniform(1.5, 3.5), radius) if enhancing else 0.0
    if radius < 6.0 and enhancing:
        rim = radius  # small metastases enhance solidly
    kind = "necrotic" if rng.random() < 0.65 else "solid"
    edema = min(radius * rng.uniform(0.8, 1.8), 35.0 - radius)
    return Focus(centre_mm=centre, radius_mm=radius, axes=_axes(rng, 0.1), rotation=_rotation(rng),
                 irregularity=rng.uniform(0.05, 0.15), rim_mm=rim, rim_coverage=rng.uniform(0.85, 1.0),
                 core_kind=kind, edema_mm=edema, edema_irregularity=rng.uniform(0.15, 0.3),
                 mass_effect=_mass_effect(radius, edema))


def _stroke_focus(rng: np.random.Generator, territory: str, hemisphere: int, volume_scale: float) -> Focus:
    spec = STROKE_TERRITORIES[territory]
    centre = np.array(spec["centre"], np.float64) + rng.normal(0.0, 1.0, 3) * np.array(spec["spread"])
    centre[0] = hemisphere * abs(centre[0])
    volume_ml = float(np.clip(spec["median_ml"] * np.exp(rng.normal(0.0, spec["log_sd"])), 0.1, 200.0))
    volume_ml *= volume_scale
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    return Focus(centre_mm=centre, radius_mm=float(radius), axes=_axes(rng, 0.3), rotation=_rotation(rng),
                 irregularity=rng.uniform(0.2, 0.45), rim_mm=rng.uniform(1.5, 3.0),
                 mass_effect=-rng.uniform(0.05, 0.2))


def sample_plan(cohort: str, rng: np.random.Generator, atlas) -> SubjectPlan:
    """Draw a subject plan (phenotype + lesion foci) for ``cohort``.

    Args:
        cohort: 'healthy', 'tumor' or 'stroke'.
        rng: the subject's plan stream; the plan does not depend on the resolution.
        atlas: any :class:`~kit.data.synth_atlas.Atlas` (only its 1 mm candidate positions are used).

    Returns:
        :class:`SubjectPlan`.
    """
    sex = lambda p_male: "M" if rng.random() < p_male else "F"  # noqa: E731
    if cohort == "healthy":
        return SubjectPlan(cohort, age=float(rng.uniform(20.0, 85.0)), sex=sex(0.5))
    if cohort == "stroke":
        age = float(np.clip(rng.normal(61.0, 12.0), 25.0, 90.0))
        plan = SubjectPlan(cohort, age=age, sex=sex(0.6), hemisphere=int(rng.choice([-1, 1])))
        names = list(STROKE_TERRITORIES)
        p = np.array([STROKE_TERRITORIES[t]["p"] for t in names])
        plan.territory = str(rng.choice(names, p=p / p.sum()))
        n = int(rng.choice([1, 2, 3], p=[0.8, 0.15, 0.05]))
        plan.foci.append(_stroke_focus(rng, plan.territory, plan.hemisphere, 1.0))
        for _ in range(n - 1):
            plan.foci.append(_stroke_focus(rng, str(rng.choice(names, p=p / p.sum())), plan.hemisphere, 0.3))
        return plan
    if cohort != "tumor":
        raise ValueError(f"unknown cohort {cohort!r}; valid: healthy, tumor, stroke")
    if rng.random() < TUMOR_FREE_FRACTION:
        age = float(np.clip(rng.normal(55.0, 16.0), 18.0, 88.0))
        return SubjectPlan(cohort, age=age, sex=sex(0.5), tumor_present=0, tumor_type="none", idh="NA")
    if rng.random() < GLIOMA_FRACTION:
        mutant = rng.random() < IDH_MUTANT_FRACTION
        age = float(np.clip(rng.normal(40.0, 12.0), 18.0, 80.0) if mutant
                    else np.clip(rng.normal(58.0, 13.0), 20.0, 88.0))
        plan = SubjectPlan(cohort, age=age, sex=sex(0.56), tumor_present=1, tumor_type="glioma",
                           idh="mutant" if mutant else "wildtype")
        plan.foci.append(_glioma(rng, atlas, mutant))
        return plan
    age = float(np.clip(rng.normal(62.0, 10.0), 30.0, 88.0))
    plan = SubjectPlan(cohort, age=age, sex=sex(0.5), tumor_present=1, tumor_type="metastasis", idh="NA")
    n = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
    plan.foci.extend(_metastasis(rng, atlas) for _ in range(n))
    return plan


def _ramp(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Soft inside-membership from a signed distance (mm, > 0 inside): linear over one voxel."""
    out = signed_mm * np.float32(1.0 / width_mm)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def focus_box(focus: Focus, axes_mm) -> tuple[slice, slice, slice] | None:
    """Slices of the grid ``axes_mm`` within the focus reach, or None if it misses the grid."""
    slices = []
    for a, c in zip(axes_mm, focus.centre_mm):
        keep = np.nonzero(np.abs(a - c) <= focus.reach_mm)[0]
        if keep.size == 0:
            return None
        slices.append(slice(int(keep[0]), int(keep[-1]) + 1))
    return tuple(slices)


def draw_focus(focus: Focus, kind: str, axes_mm, rng: np.random.Generator, gm: np.ndarray, wm: np.ndarray,
               voxel_mm: float) -> tuple[tuple | None, dict[str, np.ndarray]]:
    """Soft compartment memberships of one focus on its local box.

    Args:
        focus: the focus.
        kind: 'tumor' or 'stroke'.
        axes_mm: voxel-centre coordinates (mm) of the whole work box along x, y, z.
        rng: lesion stream; the same numbers are drawn at every resolution.
        gm, wm: float32 warped tissue fractions on the work box (edema follows WM; stroke spares CSF).
        voxel_mm: voxel side, the width of the soft boundary (partial volume).

    Returns:
        (slices, memberships): slices of the work box, and float32 arrays on that sub-box in [0, 1]:
        tumour: 'enhancing', 'necrotic', 'solid', 'mismatch', 'edema' (only the kinds present);
        stroke: 'cavity', 'gliosis'.
    """
    reach = focus.reach_mm
    extent = tuple((c - reach, c + reach) for c in focus.centre_mm)
    spacing = float(np.clip(0.9 * focus.radius_mm, 5.0, 30.0))
    # The same number of normals is drawn at every resolution (control grid fixed in mm).
    box = focus_box(focus, axes_mm)
    ctrl_axes = tuple(np.array([lo, hi], np.float32) for lo, hi in extent)
    if box is None:
        # Still consume the stream so the following foci get the same numbers at every resolution.
        smooth_random_fields(rng, 3, ctrl_axes, spacing, extent)
        return None, {}
    sub_axes = tuple(a[s] for a, s in zip(axes_mm, box))
    noise = smooth_random_fields(rng, 3, sub_axes, spacing, extent)
    d = [(a - c).astype(np.float32) for a, c in zip(sub_axes, focus.centre_mm)]
    rot = focus.rotation.T.astype(np.float32)  # rows: ellipsoid axes in mm coordinates
    rho2 = None
    for k in range(3):
        q = rot[k, 0] * d[0][:, None, None] + rot[k, 1] * d[1][None, :, None] + rot[k, 2] * d[2][None, None, :]
        q *= np.float32(1.0 / focus.axes[k])
        rho2 = q * q if rho2 is None else rho2 + q * q
    dist = np.sqrt(rho2, out=rho2)  # ellipsoidal distance from the centre, mm
    bound = focus.radius_mm * np.clip(1.0 + focus.irregularity * noise[0], 0.3, 1.0 + 2.0 * focus.irregularity)
    inside = _ramp(bound - dist, voxel_mm)  # soft core (tumour) or lesion (stroke)
    g, w = gm[box], wm[box]
    out: dict[str, np.ndarray] = {}
    if kind == "stroke":
        tissue = np.clip((g + w - 0.2) / 0.3, 0.0, 1.0)  # infarcts destroy tissue, not CSF spaces
        x_mm = sub_axes[0][:, None, None] * np.float32(np.sign(focus.centre_mm[0]))
        hemisphere = np.clip((x_mm + 1.0) / 3.0, 0.0, 1.0)  # stays on its side of the midline
        lesion = inside * tissue * hemisphere
        deep = _ramp(bound - focus.rim_mm - dist, voxel_mm) * tissue * hemisphere
        out["cavity"] = deep
        out["gliosis"] = np.clip(lesion - deep, 0.0, 1.0)
        return box, out
    if focus.rim_mm > 0:
        inner = _ramp(bound - focus.rim_mm - dist, voxel_mm)
        rim = inside - inner
        if focus.rim_coverage < 0.999:
            threshold = float(ndtri(1.0 - focus.rim_coverage))
            patch = np.clip((noise[1] - threshold) * 2.0 + 0.5, 0.0, 1.0)
            out["enhancing"] = rim * patch
            out["solid"] = rim * (1.0 - patch)
        else:
            out["enhancing"] = rim
    else:
        inner = inside
    out[focus.core_kind] = out.get(focus.core_kind, 0.0) + inner
    if focus.edema_mm > 0:
        spread = np.clip(1.0 + focus.edema_irregularity * noise[2], 0.5, 1.0 + 1.5 * focus.edema_irregularity)
        reach = (focus.radius_mm + focus.edema_mm) * spread
        oedema = _ramp(reach - dist, voxel_mm)
        white = np.clip((w + 0.35 * g) / 0.6, 0.0, 1.0)  # vasogenic edema spreads along white matter
        out["edema"] = oedema * white * (1.0 - inside)
    return box, out
