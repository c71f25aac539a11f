"""The run's cohorts: generate (synthetic) or find (real) each dataset, validate it, one datalist.

Stage 1 pretrains on the healthy cohort, stage 2 and fine-tuning use the tumour cohort, and the
stroke cohort serves the ATLAS-style lesion task. Synthetic cohorts are written in the real
datasets' layouts and validated with the real manifests, so real data takes the same path: with
``data_root``, each cohort is read from ``data_root/<manifest name>`` (e.g. ``DATA/ukb``,
``DATA/brats2021``, ``DATA/atlas2``).

The combined datalist is MONAI decathlon style with one data-list key per cohort, so
``monai.data.load_decathlon_datalist(path, data_list_key="tumor")`` loads a cohort's entries.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["is_real", "cohort_root", "check_data_root", "prepare_cohorts", "combined_datalist", "load_cohort"]

# Each cohort gets its own seed stream so adding subjects to one does not change another.
_COHORT_SEED_OFFSET = {"healthy": 0, "tumor": 1000, "stroke": 2000, "tumor_pool": 3000}


def is_real(spec: dict, data_root: str | Path | None) -> bool:
    """True when ``data_root`` holds this cohort's dataset (``data_root/<manifest>``); the other
    cohorts of a run are synthetic, so a data root may hold any subset of the datasets."""
    return bool(data_root) and (Path(data_root) / spec["manifest"]).is_dir()


def cohort_root(name: str, spec: dict, run_dir: str | Path, data_root: str | Path | None) -> Path:
    """Where a cohort's data lives: ``data_root/<manifest>`` for real data, else ``run_dir/data/<name>``."""
    if is_real(spec, data_root):
        return Path(data_root) / spec["manifest"]
    return Path(run_dir) / "data" / name


def _first_spacing(entry: dict) -> tuple[float, ...]:
    import nibabel as nib

    return tuple(float(z) for z in nib.load(entry["image"][0]).header.get_zooms()[:3])


def _synthetic_complete(root: Path, n: int) -> bool:
    table = root / "participants.tsv"
    if not table.exists():
        return False
    with table.open() as fh:
        return sum(1 for _ in csv.DictReader(fh, delimiter="\t")) == n


def prepare_cohorts(
    cohorts: dict,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    seed: int = 0,
    resolution_mm: float = 1.0,
    progress: bool = True,
) -> dict:
    """Generate missing synthetic cohorts (or locate real ones) and validate each against its manifest.

    Args:
        cohorts: ``{name: {"layout", "manifest", "n"}}`` as in a profile (:data:`kit.pipeline.PROFILES`);
            optional ``"kind"`` (the synthetic cohort, default the name: ``tumor_pool`` is ``kind: tumor``)
            and ``"first_index"`` (synthetic subject IDs start there). A cohort named ``*_pool`` is an
            unlabelled pretraining pool: on real data it is chosen among the subjects the other cohorts
            of the same dataset left, and any subject shared by two cohorts of one dataset is refused
            (:func:`kit.data.splits.check_disjoint`).
        run_dir: the run directory (synthetic data goes to ``run_dir/data/<name>``).
        data_root: directory with one real dataset per manifest name, or None for synthetic data.
        seed: run seed; each cohort derives its own.
        resolution_mm: voxel size of synthetic data.
        progress: progress bars while generating.

    Returns:
        ``{name: ValidationResult}``; problems are reported in the results, never raised, so one
        bad subject does not stop a run (it is simply left out of the datalist).

    Example:
        >>> results = prepare_cohorts(profile_config("smoke")["cohorts"], "runs/smoke")  # doctest: +SKIP
        >>> {k: len(r.subjects) for k, r in results.items()}  # doctest: +SKIP
    """
    from kit.data.real_cohorts import needs_resampling, pick_subjects, resample_subjects
    from kit.data.synth import synth_cohort
    from kit.data.validate import validate_dataset

    from kit.data.splits import check_disjoint

    results = {}
    taken: dict[str, set[str]] = {}  # manifest -> subjects already chosen by another cohort of the run
    # the labelled cohorts choose first, so an unlabelled pool on the same dataset takes what they leave
    for name, spec in sorted(cohorts.items(), key=lambda item: item[0].endswith("_pool")):
        cohort_seed = seed + _COHORT_SEED_OFFSET.get(name, 0)
        if is_real(spec, data_root):
            # a real dataset at the profile's scale: a seeded subset, resampled copies if needed
            real = validate_dataset(spec["manifest"], cohort_root(name, spec, run_dir, data_root), progress=progress)
            free = [e for e in real.subjects if str(e["subject"]) not in taken.get(spec["manifest"], set())]
            chosen = pick_subjects(free, int(spec["n"]), cohort_seed)
            taken.setdefault(spec["manifest"], set()).update(str(e["subject"]) for e in chosen)
            if any(needs_resampling(_first_spacing(e), resolution_mm) for e in chosen):
                copy = resample_subjects(chosen, real.root, Path(run_dir) / "data" / name, resolution_mm)
                results[name] = validate_dataset(spec["manifest"], copy, progress=progress)
                results[name].warnings.extend(real.warnings)
                results[name].problems.extend(real.problems)
            else:
                real.subjects = chosen
                results[name] = real
            continue
        root = cohort_root(name, spec, run_dir, None)
        if not _synthetic_complete(root, int(spec["n"])):
            synth_cohort(
                spec.get("kind", name),
                spec["layout"],
                n=int(spec["n"]),
                out=root,
                seed=cohort_seed,
                resolution_mm=resolution_mm,
                progress=progress,
                first_index=int(spec.get("first_index", 0)),
            )
        results[name] = validate_dataset(spec["manifest"], root, progress=progress)
        taken.setdefault(spec["manifest"], set()).update(str(e["subject"]) for e in results[name].subjects)
    # an unlabelled pool shares no subject with a labelled cohort of the same dataset (IDs checked, not assumed)
    for manifest in {spec["manifest"] for spec in cohorts.values()}:
        check_disjoint({name: [e["subject"] for e in results[name].subjects]
                        for name, spec in cohorts.items() if spec["manifest"] == manifest})
    return {name: results[name] for name in cohorts}


def check_data_root(cohorts: dict, data_root: str | Path) -> None:
    """Refuse a ``data_root`` that cannot hold the cohorts, before any notebook starts.

    A data root holds any subset of the cohorts' datasets, one folder per manifest name
    (``data_root/brats2021``); the cohorts without one are synthetic. At least one must be there,
    and in each, the manifest's subject glob must find a subject (a full check is
    :func:`kit.data.validate.validate_dataset`).

    Raises:
        ValueError: one line naming the folder and what is missing.

    Example:
        >>> check_data_root({"tumor": {"manifest": "brats2021"}}, "/nonexistent")
        Traceback (most recent call last):
        ...
        ValueError: --data-root /nonexistent: does not exist
    """
    import glob

    from kit.data.manifest import load_manifest

    root = Path(data_root)
    if not root.is_dir():
        raise ValueError(f"--data-root {root}: {'is not a directory' if root.exists() else 'does not exist'}")
    expected = ", ".join(f"{spec['manifest']}/" for spec in cohorts.values())
    present = {name: spec for name, spec in cohorts.items() if is_real(spec, root)}
    if not present:
        raise ValueError(f"--data-root {root}: holds none of the datasets' folders "
                         f"(one folder per manifest name, any of: {expected})")
    for name, spec in present.items():
        folder = cohort_root(name, spec, "", root)
        manifest = load_manifest(spec["manifest"])
        if not glob.glob(str(Path(glob.escape(str(folder))) / manifest.subjects_glob)):
            raise ValueError(f"{folder}: no subjects match the {manifest.name} manifest's glob "
                             f"'{manifest.subjects_glob}' (is this the {manifest.name} dataset?)")


def combined_datalist(results: dict) -> dict:
    """One decathlon-style dict with a data-list key per cohort and each cohort's metadata.

    Returns:
        ``{"name", "description", "cohorts": {name: {manifest, root, modality, labels, regions,
        numTraining, problems}}, name: [entries], ...}``.

    Raises:
        ValueError: a cohort has no clean subject (the first problem is named), so that no
            empty datalist is written.
    """
    from kit.data.validate import datalist_dict

    for name, result in results.items():
        if not result.subjects:
            first = f": {result.problems[0]}" if result.problems else ""
            raise ValueError(f"{result.root}: the {name} cohort has no clean subject "
                             f"({len(result.problems)} problems){first}")

    out: dict = {
        "name": "brainfm-kit cohorts",
        "description": "validated cohorts of one run; entries hold absolute paths in manifest channel order",
        "cohorts": {},
    }
    for name, result in results.items():
        single = datalist_dict(result)
        entries = single.pop("training")
        single["problems"] = [str(p) for p in result.problems]
        out["cohorts"][name] = single
        out[name] = entries
    return out


def load_cohort(datalist_path: str | Path, cohort: str) -> tuple[list[dict], dict]:
    """Entries and metadata of one cohort from a combined datalist (written by notebook 01).

    Example:
        >>> entries, meta = load_cohort("runs/smoke/01_curation/datalist.json", "tumor")  # doctest: +SKIP
        >>> list(meta["modality"].values())  # doctest: +SKIP
        ['flair', 't1ce', 't1', 't2']
    """
    import json

    path = Path(datalist_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: datalist not found; run notebook 01 (kit reproduce) first")
    data = json.loads(path.read_text())
    if cohort not in data.get("cohorts", {}):
        raise KeyError(f"{path}: no cohort {cohort!r}; it has {sorted(data.get('cohorts', {}))}")
    return data[cohort], data["cohorts"][cohort]
