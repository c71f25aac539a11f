"""Notebook 04's 2D path: the slice task on a run pretrained with a 2D objective (MoCo v3 on slices).

When notebooks 02-03 pretrain an objective whose ``spatial_dims`` is 2 (``moco_v3``: a 2D ResNet on
the slices that notebook 01's filter keeps, after the tailored-curation paper, Computerized Medical
Imaging and Graphics 123, 2025), the 3D tasks cannot use its checkpoints. The downstream evaluation
is then the paper's: a slice classifier, tumour present vs absent per slice, with

- label counts in *subjects* (never one subject's slices on both sides), nested per seed, the same
  subjects for every initialisation (paired seeds), one fixed test set of subjects;
- initialisations ``scratch``, the run's curated ``<objective>:stage1+2`` and, with the profile's
  ``uncurated`` setting, ``<objective>:stage1+2 uncurated``: the same two pretraining stages with
  the same budget on *every* slice of the same subjects (the paper's curation ablation);
- the profile's ``finetune.slice_study`` settings (counts, seeds, test size, modes, step budget).

An ImageNet-pretrained init (the paper's other baseline) needs downloaded weights; the kit runs
offline and does not fake one.

Example:
    >>> results = run_slice_finetune("smoke", "runs/x", "moco_v3", device="cpu")  # doctest: +SKIP
    >>> report = summarise_slice_study(results, "moco_v3:stage1+2")  # doctest: +SKIP
    >>> print(report["verdict"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["is_slice_objective", "slice_study_settings", "pretrain_uncurated", "slice_inits", "slice_test_split",
           "run_slice_finetune", "study_table", "summarise_slice_study", "SLICE_TASK", "UNCURATED"]

#: Name of the 2D task in results.csv and of its kept models (``models/tumor_present_2d__<init>.pt``).
SLICE_TASK = "tumor_present_2d"
#: Suffix of the init pretrained on every slice instead of the curated ones.
UNCURATED = "uncurated"


def is_slice_objective(objective: str | None) -> bool:
    """True when ``objective`` (a registered SSL objective name) trains on 2D slices (``spatial_dims`` 2).

    Example:
        >>> is_slice_objective("moco_v3"), is_slice_objective("swin_trio")
        (True, False)
    """
    from kit.ssl.base import objective_class

    return getattr(objective_class(objective or "swin_trio"), "spatial_dims", 3) == 2


def slice_study_settings(profile: str, objective: str) -> dict[str, Any]:
    """The 2D study's settings, resolved once from the profile: its ``finetune.slice_study``, the stage's 2D
    backbone and slices, its ``finetune.leakage`` and the settings of both pretraining stages (what
    :func:`pretrain_uncurated` repeats), so the rest of the 2D path reads plain values, not the profile.

    Returns:
        ``{'counts', 'seeds', 'test_fraction', 'modes', 'uncurated', 'config', 'backbone', 'model',
        'slices': {'axis', 'size', 'channels', 'curated'}, 'leakage', 'stages': [stage 1, stage 2]}``.

    Example:
        >>> s = slice_study_settings("smoke", "moco_v3")
        >>> s["backbone"], s["slices"]["size"], s["counts"], s["leakage"], s["stages"][1]["cohort"]
        ('resnet18_2d', 48, [1, 'all'], 'refuse', 'tumor_pool')
    """
    from kit.profiles import profile_config
    from kit.train.pretrain import stage_settings

    if not is_slice_objective(objective):
        raise ValueError(f"objective {objective!r} trains on volumes (spatial_dims 3), not on 2D slices")
    stages = [stage_settings(profile, stage, objective) for stage in (1, 2)]
    profile_finetune = profile_config(profile)["finetune"]
    study = profile_finetune.get("slice_study")
    if study is None:
        raise ValueError(f"profile {profile!r} has no finetune.slice_study settings for the 2D path")
    return {**copy.deepcopy(study), "backbone": stages[1]["backbone"], "model": dict(stages[1].get("model", {})),
            "slices": dict(stages[1]["slices"]), "leakage": profile_finetune.get("leakage", "refuse"), "stages": stages}


def pretrain_uncurated(stages: Sequence[Mapping[str, Any]], run_dir: str | Path, objective: str, out_dir: str | Path, *,
                       seed: int = 0, device: str = "auto", progress: bool = False) -> Path:
    """Stages 1 and 2 of ``objective`` again, with the same settings and budget, on every slice (not the curated ones).

    ``stages`` are the two stages' settings (``slice_study_settings(...)["stages"]``). Stage 1 trains
    on the healthy cohort into ``out_dir/stage1``, stage 2 on the tumour cohort from stage 1's
    weights into ``out_dir/stage2``; both resume (or return at once) when run again.

    Returns:
        Path of the stage-2 checkpoint.

    Example:
        >>> stages = slice_study_settings("smoke", "moco_v3")["stages"]
        >>> pretrain_uncurated(stages, "runs/x", "moco_v3", "runs/x/04_finetune/uncurated", device="cpu")  # doctest: +SKIP
        PosixPath('runs/x/04_finetune/uncurated/stage2/checkpoint.pt')
    """
    from kit.data.cohorts import load_cohort
    from kit.train.pretrain import STAGE_SETTINGS, prepare_pretraining, run_pretraining

    run, out = Path(run_dir), Path(out_dir)
    init = None
    for stage, settings in zip((1, 2), stages):
        config = copy.deepcopy(dict(settings))
        if config.get("slices") is None:
            raise ValueError(f"objective {objective!r}: stage {stage} has no slice settings; nothing to un-curate")
        config["slices"] = {**config["slices"], "curated": False}
        cohort = config.get("cohort", STAGE_SETTINGS[stage][1])
        entries, meta = load_cohort(run / "01_curation" / "datalist.json", cohort)
        modalities = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
        setup = prepare_pretraining(config, entries, modalities, out / f"stage{stage}", seed=seed, device=device,
                                    progress=progress, slices=run / "01_curation" / "slices.csv", cohort=cohort)
        run_pretraining(setup, init_checkpoint=init)
        init = out / f"stage{stage}" / "checkpoint.pt"
    return init


def slice_inits(run_dir: str | Path, objective: str, uncurated: str | Path | None = None) -> dict[str, str]:
    """``{name: 'scratch' | checkpoint}``: scratch, the run's curated stage 1+2 and the uncurated one if given.

    Example:
        >>> slice_inits("runs/x", "moco_v3", "u.pt")  # doctest: +NORMALIZE_WHITESPACE
        {'scratch': 'scratch', 'moco_v3:stage1+2': 'runs/x/03_stage2/checkpoint.pt',
         'moco_v3:stage1+2 uncurated': 'u.pt'}
    """
    from kit.finetune.study import init_name

    final = init_name("stage1+2", objective)
    inits = {"scratch": "scratch", final: str(Path(run_dir) / "03_stage2" / "checkpoint.pt")}
    if uncurated is not None:
        inits[f"{final} {UNCURATED}"] = str(uncurated)
    return inits


def study_table(results: pd.DataFrame, task: str = SLICE_TASK) -> pd.DataFrame:
    """:func:`kit.finetune.slice_task.slice_study` rows in the 3D study's layout for :mod:`kit.finetune.stats`.

    ``fraction`` -> ``label_fraction``, ``n_train_subjects`` -> ``n_train``, and ``task`` =
    ``'<task>:<mode>'`` (probe and fine-tune are separate curves).

    Example:
        >>> rows = pd.DataFrame({"init": ["scratch"], "mode": ["finetune"], "fraction": [1.0], "seed": [0],
        ...                      "n_train_subjects": [5], "auc": [0.9]})
        >>> study_table(rows)[["task", "label_fraction", "n_train"]].values.tolist()
        [['tumor_present_2d:finetune', 1.0, 5]]
    """
    out = results.rename(columns={"fraction": "label_fraction", "n_train_subjects": "n_train"})
    return out.assign(task=[f"{task}:{m}" for m in out["mode"]])


def slice_test_split(cache, slices, test_fraction: float, axis: int = 2, cohort: str | None = None) -> list[str]:
    """The fixed test subjects of :func:`kit.finetune.slice_task.slice_study` (:func:`kit.finetune.slice_task.subject_split`).

    Example:
        >>> slice_test_split(cache, "runs/x/01_curation/slices.csv", 0.3, cohort="tumor")  # doctest: +SKIP
        ['BraTS2021_00001', 'BraTS2021_00004']
    """
    from kit.data.slices import SliceDataset
    from kit.finetune.slice_task import subject_split

    return subject_split(SliceDataset(cache, slices, axis=axis, cohort=cohort, size=8), test_fraction)[1]


def run_slice_finetune(
    profile: str,
    run_dir: str | Path,
    objective: str,
    *,
    seed: int = 0,
    device: str = "auto",
    extra_inits: Mapping[str, str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Notebook 04 on a 2D run: the slice study of the profile, resumable, in ``RUN/04_finetune``.

    Builds the tumour cohort's cache with labels (``cache_tumor``, as the 3D path), pretrains the
    uncurated init when the profile asks for it (``uncurated/``), runs
    :func:`kit.finetune.slice_task.slice_study` with one row per finished run in ``results.csv``
    (rerunning skips finished runs) and keeps the fine-tuned classifiers of every init at all labels,
    first seed, as ``models/tumor_present_2d__<init>.pt`` (for notebook 05). The leakage guard of the
    3D study (:func:`kit.train.provenance.guard_leakage`, the profile's ``finetune.leakage``) runs
    before any fine-tune: ``refuse`` stops when an init's pretraining saw a test or labelled subject;
    ``flag`` runs and lists them in ``leakage.json``.

    Returns:
        :func:`study_table` of ``results.csv``: ``init``, ``task``, ``mode``, ``label_fraction``, ``seed``,
        ``n_train``, ``n_test_subjects``, ``auc``, ``accuracy``, ``sensitivity``, ``specificity``, ...

    Example:
        >>> results = run_slice_finetune("smoke", "runs/x", "moco_v3", device="cpu")  # doctest: +SKIP
    """
    from kit.data.cache import build_cache
    from kit.data.cohorts import load_cohort
    from kit.stages import stage_dir, write_json_atomic
    from kit.finetune import FinetuneConfig
    from kit.train.provenance import guard_leakage
    from kit.finetune.slice_task import slice_study
    from kit.finetune.study import kept_model_path

    settings = slice_study_settings(profile, objective)  # the profile, resolved once: plain values from here on
    run = Path(run_dir)
    out = stage_dir(run, "04_finetune")
    entries, meta = load_cohort(run / "01_curation" / "datalist.json", "tumor")
    modalities = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
    cache = build_cache(entries, modalities, out / "cache_tumor", with_labels=True, progress=progress)
    uncurated = (pretrain_uncurated(settings["stages"], run, objective, out / UNCURATED, seed=seed, device=device, progress=progress)
                 if settings.get("uncurated") else None)
    inits = {**slice_inits(run, objective, uncurated), **dict(extra_inits or {})}
    config = FinetuneConfig(task="classification", target="tumor_present", backbone=settings["backbone"],
                            model=settings["model"], device=device, seed=seed, **settings["config"])
    models = out / "models"
    models.mkdir(exist_ok=True)
    seeds = [seed + int(s) for s in settings["seeds"]]

    def keep(init: str, mode: str, fraction: float, seed_: int):
        return kept_model_path(models, SLICE_TASK, init) if mode == "finetune" and fraction == 1.0 and seed_ == seeds[0] else None

    spec = settings["slices"]
    test = slice_test_split(cache, run / "01_curation" / "slices.csv", settings["test_fraction"], int(spec["axis"]),
                            cohort="tumor")
    # the guard of the 3D study: the slice study's test subjects and the rest, its labelled pool
    leaks = guard_leakage(inits, {"test": test, "labelled": sorted({str(e["subject"]) for e in entries} - set(test))},
                          settings["leakage"], f"the {SLICE_TASK} slice study")
    write_json_atomic(out / "leakage.json", {SLICE_TASK: leaks})
    results = slice_study(cache, run / "01_curation" / "slices.csv", inits, config, counts=settings["counts"],
                          seeds=seeds, test_fraction=settings["test_fraction"], axis=int(spec["axis"]), cohort="tumor",
                          channels=spec.get("channels", "all"), size=int(spec["size"]), modes=settings["modes"],
                          results_path=out / "results.csv", save_models=keep)
    return study_table(results)


def summarise_slice_study(results: pd.DataFrame, final_init: str, metric: str = "auc") -> dict[str, Any]:
    """Means with 95 % CIs, paired differences against scratch (and curated vs uncurated), the catch-up
    point and a one-line verdict at the fewest labels, from :func:`study_table` rows.

    Returns:
        ``{'summary': DataFrame (kit.finetune.stats.summarise per init, task, label_fraction),
        'differences': DataFrame (kit.finetune.stats.paired_difference rows, ``treatment`` vs ``control``),
        'verdict': str, 'catch_up': str}``.

    Example:
        >>> rows = pd.DataFrame({"init": ["scratch", "m:stage1+2"] * 2, "task": ["t:finetune"] * 4,
        ...                      "label_fraction": [1.0] * 4, "seed": [0, 0, 1, 1], "n_train": [4] * 4,
        ...                      "auc": [0.6, 0.7, 0.5, 0.7]})
        >>> report = summarise_slice_study(rows, "m:stage1+2")
        >>> float(report["differences"].mean_diff.round(3).iloc[0])
        0.15
        >>> report["verdict"]
        'm:stage1+2 minus scratch, t:finetune auc with 4 labelled subject(s): +0.150 (95% CI -0.485 to +0.785, 2 paired seeds)'
    """
    from kit.finetune.stats import catch_up_point, paired_difference, summarise

    summary = summarise(results, metric)
    inits = list(dict.fromkeys(results.init))
    diffs = [paired_difference(results, metric, init) for init in inits if init != "scratch"]
    uncurated = f"{final_init} {UNCURATED}"
    if final_init in inits and uncurated in inits:
        diffs.append(paired_difference(results, metric, final_init, uncurated))
    differences = pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame()
    task = sorted(results.task.unique(), key=lambda t: (not t.endswith(":finetune"), t))[0]  # the fine-tune curve first
    smallest = float(results[results.task == task].label_fraction.min())
    verdict = f"no paired {final_init} vs scratch result"
    if len(differences):
        head = differences[(differences.treatment == final_init) & (differences.control == "scratch")
                           & (differences.task == task) & (differences.label_fraction == smallest)]
        if len(head):
            h = head.iloc[0]
            n_small = int(results[(results.task == task) & (results.label_fraction == smallest)].n_train.median())
            interval = (f"95% CI {h.ci_low:+.3f} to {h.ci_high:+.3f}" if np.isfinite(h.ci_low) else "no interval")
            verdict = (f"{final_init} minus scratch, {task} {metric} with {n_small} labelled subject(s): "
                       f"{h.mean_diff:+.3f} ({interval}, {int(h.n_pairs)} paired seed{'s' if h.n_pairs != 1 else ''})")
    part = summary[summary.task == task]
    catch = catch_up_point(part, final_init) if final_init in set(part.init) else None
    catch_note = (f"catch-up point: scratch within the {final_init} interval from {catch['n_train']} labelled subjects"
                  if catch else "catch-up point: not reached within the label counts studied")
    return {"summary": summary, "differences": differences, "verdict": verdict, "catch_up": catch_note}
