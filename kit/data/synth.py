"""Synthetic brain-MRI cohorts (healthy, tumour, stroke) written in the real datasets' file layouts.

Every subject starts from the MNI152 grey-matter, white-matter and brain-mask maps shipped with
nilearn (see :mod:`kit.data.synth_atlas`) and gets, deterministically from ``(seed, index, cohort)``:

* its own smooth random deformation (control grid every 40 mm, a few mm amplitude), a brain-size
  scaling, age-related atrophy (GM and WM turned into CSF, enlarged lateral ventricles) and, for
  lesions, a mass effect (tissue pushed away from tumours, pulled towards old infarcts); the warp is
  one ``scipy.ndimage.map_coordinates(order=1)`` pass per tissue map;
* lesions (see :mod:`kit.data.synth_lesions`): BraTS compartments for tumours (1 necrotic or
  non-enhancing core, 2 edema, 4 enhancing), ATLAS-like chronic infarcts for strokes (label 0/1);
* T1, T1ce, T2 and FLAIR contrasts from per-tissue intensities (``CONTRAST_MEANS``, scanner-like
  0..~1200, not normalised) with per-subject gain and 4% per-tissue jitter, a smooth multiplicative
  bias field and Rician noise; skull-stripped (0 outside the brain), float32.

Sizes are in mm, so a subject has the same anatomy, lesions and phenotype at every ``resolution_mm``
(only partial volume and noise differ). The in-memory subject lives on the MNI grid
(197 x 233 x 189 at 1 mm, ``round(n / r)`` voxels at ``r`` mm, RAS affine with spacing ``r``);
BraTS layouts re-window it to round(240/r) x round(240/r) x round(155/r) around the brain.
The ATLAS layout writes the brain-only T1w (real ATLAS T1w images keep the skull).

Example:
    >>> subject = make_subject("tumor", index=0, seed=0, resolution_mm=4.0)
    >>> subject.images["t1"].shape, subject.images["t1"].dtype, float(subject.affine[0, 0])
    ((49, 58, 47), dtype('float32'), 4.0)
    >>> ids = synth_cohort("healthy", "ukb", n=2, out="/tmp/ukb_demo", resolution_mm=4.0)  # doctest: +SKIP
"""
from __future__ import annotations

import concurrent.futures as futures
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi

from .synth_atlas import VENTRICLE_CENTRE_MM, VENTRICLE_SPREAD_MM, load_atlas
from .synth_fields import radial_displacement, rician, smooth_random_fields
from .synth_layouts import (LAYOUTS, NIFTI_MNI_CODE, NIFTI_SCANNER_CODE, brats_window, check_layout, crop_pad,
                            layout_label, read_participants, save_nifti, shifted_affine, subject_id,
                            subject_paths, voxel_size, write_participants)
from .synth_lesions import SubjectPlan, draw_focus, sample_plan

__all__ = ["COHORTS", "LAYOUTS", "CONTRASTS", "CONTRAST_MEANS", "SyntheticSubject", "make_subject",
           "sample_subject_plan", "write_subject", "synth_cohort", "subject_id"]

COHORTS = ("healthy", "tumor", "stroke")
CONTRASTS = ("t1", "t1ce", "t2", "flair")
#: Mean intensity per contrast of each tissue / lesion compartment (before gain, bias and noise).
#: T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF suppressed, GM > WM; T1ce = T1 + enhancement.
#: Tumour: necrosis dark on T1/T1ce and bright on T2; edema bright on T2/FLAIR, slightly dark on T1;
#: enhancing tumour bright on T1ce; 'solid' = non-enhancing tumour; 'mismatch' = solid tumour with
#: the T2-FLAIR mismatch sign (T2 bright, FLAIR not). Stroke: CSF-like cavity (FLAIR intermediate,
#: as gliotic strands and fluid mix) and a FLAIR-bright gliotic rim.
CONTRAST_MEANS = {
    "t1": dict(csf=200, gm=520, wm=800, edema=600, enhancing=560, necrotic=260, solid=470, mismatch=430,
               cavity=230, gliosis=560),
    "t1ce": dict(csf=220, gm=540, wm=790, edema=610, enhancing=1150, necrotic=280, solid=490, mismatch=450,
                 cavity=240, gliosis=570),
    "t2": dict(csf=1000, gm=560, wm=380, edema=820, enhancing=640, necrotic=900, solid=800, mismatch=870,
               cavity=960, gliosis=720),
    "flair": dict(csf=110, gm=620, wm=460, edema=860, enhancing=720, necrotic=480, solid=780, mismatch=420,
                  cavity=560, gliosis=880),
}
_COHORT_CODE = {"healthy": 0, "tumor": 1, "stroke": 2}
_STREAMS = ("plan", "anatomy", "lesion", "contrast", "noise")
#: Field of view of the 1 mm template in MNI mm; fixes the control grids of the random fields.
_TEMPLATE_FOV_MM = ((-98.0, 98.0), (-134.0, 98.0), (-72.0, 116.0))
_BRAIN_CENTRE_MM = np.array([0.0, -18.0, 18.0])
_DEFORM_SPACING_MM = 40.0
_BIAS_SPACING_MM = 70.0


@dataclass
class SyntheticSubject:
    """One synthetic subject in memory, on the MNI grid.

    Attributes:
        images: 't1', 't1ce', 't2', 'flair' -> float32 (X, Y, Z), 0 outside the brain.
        label: uint8 (X, Y, Z): BraTS-2021 values {0, 1, 2, 4} for the tumour cohort (all zero when
            tumour-free), {0, 1} for stroke, None for healthy subjects.
        affine: 4x4 voxel -> MNI mm, spacing = resolution.
        phenotype: participants.tsv columns except 'subject': cohort, age, sex, tumor_present,
            tumor_type, idh, lesion_volume_ml, n_lesions, seed (None = empty cell).
    """

    images: dict[str, np.ndarray]
    label: np.ndarray | None
    affine: np.ndarray
    phenotype: dict


def _check_cohort(cohort: str) -> str:
    if cohort not in COHORTS:
        raise ValueError(f"unknown cohort {cohort!r}; valid cohorts: {', '.join(COHORTS)}")
    return cohort


def _streams(cohort: str, index: int, seed: int) -> dict[str, np.random.Generator]:
    """Independent random streams of one subject (changing one part never shifts the others)."""
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    children = np.random.SeedSequence([int(seed), int(index), _COHORT_CODE[cohort]]).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


def sample_subject_plan(cohort: str, index: int, seed: int = 0) -> SubjectPlan:
    """The grid-independent plan (phenotype and lesion foci) that :func:`make_subject` renders.

    Cheap (no images): use it to study the cohort's phenotype distribution.

    Example:
        >>> plan = sample_subject_plan("tumor", 3, seed=0)
        >>> plan.idh in ("mutant", "wildtype", "NA")
        True
    """
    _check_cohort(cohort)
    return sample_plan(cohort, _streams(cohort, index, seed)["plan"], load_atlas(4.0))


# Mean linear size of a synthetic brain relative to the MNI152 template (see _displacement).
MEAN_HEAD_SCALE = 0.92


def _atrophy(age: float, rng: np.random.Generator) -> float:
    """Atrophy score: 0 at 20 years, ~1 at 85, with individual variation."""
    return float(np.clip((age - 20.0) / 65.0 + rng.normal(0.0, 0.08), 0.0, 1.2))


def _displacement(plan: SubjectPlan, axes_mm, rng: np.random.Generator, atrophy: float) -> np.ndarray:
    """Total displacement (mm), float32 (3, X, Y, Z) on the work box: sample the atlas at x + u(x)."""
    amplitude = rng.uniform(1.5, 3.0)
    u = smooth_random_fields(rng, 3, axes_mm, _DEFORM_SPACING_MM, _TEMPLATE_FOV_MM)
    u *= np.float32(amplitude)
    # Brain size: sampling farther from the centre (factor > 1) makes the brain smaller. The MNI152
    # template is larger than an average head (its brain mask holds about 1.9 L); a linear scale of
    # 0.92 brings the intracranial volume to the adult range, ~1.3-1.7 L (Buckner et al. 2004).
    size = np.clip(MEAN_HEAD_SCALE + rng.normal(0.0, 0.02) + (0.015 if plan.sex == "M" else -0.015), 0.87, 0.97)
    for k in range(3):
        shape = [1, 1, 1]
        shape[k] = -1
        u[k] += ((1.0 / size - 1.0) * (axes_mm[k] - _BRAIN_CENTRE_MM[k])).astype(np.float32).reshape(shape)
    fields = [(VENTRICLE_CENTRE_MM, 0.6 * atrophy, VENTRICLE_SPREAD_MM)]
    fields += [(f.centre_mm, f.mass_effect, f.radius_mm + 0.5 * f.edema_mm + 3.0) for f in plan.foci
               if f.mass_effect != 0.0]
    for centre, strength, sigma in fields:
        if strength == 0.0:
            continue
        sub, du = radial_displacement(axes_mm, centre, strength, sigma)
        u[(slice(None),) + sub] += du
    return u


def _warp_tissue(atlas, u: np.ndarray):
    """Warp GM, WM and mask; returns brain (bool box mask) and GM/WM/CSF fractions on brain voxels."""
    r = atlas.resolution_mm
    coords = u  # reused in place: mm displacement -> voxel coordinates into the atlas
    coords *= np.float32(1.0 / r)
    for k, s in enumerate(atlas.box):
        shape = [1, 1, 1]
        shape[k] = -1
        coords[k] += np.arange(s.start, s.stop, dtype=np.float32).reshape(shape)
    flat = coords.reshape(3, -1)
    # mode='nearest' is 2x faster than 'constant'; the maps are 0 at every edge but the inferior one,
    # where it continues the brainstem downwards, as a real head would.
    mask = ndi.map_coordinates(atlas.mask, flat, order=1, mode="nearest", output=np.float32)
    brain = mask > 0.5
    points = flat[:, brain]
    gm = ndi.map_coordinates(atlas.gm, points, order=1, mode="nearest", output=np.float32)
    wm = ndi.map_coordinates(atlas.wm, points, order=1, mode="nearest", output=np.float32)
    mask = mask[brain]
    csf = np.maximum(mask - gm - wm, 0.0)
    total = gm + wm + csf
    gm /= total
    wm /= total
    csf = 1.0 - gm - wm
    return brain.reshape(u.shape[1:]), gm, wm, csf


def _scatter(brain: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(brain.shape, np.float32)
    out[brain] = values
    return out


def make_subject(cohort: str, index: int, seed: int = 0, resolution_mm: float = 1.0) -> SyntheticSubject:
    """Generate one synthetic subject on the MNI grid.

    Args:
        cohort: 'healthy', 'tumor' or 'stroke'.
        index: subject index (>= 0); with ``seed`` and ``cohort`` it fixes every random choice.
        seed: cohort seed (>= 0).
        resolution_mm: isotropic voxel side in mm (1.0 full; 2-4 for smoke tests), 0.5 to 8.

    Returns:
        :class:`SyntheticSubject`: 4 float32 contrasts (X, Y, Z) with X, Y, Z = round(197/r),
        round(233/r), round(189/r), a uint8 label (None for healthy), the affine and the phenotype.

    Example:
        >>> s = make_subject("stroke", 1, seed=0, resolution_mm=4.0)
        >>> sorted(s.images), set(np.unique(s.label)) <= {0, 1}
        (['flair', 't1', 't1ce', 't2'], True)
    """
    _check_cohort(cohort)
    atlas = load_atlas(float(resolution_mm))
    r = atlas.resolution_mm
    rngs = _streams(cohort, index, seed)
    plan = sample_plan(cohort, rngs["plan"], atlas)
    axes_mm = tuple((np.arange(s.start, s.stop) * r + atlas.affine[k, 3]).astype(np.float32)
                    for k, s in enumerate(atlas.box))

    atrophy = _atrophy(plan.age, rngs["anatomy"])
    u = _displacement(plan, axes_mm, rngs["anatomy"], atrophy)
    brain, gm, wm, csf = _warp_tissue(atlas, u)
    del u
    # Cortical thinning: GM gives way to CSF where the two meet (sulci widen). White-matter loss is
    # the ventricular enlargement of the deformation, which pushes WM outwards.
    gm *= 1.0 - 0.4 * atrophy * np.clip(2.5 * csf, 0.0, 1.0)
    csf = 1.0 - gm - wm

    compartments, n_drawn = _draw_lesions(plan, axes_mm, rngs["lesion"], brain, gm, wm, r)
    label_box = _label(plan.cohort, compartments, brain) if plan.cohort != "healthy" else None
    images_flat = _render(compartments, brain, gm, wm, csf, axes_mm, rngs["contrast"], rngs["noise"])

    box_voxels = np.nonzero(brain)
    brain_index = np.ravel_multi_index(tuple(v + s.start for v, s in zip(box_voxels, atlas.box)), atlas.shape)
    images = {}
    for name, values in images_flat.items():
        full = np.zeros(int(np.prod(atlas.shape)), np.float32)
        full[brain_index] = values
        images[name] = full.reshape(atlas.shape)
    label = None
    if label_box is not None:
        label = np.zeros(atlas.shape, np.uint8)
        label[atlas.box] = label_box
    volume_ml = 0.0 if label is None else float(np.count_nonzero(label)) * r**3 / 1000.0
    phenotype = dict(cohort=cohort, age=round(plan.age, 1), sex=plan.sex, tumor_present=plan.tumor_present,
                     tumor_type=plan.tumor_type, idh=plan.idh, lesion_volume_ml=round(volume_ml, 3),
                     n_lesions=n_drawn, seed=int(seed))
    return SyntheticSubject(images=images, label=label, affine=atlas.affine.copy(), phenotype=phenotype)


def _draw_lesions(plan: SubjectPlan, axes_mm, rng, brain, gm, wm, voxel_mm):
    """Compartment memberships (name -> float32 box array) and the number of foci that show."""
    compartments: dict[str, np.ndarray] = {}
    if not plan.foci:
        return compartments, 0
    gm_box, wm_box = _scatter(brain, gm), _scatter(brain, wm)
    n_drawn = 0
    for focus in plan.foci:
        box, parts = draw_focus(focus, plan.cohort, axes_mm, rng, gm_box, wm_box, voxel_mm)
        if box is None:
            continue
        inside = brain[box]
        for name, part in parts.items():
            part *= inside
            if name not in compartments:
                compartments[name] = np.zeros(brain.shape, np.float32)
            np.maximum(compartments[name][box], part, out=compartments[name][box])
        total = sum(parts.values())
        visible = bool(np.any(total >= 0.5)) if parts else False
        n_drawn += visible
    return compartments, n_drawn


def _label(cohort: str, compartments: dict, brain: np.ndarray) -> np.ndarray:
    """Hard labels from soft compartments (box shape, uint8)."""
    zero = np.zeros(brain.shape, np.float32)
    if cohort == "stroke":
        lesion = compartments.get("cavity", zero) + compartments.get("gliosis", zero)
        return ((lesion >= 0.5) & brain).astype(np.uint8)
    enhancing = compartments.get("enhancing", zero)
    core = enhancing + sum((compartments.get(k, zero) for k in ("necrotic", "solid", "mismatch")), zero)
    edema = compartments.get("edema", zero)
    label = np.zeros(brain.shape, np.uint8)
    label[(core + edema >= 0.5) & brain] = 2
    in_core = (core >= 0.5) & brain
    label[in_core] = 1
    label[in_core & (2.0 * enhancing >= core)] = 4
    return label


def _render(compartments: dict, brain, gm, wm, csf, axes_mm, rng_contrast, rng_noise) -> dict[str, np.ndarray]:
    """Intensities of the brain voxels for every contrast (float32 1D arrays)."""
    lesion = {name: part[brain] for name, part in compartments.items()}
    if lesion:
        total = sum(lesion.values())
        over = total > 1.0
        if over.any():  # overlapping foci: renormalise so tissue + lesion fractions sum to 1
            for part in lesion.values():
                part[over] /= total[over]
            total[over] = 1.0
        tissue_share = 1.0 - total
    images = {}
    for contrast in CONTRASTS:
        gain = rng_contrast.uniform(0.85, 1.15)
        means = {k: v * gain * float(np.exp(rng_contrast.normal(0.0, 0.04)))
                 for k, v in CONTRAST_MEANS[contrast].items()}
        bias_sd = rng_contrast.uniform(0.05, 0.15)
        noise_fraction = rng_contrast.uniform(0.01, 0.035)
        bias = smooth_random_fields(rng_contrast, 1, axes_mm, _BIAS_SPACING_MM, _TEMPLATE_FOV_MM)[0][brain]
        values = gm * np.float32(means["gm"])
        values += wm * np.float32(means["wm"])
        values += csf * np.float32(means["csf"])
        if lesion:
            values *= tissue_share
            for name, part in lesion.items():
                values += part * np.float32(means[name])
        bias *= np.float32(bias_sd)
        values *= np.exp(bias, out=bias)
        images[contrast] = rician(rng_noise, values, noise_fraction * 800.0 * gain)
    return images


def _brats_window(subject: SyntheticSubject) -> tuple[np.ndarray, tuple]:
    brain = np.zeros(next(iter(subject.images.values())).shape, bool)
    for image in subject.images.values():
        brain |= image != 0
    if subject.label is not None:
        brain |= subject.label != 0
    return brats_window(brain, voxel_size(subject.affine))


def write_subject(subject: SyntheticSubject, layout: str, root: str | Path, index: int) -> dict:
    """Write one subject's files in ``layout`` under ``root`` (atomic NIfTI writes).

    A layout writes only the contrasts it has (see :mod:`kit.data.synth_layouts`); labelled layouts
    get an all-zero label for subjects without one (except 'flat', which writes labels only for the
    tumour and stroke cohorts). BraTS layouts are re-windowed to the BraTS grid.

    Args:
        subject: from :func:`make_subject`.
        layout: one of ``LAYOUTS``.
        root: dataset root folder (created if needed).
        index: subject index, used for the file names.

    Returns:
        {'subject': id, 'files': {contrast or 'label': path string}}.

    Example:
        >>> s = make_subject("healthy", 0, resolution_mm=4.0)  # doctest: +SKIP
        >>> write_subject(s, "ukb", "/tmp/ukb", 0)["subject"]  # doctest: +SKIP
        '1000000'
    """
    check_layout(layout)
    cohort = subject.phenotype.get("cohort")
    has_label = subject.label is not None or cohort in ("tumor", "stroke")
    paths = subject_paths(layout, root, index, with_label=has_label)
    images, label, affine = subject.images, subject.label, subject.affine
    code = NIFTI_MNI_CODE
    if layout.startswith("brats"):
        start, shape = _brats_window(subject)
        images = {k: crop_pad(v, start, shape) for k, v in images.items() if k in paths}
        label = None if label is None else crop_pad(label, start, shape)
        affine = shifted_affine(affine, start)
        code = NIFTI_SCANNER_CODE  # BraTS lives in SRI24, not MNI
    shape = next(iter(images.values())).shape
    files = {}
    for name, path in paths.items():
        if name == "label":
            data = layout_label(label, shape, layout)
            if data is None:
                continue
        else:
            if name not in images:
                raise ValueError(f"subject has no {name!r} image needed by layout {layout!r} ({path})")
            data = np.asarray(images[name], np.float32)
        save_nifti(data, affine, path, code)
        files[name] = str(path)
    return {"subject": subject_id(layout, index), "files": files}


def _participant_row(layout: str, index: int, phenotype: dict) -> dict:
    return {"subject": subject_id(layout, index), **phenotype}


def _make_and_write(job: tuple) -> dict:
    cohort, layout, index, out, seed, resolution_mm = job
    subject = make_subject(cohort, index, seed, resolution_mm)
    written = write_subject(subject, layout, out, index)
    return _participant_row(layout, index, subject.phenotype) | {"_files": written["files"]}


def _reusable_rows(cohort: str, layout: str, out: Path, seed: int, resolution_mm: float,
                   indices: range) -> dict[int, dict]:
    """Rows of subjects already complete on disk with the same cohort, seed and resolution."""
    rows = {}
    try:
        previous = {row["subject"]: row for row in read_participants(out / "participants.tsv")}
    except ValueError:
        return rows
    for index in indices:
        row = previous.get(subject_id(layout, index))
        if row is None or row.get("cohort") != cohort or row.get("seed") != str(seed):
            continue
        paths = subject_paths(layout, out, index, with_label=cohort != "healthy")
        if not all(p.exists() for p in paths.values()):
            continue
        try:
            zooms = nib.load(next(iter(paths.values()))).header.get_zooms()[:3]
        except Exception:  # unreadable file: regenerate it
            continue
        if np.allclose(zooms, resolution_mm):
            rows[index] = row
    return rows


def synth_cohort(cohort: str, layout: str, n: int, out: str | Path, seed: int = 0, resolution_mm: float = 1.0,
                 progress: bool = False, workers: int = 1, first_index: int = 0) -> list[str]:
    """Generate ``n`` subjects of ``cohort`` and write them in ``layout`` under ``out``.

    Writes every subject's NIfTI files and ``out/participants.tsv`` (rewritten atomically after each
    subject, so an interrupted run leaves a consistent table). Subjects whose files already exist with
    the same cohort, seed and resolution (per participants.tsv) are skipped, so reruns resume.
    Output is deterministic: the same seed gives the same arrays, whatever ``workers`` is.

    Args:
        cohort: 'healthy', 'tumor' or 'stroke'.
        layout: 'brats2021', 'brats2023', 'atlas2', 'ukb' or 'flat'.
        n: number of subjects (indices 0..n-1).
        out: dataset root folder.
        seed: cohort seed (>= 0).
        resolution_mm: voxel side in mm.
        progress: show a tqdm progress bar.
        workers: processes to use (1 = in this process).
        first_index: index of the first subject (subjects ``first_index .. first_index + n - 1``), so that
            an unlabelled pretraining pool can be written with subject IDs no labelled cohort uses
            (e.g. ``BraTS2021_10000`` onwards).

    Returns:
        Subject ids in index order.

    Example:
        >>> synth_cohort("tumor", "brats2021", n=2, out="/tmp/brats", resolution_mm=4.0)  # doctest: +SKIP
        ['BraTS2021_00000', 'BraTS2021_00001']
    """
    _check_cohort(cohort)
    check_layout(layout)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if first_index < 0:
        raise ValueError(f"first_index must be >= 0, got {first_index}")
    indices = range(int(first_index), int(first_index) + int(n))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _reusable_rows(cohort, layout, out, seed, float(resolution_mm), indices)
    jobs = [(cohort, layout, i, out, int(seed), float(resolution_mm)) for i in indices if i not in rows]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - len(jobs), desc=f"synth {cohort}->{layout}", unit="subject")

    def done(index: int, row: dict) -> None:
        row.pop("_files", None)
        rows[index] = row
        write_participants(out / "participants.tsv", [rows[i] for i in sorted(rows)])
        if bar is not None:
            bar.update(1)

    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                done(job[2], _make_and_write(job))
        else:
            with futures.ProcessPoolExecutor(max_workers=workers) as pool:
                pending = {pool.submit(_make_and_write, job): job[2] for job in jobs}
                for future in futures.as_completed(pending):
                    done(pending[future], future.result())
        if not jobs:
            write_participants(out / "participants.tsv", [rows[i] for i in sorted(rows)])
    finally:
        if bar is not None:
            bar.close()
    return [subject_id(layout, i) for i in indices]
