"""The label-efficiency study: initialisations x label fractions x seeds on a fixed test set.

The seeds' central claim is that SSL pretraining (healthy brains first, then diseased ones)
makes models better with few labels. :func:`run_study` tests it the way a reader can trust:

- one fixed, stratified, subject-level test set per task (independent of the study seed);
- per seed, nested label-fraction subsets of the remaining subjects (:mod:`kit.data.splits`);
- every initialisation trains on exactly the same subjects with the same seed, so differences
  are paired (:func:`kit.finetune.stats.paired_difference`);
- a fixed validation split (``val_size`` subjects, disjoint from test and training) for model
  selection and early stopping (:mod:`kit.finetune.selection`), never the test set;
- label counts in subjects (``counts: [1, 2, 4, "all"]``), the informative regime of small
  cohorts, or label fractions;
- a leakage guard: a test, validation or labelled subject seen by a pretraining stage, or a
  checkpoint with no record of what it saw (:func:`kit.train.provenance.guard_leakage`), makes
  the study refuse to run (``leakage="refuse"``) or is flagged in every row and in
  ``leakage.json`` (``leakage="flag"``, for the published two-stage protocol, whose stage 2
  pretrains on every BraTS subject);
- one row per run appended to ``results.csv`` as soon as it finishes (its validation curve to
  ``curves.csv``, and one row per test subject to ``per_subject.csv``: the init, protocol, task,
  label count, seed, subject and every metric, for bootstraps over subjects,
  :func:`kit.finetune.stats.paired_bootstrap`), so an interrupted study resumes where it stopped; the run that was interrupted
  resumes from its last checkpoint in ``finetune_runs/`` beside the table (``ckpt_every``), which
  is removed once its row is written. Each row carries the :func:`settings_id` of its recipe and
  subjects: after a change to one task's ``config`` (or its split), a resumed study reruns only
  the runs whose id changed and keeps the others, never mixing two recipes in one table;
- ``workers`` fine-tunes at once on the CPU, each in its own process (one thread each on 2 cores).

Task specs are plain dicts::

    {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion"}
    {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor"}
    {"name": "tumor_present_probe", ..., "config": {"freeze_encoder": True}, "inits": ["scratch", "stage1+2"]}

``pool: "lesion"`` keeps subjects with a non-empty label (segmentation Dice on a tumour-free
case is undefined); classification keeps subjects with a value for ``target`` (IDH only exists
for gliomas) and stratifies on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from kit.data.splits import paired_seed_subsets, train_test_split
from kit.devices import resolve_device
from kit.finetune.evaluate import evaluate_classification, evaluate_segmentation
from kit.finetune.config import PROTOCOL_DEFAULTS, FinetuneConfig
from kit.finetune.data import class_table, is_missing
from kit.finetune.finetune import finetune
from kit.finetune.tables import add_rows, append_row, done_keys, drop_rows, write_json
from kit.train.provenance import guard_leakage

__all__ = ["task_pool", "study_splits", "study_design", "counts_to_fractions", "run_study", "RESULT_KEYS", "init_name",
           "objective_of_init", "pretrained_inits", "committed_inits", "kept_model_path", "count_overrides",
           "settings_id"]

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


def init_allowed(name: str, allowed: Sequence[str] | None) -> bool:
    """Whether a task's ``inits`` list takes the initialisation ``name`` (None: every init).

    A plain stage name matches that stage of every objective; a name with an objective matches
    only that one (``'swin_trio:stage1+2'`` is the run's default objective, named ``'stage1+2'``).

    Example:
        >>> [init_allowed(n, ["scratch", "stage1+2"]) for n in ("stage1+2", "mim:stage1+2", "stage1")]
        [True, True, False]
        >>> [init_allowed(n, ["swin_trio:stage1+2"]) for n in ("stage1+2", "mim:stage1+2")]
        [True, False]
    """
    if allowed is None:
        return True
    for entry in allowed:
        if ":" in entry:
            objective, stage = entry.split(":", 1)
            if name == init_name(stage, objective):
                return True
        elif name == entry or name.split(":")[-1] == entry:
            return True
    return False


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
    """Initialisations of a run: scratch and the checkpoints of notebooks 02 and 03, named by :func:`init_name`,
    plus the stage 1+2 checkpoint of every objective compared in notebook 03 (``RUN/03_stage2/objectives/NAME``).

    Example:
        >>> list(pretrained_inits("runs/x", "cross_contrast"))
        ['scratch', 'cross_contrast:stage1', 'cross_contrast:stage1+2']
    """
    run = Path(run_dir)
    inits = {
        "scratch": "scratch",
        init_name("stage1", objective): str(run / "02_stage1" / "checkpoint.pt"),
        init_name("stage1+2", objective): str(run / "03_stage2" / "checkpoint.pt"),
    }
    # the objectives compared with the run's own (kit.train.pretrain.pretrain_comparison): their stage 1+2
    for checkpoint in sorted((run / "03_stage2" / "objectives").glob("*/checkpoint.pt")):
        inits.setdefault(init_name("stage1+2", checkpoint.parent.name), str(checkpoint))
    return inits


def committed_inits(objectives: Sequence[str]) -> dict[str, str]:
    """The repository's pool-pretrained checkpoints as study inits, named ``init_name('pool', objective)``
    (``'pool'`` for swin_trio, ``'mim:pool'``...): stage 1 + 2 on unlabelled pools that hold no study
    subject (:func:`kit.train.pools.committed_checkpoint`; ``benchmarks/pretrain_pool.py`` makes them).

    Example:
        >>> sorted(committed_inits(["swin_trio", "mim"]))  # doctest: +SKIP
        ['mim:pool', 'pool']
    """
    from kit.train.pools import committed_checkpoint

    out = {}
    for objective in objectives:
        path, record = committed_checkpoint(objective)
        if record.get("partial"):
            steps = {k: f"{v.get('steps_done', v.get('steps'))}/{v.get('steps')}" for k, v in record["stages"].items()}
            print(f"note: the committed {objective} pretraining is partial (steps per stage {steps})", flush=True)
        out[init_name("pool", objective)] = str(path)
    return out


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


def _as_share(size: float, n: int, what: str) -> float:
    """A share of ``n`` from a fraction (< 1) or a count of subjects (>= 1)."""
    size = float(size)
    share = size if size < 1 else size / n
    if not 0 < share < 1:
        raise ValueError(f"study: {what} {size:g} does not fit a pool of {n} subjects")
    return share


def counts_to_fractions(counts: Sequence, n_pool: int) -> list[float]:
    """Label counts in subjects (ints, or 'all') as fractions of a training pool of ``n_pool``.

    ``label_fraction_subsets`` takes ``ceil(f * n)`` subjects, so the fraction ``c / n`` gives
    exactly ``c`` subjects; the results keep the fraction (and ``n_train``) per row.

    Example:
        >>> counts_to_fractions([1, 2, 4, "all"], 20)
        [0.05, 0.1, 0.2, 1.0]
    """
    out = []
    for c in counts:
        if isinstance(c, str):
            if c != "all":
                raise ValueError(f"study: label counts are ints or 'all', got {c!r}")
            out.append(1.0)
        elif not 1 <= int(c) <= n_pool:
            raise ValueError(f"study: label count {c} is outside 1..{n_pool} (the training pool)")
        else:
            out.append(int(c) / n_pool)
    return sorted(set(out))


def study_design(cache, spec: Mapping, fractions: Sequence[float] | None, seeds: Sequence[int], test_fraction: float,
                 min_subjects: int = 1, val_size: float = 0, counts: Sequence | None = None) -> dict:
    """Test set, validation set and per-seed nested training subsets of one task, as cache indices.

    The test set is drawn first from the task's pool (split seed 0, stratified), so it does not
    depend on ``val_size``; the validation set next, from the rest (also fixed across seeds);
    the training subsets last, per study seed, from what remains (no two seeds share their smallest
    subset while the pool allows: :func:`kit.data.splits.paired_seed_subsets`).

    Args:
        fractions: label fractions in (0, 1]; ignored when ``counts`` is given.
        test_fraction, val_size: a share of the pool (< 1) or a number of subjects (>= 1); val 0 = none.
        counts: label counts in subjects (ints or 'all'), see :func:`counts_to_fractions`.

    Returns:
        ``{"test": [...], "val": [...], "pool": n, "fractions": [...], "per_seed": {seed: {fraction: [...]}}}``.

    Example:
        >>> design = study_design(cache, {"task": "segmentation", "pool": "lesion"}, None, [0, 1], 20,
        ...                       val_size=6, counts=[1, 2, 4, "all"])  # doctest: +SKIP
    """
    idx, strata = task_pool(cache, spec)
    subject = {str(cache.entries[i]["subject"]): i for i in idx}
    ids = list(subject)
    strata_of = dict(zip(ids, strata)) if strata is not None else None
    train_ids, test_ids = train_test_split(ids, _as_share(test_fraction, len(ids), "test size"), seed=0, strata=strata)
    val_ids: list[str] = []
    if val_size:
        train_strata = [strata_of[s] for s in train_ids] if strata_of else None
        train_ids, val_ids = train_test_split(train_ids, _as_share(val_size, len(train_ids), "validation size"),
                                              seed=0, strata=train_strata)
    if counts is not None:
        fractions = counts_to_fractions(counts, len(train_ids))
    train_strata = [strata_of[s] for s in train_ids] if strata_of else None
    per_seed = {seed: {f: [subject[s] for s in ids_] for f, ids_ in subsets.items()}
                for seed, subsets in paired_seed_subsets(train_ids, fractions, seeds, train_strata, min_subjects).items()}
    return {"test": [subject[s] for s in test_ids], "val": [subject[s] for s in val_ids], "pool": len(train_ids),
            "fractions": [float(f) for f in sorted(fractions)], "per_seed": per_seed}


def study_splits(cache, spec: Mapping, fractions: Sequence[float], seeds: Sequence[int], test_fraction: float,
                 min_subjects: int = 1) -> tuple[list[int], dict[int, dict[float, list[int]]]]:
    """The fixed test set and, per seed, the nested training subsets, as cache indices
    (:func:`study_design` without a validation set).

    Returns:
        ``(test_indices, {seed: {fraction: train_indices}})``.
    """
    design = study_design(cache, spec, fractions, seeds, test_fraction, min_subjects)
    return design["test"], design["per_seed"]


def _finetune_config(base: Mapping, spec: Mapping, init: str, seed: int, device: str) -> FinetuneConfig:
    names = {f.name for f in fields(FinetuneConfig)}
    values = {k: v for k, v in {**base, **spec.get("config", {})}.items() if k in names}
    values.update(task=spec["task"], init=init, seed=int(seed), device=device, progress=False)
    if spec["task"] == "classification":
        values["target"] = spec["target"]
    return FinetuneConfig(**values)


def _run_folder_name(key: tuple) -> str:
    """A folder name for one run of the study: ``(init, task, fraction, seed)`` in safe characters."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "__".join(str(k) for k in key))


def settings_id(config: FinetuneConfig, train: Sequence[str], val: Sequence[str], test: Sequence[str]) -> str:
    """A short id of what defines one run's result: its fine-tuning settings and its subjects.

    A resumed study keeps a finished row only when the id matches, so a changed recipe (a task's
    ``config``, its validation split, its label counts) reruns exactly the runs it changes and
    keeps the rest. Where and how fast it runs (device, workers, progress) is left out, and so is
    the initialisation's checkpoint path (a moved run folder keeps its rows; the init's name is
    part of the row's key), except for a committed checkpoint that goes on changing (a
    ``provenance.json`` beside it, :func:`committed_inits`: a partial pretraining continued later):
    its sha256 counts, so rows fine-tuned from an older version run again. The protocol fields (``protocol``, ``lp_steps``, ``layer_decay``,
    ``encoder_lr_scale``, ``min_steps``) count only when set away from their defaults, so the rows
    of a study run before they existed keep their ids.

    Example:
        >>> a = settings_id(FinetuneConfig(steps=10), ["s1"], ["s2"], ["s3"])
        >>> a == settings_id(FinetuneConfig(steps=10, device="cpu"), ["s1"], ["s2"], ["s3"]), len(a)
        (True, 12)
        >>> a == settings_id(FinetuneConfig(steps=20), ["s1"], ["s2"], ["s3"])
        False
    """
    values = {k: v for k, v in asdict(config).items() if k not in ("device", "progress", "num_workers", "log_every", "init")}
    values = {k: v for k, v in values.items() if k not in PROTOCOL_DEFAULTS or v != PROTOCOL_DEFAULTS[k]}
    provenance = Path(str(config.init)).with_name("provenance.json") if config.init != "scratch" else None
    if provenance is not None and provenance.is_file():
        values["init_sha256"] = json.loads(provenance.read_text()).get("sha256")
    text = json.dumps({"config": values, "train": sorted(map(str, train)), "val": sorted(map(str, val)),
                       "test": sorted(map(str, test))}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def count_overrides(spec: Mapping, counts: Sequence | None, pool: int) -> dict[float, dict]:
    """A task's config overrides per label count (``spec["count_config"]``), keyed by label fraction.

    A longer schedule for the all-label cell, for example: with 34 subjects, 500 steps are 15 passes
    over each, against 500 for a single labelled subject.

    Args:
        spec: a task spec; ``count_config`` maps a count in ``counts`` (an int or ``"all"``) to config overrides.
        counts: the task's label counts (None: fractions, which take no per-count overrides).
        pool: training subjects in the task's pool (what ``"all"`` means).

    Example:
        >>> count_overrides({"count_config": {"all": {"steps": 900}}}, [1, 4, "all"], 34)
        {1.0: {'steps': 900}}
        >>> count_overrides({}, [1, "all"], 34)
        {}
    """
    table = spec.get("count_config") or {}
    if not table:
        return {}
    given = [str(c) for c in (counts or [])]
    unknown = sorted(str(c) for c in table if str(c) not in given)
    if unknown:
        raise ValueError(f"task {spec.get('name')!r}: count_config names counts {unknown} that are not among its counts {given}")
    fraction_of = dict(zip(given, counts_to_fractions(list(counts), pool)))
    return {float(fraction_of[str(c)]): dict(overrides) for c, overrides in table.items()}


@dataclass
class _Job:
    """One fine-tune of the study: what a worker process needs to run it and write nothing but its model."""

    key: tuple
    config: FinetuneConfig
    cache: object
    train_idx: list
    val_idx: list
    test_idx: list
    regions: Mapping | None
    label_values: Sequence | None
    classes: list | None
    target: str | None
    run_dir: Path
    save_path: Path | None
    n_seen: int
    run_id: str = ""


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_job(job: _Job) -> dict:
    """Fine-tune, test and (optionally) save one run; returns its results row and validation curve."""
    start = time.perf_counter()
    config, cache = job.config, job.cache
    is_seg = config.task == "segmentation"
    # The fine-tune's own run folder: a study killed mid-run resumes that fine-tune from its
    # last checkpoint (kit.train.train); the parent removes it once the row is written.
    result = finetune(config, cache, job.train_idx, regions=job.regions, label_values=job.label_values,
                      classes=job.classes, val_indices=job.val_idx, run_dir=job.run_dir)
    if is_seg:
        ev = evaluate_segmentation(result.model, cache, job.test_idx, result.regions, config.crop_shape,
                                   overlap=config.sw_overlap, sw_batch_size=config.sw_batch_size,
                                   amp=config.amp, inference=config.inference)
    else:
        ev = evaluate_classification(result.model, cache, job.test_idx, job.target, result.classes,
                                     config.input_shape, amp=config.amp)
    metrics = {k: v for k, v in ev.summary.items() if isinstance(v, (int, float)) and k != "n"}
    summary = result.summary
    label, task, fraction, seed = job.key
    row = {"init": label, "objective": objective_of_init(label), "protocol": config.protocol, "task": task,
           "label_fraction": float(fraction),
           "seed": int(seed), "n_train": len(job.train_idx), "n_test": int(ev.summary.get("n", len(job.test_idx))),
           "n_val": len(job.val_idx), **metrics, "steps_run": summary.get("steps_run"),
           "best_step": summary.get("best_step"), "val_first": summary.get("val_first"),
           "val_first_step": summary.get("val_first_step"), "best_val": summary.get("best_val"),
           "test_seen_in_pretraining": job.n_seen,
           "train_s": round(summary.get("wall_s", 0.0), 1), "wall_s": round(time.perf_counter() - start, 1),
           "settings_id": job.run_id}
    if job.save_path is not None:
        result.save(job.save_path, extra={"study_key": list(job.key),
                                          "test_subjects": [cache.entries[i]["subject"] for i in job.test_idx]})
    # one row per test subject (per_subject.csv): what a bootstrap over subjects resamples
    keys = {k: row[k] for k in ("init", "objective", "protocol", "task", "label_fraction", "n_train", "seed", "settings_id")}
    subjects = [{**keys, **{k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}}
                for rec in ev.per_subject.to_dict("records")]
    return {"row": row, "val_history": list(result.val_history), "per_subject": subjects}


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
    val_size: float = 0,
    counts: Sequence | None = None,
    leakage: str = "refuse",
    workers: int = 1,
) -> pd.DataFrame:
    """Run (or resume) the study and return the full results table.

    Args:
        caches: cohort name -> :class:`kit.data.cache.CacheIndex` (with labels).
        tasks: task specs (see the module docstring); ``spec["config"]`` overrides ``base_config``,
            ``spec["inits"]``, ``spec["fractions"]`` and ``spec["seeds"]`` restrict the initialisations,
            fractions and seeds of that task.
        inits: initialisation name -> 'scratch' or a checkpoint path, e.g.
            ``{"scratch": "scratch", "stage1": ".../02_stage1/checkpoint.pt", "stage1+2": ...}``; names
            may carry the objective (``"mim:stage1+2"``, see :func:`label`), and a task's ``inits``
            list of plain stage names matches them. Every row records ``objective_of_init(init)``.
        fractions: label fractions, e.g. (0.05, 0.25, 1.0).
        seeds: study seeds.
        base_config: :class:`kit.finetune.FinetuneConfig` fields shared by every run.
        out_csv: results file (``init, task, label_fraction, seed, n_train, n_test, metrics...``).
        test_fraction: share of each task's pool held out as the fixed test set (>= 1: a count).
        val_size: validation subjects per task (share or count; 0 = no model selection), fixed
            across seeds and inits, for ``val_every`` / ``patience`` in the config.
        counts: label counts in subjects (e.g. ``[1, 2, 4, "all"]``) instead of ``fractions``;
            ``spec["counts"]`` overrides it per task.
        leakage: 'refuse' (raise when a test, validation or labelled subject was seen by a pretraining
            stage of an init, or when an init's checkpoint has no seen-subjects record) or 'flag' (run,
            and record the overlap per row (test subjects) and in ``leakage.json`` (every role)).
        regions, label_values: per cohort, the manifest's segmentation regions and label values.
        device: 'auto', 'cpu' or 'cuda'.
        save_models: ``f(init, task, fraction, seed) -> path or None``; the trained model of a run
            is saved there (e.g. the 100 % models notebook 05 explains).
        progress: print one line per finished run.
        workers: fine-tunes run at once on the CPU, each in its own process with ``cpu_count // workers``
            threads (small 3D convolutions use two threads poorly: two one-thread runs give 1.43x the
            throughput on 2 cores, ``benchmarks/bench_study_workers.py``); 1, or a GPU, runs them one
            after another in this process. Every
            run is seeded, so its result does not depend on ``workers`` beyond floating-point order.

    Returns:
        The results table (every row of ``out_csv``).

    Example:
        >>> run_study({"tumor": cache}, [{"name": "tumor_seg", "task": "segmentation", "cohort": "tumor",
        ...            "pool": "lesion"}], {"scratch": "scratch"}, (0.25, 1.0), (0, 1),
        ...           {"steps": 20, "crop": 32}, "results.csv")  # doctest: +SKIP
    """
    if leakage not in ("refuse", "flag"):
        raise ValueError(f"run_study: leakage must be 'refuse' or 'flag', got {leakage!r}")
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    curves_csv = out_csv.with_name("curves.csv")
    subjects_csv = out_csv.with_name("per_subject.csv")
    runs_dir = out_csv.parent / "finetune_runs"
    done = done_keys(out_csv)
    leaks: dict = {}
    jobs: list[_Job] = []
    stale: set[tuple] = set()
    for spec in tasks:
        cache = caches[spec["cohort"]]
        is_seg = spec["task"] == "segmentation"
        task_counts = spec.get("counts", counts)
        task_fractions = None if task_counts is not None else [float(f) for f in spec.get("fractions", fractions)]
        design = study_design(cache, spec, task_fractions, spec.get("seeds", seeds), test_fraction, min_subjects=1 if is_seg else 2,
                              val_size=spec.get("val_size", val_size), counts=task_counts)
        test_idx, val_idx, per_seed = design["test"], design["val"], design["per_seed"]
        task_fractions = design["fractions"]
        test_subjects = [str(cache.entries[i]["subject"]) for i in test_idx]
        task_inits = {k: v for k, v in inits.items() if init_allowed(k, spec.get("inits"))}
        roles = {"test": test_subjects, "validation": [str(cache.entries[i]["subject"]) for i in val_idx],
                 "labelled": sorted({str(cache.entries[i]["subject"]) for subsets in per_seed.values()
                                     for chosen in subsets.values() for i in chosen})}
        task_leaks = guard_leakage(task_inits, roles, leakage, f"run_study: task {spec['name']!r}")
        if task_leaks:
            leaks[spec["name"]] = task_leaks
            write_json(out_csv.with_name("leakage.json"), leaks)
        classes = None
        if not is_seg:
            classes = class_table([cache.entries[i][spec["target"]] for i in task_pool(cache, spec)[0]])
        by_count = count_overrides(spec, task_counts, design["pool"])
        for seed in spec.get("seeds", seeds):
            for fraction in sorted(task_fractions):
                for label, init in task_inits.items():
                    key = (label, spec["name"], float(fraction), int(seed))
                    run_spec = {**spec, "config": {**spec.get("config", {}), **by_count.get(float(fraction), {})}}
                    config = _finetune_config(base_config, run_spec, init, seed, device)
                    train_idx = list(per_seed[int(seed)][float(fraction)])
                    run_id = settings_id(config, [cache.entries[i]["subject"] for i in train_idx],
                                         [cache.entries[i]["subject"] for i in val_idx], test_subjects)
                    if key in done:
                        if done[key] in (None, run_id):  # None: a row from before settings ids, trusted
                            continue
                        stale.add(key)
                    jobs.append(_Job(
                        key=key, config=config, cache=cache, run_id=run_id,
                        train_idx=train_idx, val_idx=list(val_idx), test_idx=list(test_idx),
                        regions=(regions or {}).get(spec["cohort"]) if is_seg else None,
                        label_values=(label_values or {}).get(spec["cohort"]) if is_seg else None,
                        classes=classes, target=spec.get("target"), run_dir=runs_dir / _run_folder_name(key),
                        save_path=save_models(*key) if save_models is not None else None,
                        n_seen=len(task_leaks.get(label, {}).get("roles", {}).get("test", []))))

    if stale:
        # rows of another recipe must not be mixed with this one's: they run again
        drop_rows(out_csv, stale)
        drop_rows(curves_csv, stale)
        drop_rows(subjects_csv, stale)
        for key in stale:
            shutil.rmtree(runs_dir / _run_folder_name(key), ignore_errors=True)
        if progress:
            print(f"run_study: {len(stale)} finished run(s) were made with other settings and run again: "
                  f"{sorted({k[1] for k in stale})}", flush=True)

    def record(job: _Job, out: dict) -> None:
        # only this (the parent) process writes the tables, so parallel runs never interleave rows
        add_rows(subjects_csv, out.get("per_subject", []), replace=job.key)  # before the row: a row implies its subjects
        append_row(out_csv, out["row"])
        for rec in out["val_history"]:  # the learning curve (validation metric vs step)
            append_row(curves_csv, {**{k: out["row"][k] for k in ("init", "task", "label_fraction", "seed", "n_train")},
                                     **{k: v for k, v in rec.items() if k != "best"}, "best": int(bool(rec.get("best")))})
        done[job.key] = job.run_id
        shutil.rmtree(job.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            runs_dir.rmdir()  # once empty
        if progress:
            row = out["row"]
            shown = {k: round(v, 3) for k, v in row.items() if k in ("dice_mean", "auc", "accuracy")}
            print(f"{row['task']:>14} {row['init']:>9} fraction {row['label_fraction']:<5g} seed {row['seed']} "
                  f"n_train {row['n_train']:>3}: {shown} ({row['wall_s']:.0f} s)", flush=True)

    workers = max(1, int(workers))
    if workers == 1 or len(jobs) < 2 or any(resolve_device(job.config.device).type != "cpu" for job in jobs):
        for job in jobs:
            record(job, _run_job(job))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn: a forked child would inherit the parent's torch thread pool and any open notebook state
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
            pending = {pool.submit(_run_job, job): job for job in jobs}
            for future in as_completed(pending):
                record(pending[future], future.result())
    return pd.read_csv(out_csv) if out_csv.exists() else pd.DataFrame(columns=list(RESULT_KEYS))
