"""The label-efficiency study: initialisations x label fractions x seeds on a fixed test set.

The seeds' central claim is that SSL pretraining (healthy brains first, then diseased ones)
makes models better with few labels. :func:`run_study` tests it the way a reader can trust:

- one fixed, stratified, subject-level test set per task (independent of the study seed);
- per seed, nested label-fraction subsets of the remaining subjects (:mod:`kit.data.splits`);
- every initialisation trains on exactly the same subjects with the same seed, so differences
  are paired (:func:`kit.train.stats.paired_difference`);
- one row per run appended to ``results.csv`` as soon as it finishes, so an interrupted study
  resumes where it stopped.

Task specs are plain dicts::

    {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion"}
    {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor"}
    {"name": "tumor_present_probe", ..., "config": {"freeze_encoder": True}, "inits": ["scratch", "stage1+2"]}

``pool: "lesion"`` keeps subjects with a non-empty label (segmentation Dice on a tumour-free
case is undefined); classification keeps subjects with a value for ``target`` (IDH only exists
for gliomas) and stratifies on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from kit.data.splits import label_fraction_subsets, train_test_split
from kit.train.evaluate import evaluate_classification, evaluate_segmentation
from kit.train.finetune import FinetuneConfig, class_table, finetune, is_missing

__all__ = ["task_pool", "study_splits", "run_study", "RESULT_KEYS", "init_name", "objective_of_init",
           "pretrained_inits", "kept_model_path"]

RESULT_KEYS = ("init", "task", "label_fraction", "seed")

#: The kit's first objective: its inits keep their plain names (``stage1``, ``stage1+2``).
DEFAULT_OBJECTIVE = "swin_trio"


def init_name(stage: str, objective: str | None = None) -> str:
    """The study's name of an initialisation: ``'scratch'``, or a stage carrying its objective
    (``'cross_contrast:stage1+2'``); swin_trio's stages keep their plain names (``'stage1+2'``).

    Example:
        >>> init_name("stage1+2", "mim"), init_name("stage1+2", "swin_trio"), init_name("scratch", "mim")
        ('mim:stage1+2', 'stage1+2', 'scratch')
    """
    stage = stage.split(":")[-1]
    if stage == "scratch" or objective in (None, DEFAULT_OBJECTIVE):
        return stage
    return f"{objective}:{stage}"


def objective_of_init(name: str) -> str:
    """The objective an initialisation was pretrained with (``'none'`` for scratch).

    Example:
        >>> objective_of_init("mim:stage1"), objective_of_init("stage1+2"), objective_of_init("scratch")
        ('mim', 'swin_trio', 'none')
    """
    if name == "scratch":
        return "none"
    return name.split(":")[0] if ":" in name else DEFAULT_OBJECTIVE


def pretrained_inits(run_dir: str | Path, objective: str | None = None) -> dict[str, str]:
    """Initialisations of a run: scratch and the checkpoints of notebooks 02 and 03, named by :func:`init_name`.

    Example:
        >>> list(pretrained_inits("runs/x", "cross_contrast"))
        ['scratch', 'cross_contrast:stage1', 'cross_contrast:stage1+2']
    """
    run = Path(run_dir)
    return {
        "scratch": "scratch",
        init_name("stage1", objective): str(run / "02_stage1" / "checkpoint.pt"),
        init_name("stage1+2", objective): str(run / "03_stage2" / "checkpoint.pt"),
    }


def kept_model_path(models_dir: str | Path, task: str, init: str) -> Path:
    """Where the study keeps a task's model for an initialisation (``':'`` is not portable in file names).

    Example:
        >>> kept_model_path("m", "tumor_seg", "mim:stage1+2").name
        'tumor_seg__mim-stage1+2.pt'
    """
    return Path(models_dir) / f"{task}__{init.replace(':', '-')}.pt"


def task_pool(cache, spec: Mapping) -> tuple[list[int], list | None]:
    """Cache indices eligible for a task and their strata (None when not stratified).

    Example:
        >>> idx, strata = task_pool(cache, {"task": "classification", "target": "idh"})  # doctest: +SKIP
    """
    entries = cache.entries
    if spec["task"] == "segmentation":
        labels = cache.labels()
        idx = [i for i, lab in enumerate(labels) if lab is not None and (spec.get("pool") != "lesion" or np.any(np.asarray(lab)))]
        strata = [str(entries[i].get("tumor_type", "")) for i in idx] if "tumor_type" in entries[0] else None
        return idx, strata
    target = spec["target"]
    idx = [i for i, e in enumerate(entries) if not is_missing(e.get(target))]
    return idx, [str(entries[i][target]) for i in idx]


def study_splits(cache, spec: Mapping, fractions: Sequence[float], seeds: Sequence[int], test_fraction: float,
                 min_subjects: int = 1) -> tuple[list[int], dict[int, dict[float, list[int]]]]:
    """The fixed test set and, per seed, the nested training subsets, as cache indices.

    Returns:
        ``(test_indices, {seed: {fraction: train_indices}})``.
    """
    idx, strata = task_pool(cache, spec)
    subject = {str(cache.entries[i]["subject"]): i for i in idx}
    ids = list(subject)
    train_ids, test_ids = train_test_split(ids, test_fraction, seed=0, strata=strata)
    strata_of = dict(zip(ids, strata)) if strata is not None else None
    train_strata = [strata_of[s] for s in train_ids] if strata_of else None
    per_seed = {}
    for seed in seeds:
        subsets = label_fraction_subsets(train_ids, fractions, seed, train_strata, min_subjects)
        per_seed[int(seed)] = {f: [subject[s] for s in ids_] for f, ids_ in subsets.items()}
    return [subject[s] for s in test_ids], per_seed


def _finetune_config(base: Mapping, spec: Mapping, init: str, seed: int, device: str) -> FinetuneConfig:
    names = {f.name for f in fields(FinetuneConfig)}
    values = {k: v for k, v in {**base, **spec.get("config", {})}.items() if k in names}
    values.update(task=spec["task"], init=init, seed=int(seed), device=device, progress=False)
    if spec["task"] == "classification":
        values["target"] = spec["target"]
    return FinetuneConfig(**values)


def _done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    done = pd.read_csv(path)
    return {(str(r.init), str(r.task), float(r.label_fraction), int(r.seed)) for r in done.itertuples()}


def _append_row(path: Path, row: dict) -> None:
    # append, then fsync: a killed study keeps every finished run
    frame = pd.DataFrame([row])
    header = not path.exists()
    if not header:
        columns = list(pd.read_csv(path, nrows=0).columns)
        if set(frame.columns) - set(columns):  # a new metric column: rewrite with the union
            merged = pd.concat([pd.read_csv(path), frame], ignore_index=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            merged.to_csv(tmp, index=False)
            os.replace(tmp, path)
            return
        frame = frame.reindex(columns=columns)
    with open(path, "a") as fh:
        frame.to_csv(fh, index=False, header=header)
        fh.flush()
        os.fsync(fh.fileno())


def run_study(
    caches: Mapping[str, object],
    tasks: Sequence[Mapping],
    inits: Mapping[str, str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    base_config: Mapping,
    out_csv: str | Path,
    *,
    test_fraction: float = 0.3,
    regions: Mapping[str, Mapping] | None = None,
    label_values: Mapping[str, Sequence[int]] | None = None,
    device: str = "auto",
    save_models: Callable[[str, str, float, int], Path | None] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) the study and return the full results table.

    Args:
        caches: cohort name -> :class:`kit.data.cache.CacheIndex` (with labels).
        tasks: task specs (see the module docstring); ``spec["config"]`` overrides ``base_config``,
            ``spec["inits"]`` and ``spec["fractions"]`` restrict the initialisations and fractions.
        inits: initialisation name -> 'scratch' or a checkpoint path, e.g.
            ``{"scratch": "scratch", "stage1": ".../02_stage1/checkpoint.pt", "stage1+2": ...}``; names
            may carry the objective (``"mim:stage1+2"``, see :func:`label`), and a task's ``inits``
            list of plain stage names matches them. Every row records ``objective_of_init(init)``.
        fractions: label fractions, e.g. (0.05, 0.25, 1.0).
        seeds: study seeds.
        base_config: :class:`kit.train.finetune.FinetuneConfig` fields shared by every run.
        out_csv: results file (``init, task, label_fraction, seed, n_train, n_test, metrics...``).
        test_fraction: share of each task's pool held out as the fixed test set.
        regions, label_values: per cohort, the manifest's segmentation regions and label values.
        device: 'auto', 'cpu' or 'cuda'.
        save_models: ``f(init, task, fraction, seed) -> path or None``; the trained model of a run
            is saved there (e.g. the 100 % models notebook 05 explains).
        progress: print one line per finished run.

    Returns:
        The results table (every row of ``out_csv``).

    Example:
        >>> run_study({"tumor": cache}, [{"name": "tumor_seg", "task": "segmentation", "cohort": "tumor",
        ...            "pool": "lesion"}], {"scratch": "scratch"}, (0.25, 1.0), (0, 1),
        ...           {"steps": 20, "crop": 32}, "results.csv")  # doctest: +SKIP
    """
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    done = _done_keys(out_csv)
    for spec in tasks:
        cache = caches[spec["cohort"]]
        is_seg = spec["task"] == "segmentation"
        task_fractions = [float(f) for f in spec.get("fractions", fractions)]
        test_idx, per_seed = study_splits(cache, spec, task_fractions, seeds, test_fraction, min_subjects=1 if is_seg else 2)
        classes = None
        if not is_seg:
            classes = class_table([cache.entries[i][spec["target"]] for i in task_pool(cache, spec)[0]])
        for seed in seeds:
            for fraction in sorted(task_fractions):
                for label, init in inits.items():
                    allowed = spec.get("inits")
                    if allowed is not None and label not in allowed and label.split(":")[-1] not in allowed:
                        continue  # e.g. stroke (T1 only) is not studied from the tumour stage
                    key = (label, spec["name"], float(fraction), int(seed))
                    if key in done:
                        continue
                    config = _finetune_config(base_config, spec, init, seed, device)
                    start = time.perf_counter()
                    train_idx = per_seed[int(seed)][float(fraction)]
                    result = finetune(
                        config, cache, train_idx,
                        regions=(regions or {}).get(spec["cohort"]) if is_seg else None,
                        label_values=(label_values or {}).get(spec["cohort"]) if is_seg else None,
                        classes=classes,
                    )
                    if is_seg:
                        ev = evaluate_segmentation(result.model, cache, test_idx, result.regions, config.crop_shape,
                                                   overlap=config.sw_overlap, sw_batch_size=config.sw_batch_size,
                                                   amp=config.amp)
                    else:
                        ev = evaluate_classification(result.model, cache, test_idx, spec["target"], result.classes,
                                                     config.input_shape, amp=config.amp)
                    metrics = {k: v for k, v in ev.summary.items() if isinstance(v, (int, float)) and k != "n"}
                    row = {"init": label, "objective": objective_of_init(label), "task": spec["name"],
                           "label_fraction": float(fraction), "seed": int(seed),
                           "n_train": len(train_idx), "n_test": int(ev.summary.get("n", len(test_idx))),
                           **metrics, "train_s": round(result.summary.get("wall_s", 0.0), 1),
                           "wall_s": round(time.perf_counter() - start, 1)}
                    _append_row(out_csv, row)
                    done.add(key)
                    if save_models is not None:
                        path = save_models(*key)
                        if path is not None:
                            result.save(path, extra={"study_key": list(key), "test_subjects": [cache.entries[i]["subject"] for i in test_idx]})
                    if progress:
                        shown = {k: round(v, 3) for k, v in metrics.items() if k in ("dice_mean", "auc", "accuracy")}
                        print(f"{spec['name']:>14} {label:>9} fraction {fraction:<5g} seed {seed} "
                              f"n_train {len(train_idx):>3}: {shown} ({row['wall_s']:.0f} s)", flush=True)
    return pd.read_csv(out_csv)
