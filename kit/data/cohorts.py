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

__all__ = ["cohort_root", "check_data_root", "prepare_cohorts", "combined_datalist", "load_cohort"]

# Each cohort gets its own seed stream so adding subjects to one does not change another.
_COHORT_SEED_OFFSET = {"healthy": 0, "tumor": 1000, "stroke": 2000}


def cohort_root(name: str, spec: dict, run_dir: str | Path, data_root: str | Path | None) -> Path:
    """Where a cohort's data lives: ``data_root/<manifest>`` for real data, else ``run_dir/data/<name>``."""
    if data_root:
        return Path(data_root) / spec["manifest"]
    return Path(run_dir) / "data" / name


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
        cohorts: ``{name: {"layout", "manifest", "n"}}`` as in a profile (:data:`kit.pipeline.PROFILES`).
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
    from kit.data.synth import synth_cohort
    from kit.data.validate import validate_dataset

    results = {}
    for name, spec in cohorts.items():
        root = cohort_root(name, spec, run_dir, data_root)
        if data_root is None and not _synthetic_complete(root, int(spec["n"])):
            synth_cohort(
                name,
                spec["layout"],
                n=int(spec["n"]),
                out=root,
                seed=seed + _COHORT_SEED_OFFSET.get(name, 0),
                resolution_mm=resolution_mm,
                progress=progress,
            )
        results[name] = validate_dataset(spec["manifest"], root, progress=progress)
    return results


def check_data_root(cohorts: dict, data_root: str | Path) -> None:
    """Refuse a ``data_root`` that cannot hold the cohorts, before any notebook starts.

    Each cohort's data must be a folder ``data_root/<manifest name>`` in which the manifest's
    subject glob finds at least one subject (a full check is :func:`kit.data.validate.validate_dataset`).

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
    for name, spec in cohorts.items():
        folder = cohort_root(name, spec, "", root)
        if not folder.is_dir():
            raise ValueError(f"--data-root {root}: no {spec['manifest']}/ folder for the {name} cohort "
                             f"(a data root holds one folder per manifest: {expected})")
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
