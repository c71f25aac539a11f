"""The run profiles of ``kit reproduce``: one base plus small per-profile overrides, plain values.

nanoGPT style: every setting is a plain value, and a profile is the :data:`BASE` settings with its
own overrides deep-merged on top (dicts merge key by key; lists and scalars replace). A key that
no code reads is refused with the nearest valid name, so a typo in a profile fails loudly instead
of silently falling back to a default.

Profiles: ``smoke`` (CI), ``workshop`` (a class on 2 CPU cores), ``study`` (the converged, powered
fine-tuning study on synthetic data), ``full`` (the published protocol on real data and GPUs).

At the bottom of the kit: this module imports nothing of it, so every room reads the profiles without an
arrow up; the check of the stage and fine-tuning keys against TrainConfig and FinetuneConfig is
:mod:`kit.run.profiles`.

Example:
    >>> PROFILES["smoke"]["stage1"]["objective"], PROFILES["full"]["stage1"]["backbone"]
    ('swin_trio', 'swinunetr')
    >>> deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
"""

from __future__ import annotations

import difflib
import json
from typing import Iterable, Mapping

__all__ = ["BASE", "OVERRIDES", "PROFILES", "deep_merge", "resolve", "profile_config", "check_keys",
           "validate_profile"]

# Cohorts are (cohort, layout, manifest, n): the synthetic cohorts are written in the real datasets'
# layouts and validated with the real manifests, so real data takes the same path. Stage 1 sees
# healthy brains with 2 channels (UK Biobank: T1 + FLAIR), stage 2 the tumour cohort with 4 (BraTS
# order flair, t1ce, t1, t2), as in BrainSegFounder.
BASE: dict = {
    "cohorts": {
        "healthy": {"layout": "ukb", "manifest": "ukb"},
        "tumor": {"layout": "brats2021", "manifest": "brats2021"},
        "stroke": {"layout": "atlas2", "manifest": "atlas2"},
    },
    "slice_filter": {"axis": 2, "entropy_threshold": 3.0, "position_window": [0.1, 0.9]},
    # MoCo v3 on curated 2D slices (tailored curation, Computerized Medical Imaging and Graphics 123,
    # 2025): what a stage changes when `--objective moco_v3` selects it (kit.train.pretrain.
    # stage_for_objective): a 2D ResNet on the slices notebook 01 keeps (along slice_filter's axis),
    # instead of 3D crops.
    "stage1": {"objective": "swin_trio", "objective_cfg": {}, "weight_decay": 0.1, "objective_stages": {
        "moco_v3": {"objective": "moco_v3", "slices": {"axis": 2, "channels": "all", "curated": True}}}},
    "stage2": {"objective": "swin_trio", "objective_cfg": {}, "weight_decay": 0.1, "objective_stages": {
        "moco_v3": {"objective": "moco_v3", "slices": {"axis": 2, "channels": "all", "curated": True}}}},
    "finetune": {"config": {"transfer": "full"}},
    "saliency": {"task": "tumor_present", "inits": ["scratch", "stage1+2"]},
}

# The unlabelled pool of the live stage 2 (notebook 03) in the synthetic profiles: tumour brains with subject IDs
# (BraTS2021_10000...) and a seed of their own, so that no subject the study labels, validates or tests was seen in
# pretraining (kit.data.cohorts.prepare_cohorts checks it); `full` keeps the published transductive protocol.
def _tumor_pool(n: int) -> dict:
    return {"kind": "tumor", "layout": "brats2021", "manifest": "brats2021", "n": n, "first_index": 10000}


# The objectives whose stage 1+2 pretraining on the unlabelled pools the repository holds
# (benchmarks/results/pretraining/<objective>/, made by benchmarks/pretrain_pool.py: 20,000 crops each, 10x one
# fine-tune); workshop and study fine-tune from them as 'pool', 'mim:pool', ... (kit.finetune.study.committed_inits)
_COMMITTED = ["swin_trio", "mim"]

# shared pieces of the CPU profiles (smoke, workshop, study)
_SMALL_3D = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "crop": 32}
_ALL_METHODS = ["vanilla", "smoothgrad", "integrated_gradients", "gradcam", "gradcampp", "occlusion"]
# the converged fine-tuning recipe (benchmarks/results/study/recipe.md): lr 2e-3, 2/3 foreground crops
# balanced over labels, validation (32^3 windows, overlap 0.25) every 100 steps, best model kept, stop
# after 2 validations without gain; classifier on 48^3, balanced classes
_CONVERGED = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "steps": 500, "batch_size": 4,
              "crop": 32, "input_size": 48, "lr": 2e-3, "warmup_steps": 10, "pos_fraction": 0.67,
              "fg_sampling": "label", "class_weights": "balanced", "inference": "auto", "val_every": 100,
              "patience": 2, "sw_overlap": 0.25}
_CLASS_PROBES = {"tasks": ["tumor_seg", "tumor_present"], "counts": [1, 2, 4, "all"], "seeds": [0, 1, 2, 3, 4],
                 "cls_counts": [4, 8, "all"], "per_value": 200}
# moco_v3 stage settings per size (2D ResNet width, slice side, MoCo v3 heads); full: the paper's
# ResNet-50 and MoCo v3's sizes (AdamW as MoCo v3's ViT recipe: the kit loop has no LARS)
_MOCO_SMOKE = {"objective_stages": {"moco_v3": {
    "backbone": "resnet18_2d", "model": {"widen_factor": 0.25}, "objective_cfg": {"dim": 32, "mlp_dim": 64},
    "batch_size": 8, "lr": 1e-3, "slices": {"size": 48}}}}
_MOCO_SMALL = {"objective_stages": {"moco_v3": {
    "backbone": "resnet18_2d", "model": {"widen_factor": 0.5}, "objective_cfg": {"dim": 128, "mlp_dim": 512},
    "batch_size": 32, "lr": 1e-3, "slices": {"size": 64}}}}
_MOCO_FULL = {"objective_stages": {"moco_v3": {
    "backbone": "resnet50_2d", "model": {}, "objective_cfg": {"dim": 256, "mlp_dim": 4096, "temperature": 1.0},
    "batch_size": 256, "lr": 1.5e-4, "slices": {"size": 224}}}}


def _cpu_stages(moco: dict, stage1: dict, stage2: dict) -> dict:
    """The pretraining stages of a CPU profile from their budgets: the small 3D backbone, stage 2 on the
    unlabelled tumour pool, and the profile's size of moco_v3 stage settings (``_MOCO_SMOKE``, ``_MOCO_SMALL``).

    Example:
        >>> stages = _cpu_stages(_MOCO_SMOKE, {"steps": 8}, {"steps": 6})
        >>> stages["stage1"]["backbone"], stages["stage2"]["cohort"], stages["stage2"]["steps"]
        ('segresnet_small', 'tumor_pool', 6)
    """
    return {"stage1": {**_SMALL_3D, **stage1, **moco}, "stage2": {**_SMALL_3D, **stage2, "cohort": "tumor_pool", **moco}}


def _cpu_cohorts(healthy: int, tumor: int, stroke: int, tumor_pool: int) -> dict:
    """The cohort sizes of a CPU profile, the unlabelled tumour pool of stage 2 included (:func:`_tumor_pool`)."""
    return {"healthy": {"n": healthy}, "tumor": {"n": tumor}, "stroke": {"n": stroke}, "tumor_pool": _tumor_pool(tumor_pool)}


OVERRIDES: dict[str, dict] = {
    "smoke": {
        "description": "CI and tests: every code path on 2 CPU cores in minutes",
        "cell_timeout_s": 600, "resolution_mm": 4.0, "n_show": 2,
        "cohorts": _cpu_cohorts(healthy=6, tumor=8, stroke=4, tumor_pool=4),
        **_cpu_stages(_MOCO_SMOKE, stage1={"steps": 8, "batch_size": 2, "lr": 3e-4, "warmup_steps": 2, "ckpt_every": 4},
                      stage2={"steps": 6, "batch_size": 2, "lr": 2e-4, "warmup_steps": 2, "ckpt_every": 3,
                              "compare_objectives": ["mim"]}),
        "finetune": {
            "config": {**_SMALL_3D, "steps": 3, "batch_size": 2, "input_size": 32, "lr": 1e-3, "warmup_steps": 1,
                       "sw_overlap": 0.25, "inference": "auto", "val_every": 2},
            "tasks": [
                {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion"},
                {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor"},
                {"name": "tumor_present_probe", "task": "classification", "target": "tumor_present", "cohort": "tumor",
                 "config": {"freeze_encoder": True}, "inits": ["scratch", "stage1+2"]},
                {"name": "stroke_seg", "task": "segmentation", "cohort": "stroke", "pool": "lesion",
                 "inits": ["scratch", "stage1"]},
            ],
            "fractions": [0.5, 1.0], "seeds": [0], "test_fraction": 0.3, "n_overlays": 2, "val_size": 1, "leakage": "refuse",
            "probes": {"tasks": ["tumor_seg", "tumor_present"], "counts": [1, "all"], "seeds": [0, 1],
                       "cls_counts": [2, "all"], "per_value": 50},
        },
        "saliency": {
            "n_cases": 2, "random_n": 20, "dilate_mm": 8.0, "methods": _ALL_METHODS,
            "method_kwargs": {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"n_steps": 8},
                              "occlusion": {"mask_size": 8, "overlap": 0.25}},
        },
    },
    "workshop": {
        "description": "a class on 2 laptop CPU cores in about 30 min: short live pretraining, linear probes "
                       "on 5 seeds, a few live fine-tunes; the converged study's figures come from `study`",
        "cell_timeout_s": 3600, "resolution_mm": 3.0, "n_show": 3,
        "cohorts": _cpu_cohorts(healthy=24, tumor=60, stroke=6, tumor_pool=24),
        **_cpu_stages(_MOCO_SMALL, stage1={"steps": 60, "batch_size": 4, "lr": 5e-4, "warmup_steps": 5, "ckpt_every": 20},
                      stage2={"steps": 30, "batch_size": 4, "lr": 2e-4, "warmup_steps": 3, "ckpt_every": 15,
                              # the objectives the workshop compares with this one: stage 1 + 2 each, same budget
                              "compare_objectives": ["cross_contrast", "mim"]}),
        "finetune": {
            # the study's converged recipe, with a smaller step budget (early stopping on validation)
            "config": {**_CONVERGED, "steps": 300},
            "tasks": [
                # every committed pool-pretrained init against scratch at the fewest labels, 3 paired seeds, 250
                # steps (100 steps measured noise; the study's curves flatten from about 300 with one subject);
                # the powered comparison is the probes', which also read the live stage 1 / 1+2 of notebooks 02-03
                {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion",
                 "inits": ["scratch", "pool"], "counts": [1], "seeds": [0, 1, 2],
                 "config": {"steps": 250, "val_every": 125}},
                # the classifiers notebook 05 explains (the study's first, average-pooled recipe, unstable across
                # seeds from scratch: benchmarks/results/study/partial/README.md; the study now pools avg+max)
                {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor",
                 "inits": ["scratch", "swin_trio:pool"], "counts": ["all"], "seeds": [0],
                 "config": {"steps": 200, "lr": 3e-3, "val_every": 25, "patience": 4}},
            ],
            "fractions": [1.0], "seeds": [0, 1, 2], "test_fraction": 16, "val_size": 6, "n_overlays": 3, "leakage": "refuse",
            "probes": _CLASS_PROBES, "committed_inits": _COMMITTED,
        },
        "saliency": {
            "inits": ["scratch", "pool"],
            "n_cases": 4, "random_n": 100, "dilate_mm": 6.0, "min_auc": 0.85,
            "methods": [m for m in _ALL_METHODS if m != "gradcampp"],
            "method_kwargs": {"smoothgrad": {"n_samples": 8}, "integrated_gradients": {"n_steps": 16},
                              "occlusion": {"mask_size": 8, "overlap": 0.5}},
        },
    },
    "study": {
        "description": "the converged, powered label-efficiency study on 2 CPU cores (<= 2.5 h): 5 paired seeds, "
                       "20 test subjects, 1/2/4/all labelled subjects; resumable from results.csv",
        "cell_timeout_s": 4 * 3600, "resolution_mm": 3.0, "n_show": 3,
        "cohorts": _cpu_cohorts(healthy=32, tumor=80, stroke=6, tumor_pool=40),
        **_cpu_stages(_MOCO_SMALL, stage1={"steps": 200, "batch_size": 4, "lr": 5e-4, "warmup_steps": 10, "ckpt_every": 50},
                      stage2={"steps": 100, "batch_size": 4, "lr": 2e-4, "warmup_steps": 5, "ckpt_every": 50}),
        "finetune": {
            "config": _CONVERGED,
            "tasks": [
                # classification convergence at all labels only; avg+max pooling, a gentler schedule and
                # 16 validation subjects (4 without tumour), because the average-pooled head at lr 3e-3
                # flipped between all-tumour and no-tumour from scratch (test AUC 0.25-0.98 over 4 seeds)
                {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor",
                 "inits": ["scratch", "swin_trio:pool"], "counts": ["all"], "val_size": 16,
                 "config": {"head_pool": "avgmax", "steps": 300, "lr": 1e-3, "warmup_steps": 20, "val_every": 25,
                            "patience": 0}},
                # 1, 4 and all labelled subjects (the probes add 2); all labels get 1000 steps, because 500
                # are 15 passes over 34 subjects and left validation Dice still rising (test 0.54)
                # scratch against every committed pool-pretrained init (the live stage 1+2 of notebooks 02-03 is
                # a short demonstration: the probes read it)
                {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion",
                 "inits": ["scratch", "pool"], "counts": [1, 4, "all"],
                 "count_config": {"all": {"steps": 1000, "val_every": 125}}},
            ],
            "fractions": [1.0], "seeds": [0, 1, 2, 3, 4], "test_fraction": 20, "val_size": 8, "n_overlays": 3,
            "leakage": "refuse", "probes": _CLASS_PROBES, "workers": 2, "committed_inits": _COMMITTED,
        },
        "saliency": {
            "inits": ["scratch", "pool"],
            # occlusion at overlap 0.25 (512 occluded copies of a 48^3 input, not 1728): the workshop's 4
            # cases at 0.5 took 4 min per classifier, and the study's 2.5 h has no room for 15
            "n_cases": 6, "random_n": 100, "dilate_mm": 6.0, "min_auc": 0.85, "methods": _ALL_METHODS,
            "method_kwargs": {"smoothgrad": {"n_samples": 16}, "integrated_gradients": {"n_steps": 32},
                              "occlusion": {"mask_size": 8, "overlap": 0.25}},
        },
    },
    "full": {
        "description": "the paper's recipe on GPUs: SwinUNETR feature_size 48, 96^3 crops, 1 mm",
        "cell_timeout_s": 24 * 3600,
        "resolution_mm": 1.0,
        "cohorts": {"healthy": {"n": 200}, "tumor": {"n": 200}, "stroke": {"n": 50}},
        "n_show": 4,
        # BrainSegFounder: AdamW 4e-4 (stage 1) / 6e-6 (stage 2), wd 0.1, warmup 500, 96^3 crops
        "stage1": {"backbone": "swinunetr", "model": {"feature_size": 48}, "crop": 96, "steps": 20000, "batch_size": 4,
                   "lr": 4e-4, "warmup_steps": 500, "ckpt_every": 500, "num_workers": 4, **_MOCO_FULL},
        # stage 2 on the downstream cohort itself, test subjects included: BrainSegFounder's transductive
        # protocol, run on purpose and reported as such (finetune.leakage 'flag' writes leakage.json)
        "stage2": {"backbone": "swinunetr", "model": {"feature_size": 48}, "crop": 96, "steps": 5000, "batch_size": 4,
                   "cohort": "tumor",
                   "lr": 6e-6, "warmup_steps": 500, "ckpt_every": 500, "num_workers": 4, **_MOCO_FULL},
        "finetune": {
            "config": {"backbone": "swinunetr", "model": {"feature_size": 48}, "steps": 30000, "batch_size": 2,
                       "crop": 128, "input_size": 96, "lr": 1e-4, "warmup_steps": 500, "sw_overlap": 0.5,
                       "weight_decay": 1e-5, "num_workers": 4},
            "tasks": [
                {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion"},
                {"name": "tumor_present", "task": "classification", "target": "tumor_present", "cohort": "tumor"},
                {"name": "tumor_type", "task": "classification", "target": "tumor_type", "cohort": "tumor"},
                {"name": "idh", "task": "classification", "target": "idh", "cohort": "tumor"},
                {"name": "stroke_seg", "task": "segmentation", "cohort": "stroke", "pool": "lesion",
                 "inits": ["scratch", "stage1"]},
            ],
            "fractions": [0.01, 0.05, 0.1, 0.25, 1.0], "seeds": [0, 1, 2, 3, 4], "test_fraction": 0.2, "n_overlays": 4,
            "leakage": "flag",
        },
        "saliency": {
            "n_cases": 50, "random_n": 200, "dilate_mm": 5.0, "methods": _ALL_METHODS,
            "method_kwargs": {"smoothgrad": {"n_samples": 25}, "integrated_gradients": {"n_steps": 50},
                              "occlusion": {"mask_size": 16, "overlap": 0.5}},
        },
    },
}

# ----------------------------------------------------------------------------- schema

TOP_KEYS = ("description", "cell_timeout_s", "resolution_mm", "cohorts", "slice_filter", "n_show", "stage1",
            "stage2", "finetune", "saliency")
COHORT_KEYS = ("layout", "manifest", "n", "kind", "first_index")
SLICE_FILTER_KEYS = ("axis", "entropy_threshold", "position_window")
SLICES_KEYS = ("axis", "size", "channels", "curated")
# stage settings that are not kit.train.loop.TrainConfig fields
STAGE_EXTRA_KEYS = ("backbone", "model", "objective", "objective_cfg", "objective_cfgs", "objective_stages", "crop",
                    "compare_objectives", "slices", "cohort")
FINETUNE_KEYS = ("config", "tasks", "fractions", "seeds", "test_fraction", "n_overlays", "val_size", "leakage", "probes",
                 "slice_study", "workers", "extra_inits", "committed_inits")
SLICE_STUDY_KEYS = ("counts", "seeds", "test_fraction", "modes", "uncurated", "config")
TASK_KEYS = ("name", "task", "cohort", "pool", "target", "inits", "counts", "seeds", "fractions", "config", "val_size",
             "count_config")
# pool: the classification probes' pooling, 'avg' (default), 'max' or 'avgmax' (kit.finetune.probes.pooled_features)
PROBES_KEYS = ("tasks", "counts", "seeds", "cls_counts", "per_value", "pool")
SALIENCY_KEYS = ("task", "inits", "n_cases", "random_n", "dilate_mm", "min_auc", "methods", "method_kwargs")


def check_keys(given: Iterable[str], valid: Iterable[str], where: str) -> None:
    """Refuse keys not in ``valid``, naming the nearest valid one (``difflib.get_close_matches``).

    Example:
        >>> check_keys(["steps", "lr"], ["steps", "lr", "batch_size"], "stage1")
        >>> check_keys(["step"], ["steps", "lr"], "profile 'smoke' stage1")
        Traceback (most recent call last):
        ...
        ValueError: profile 'smoke' stage1: unknown key 'step'; did you mean 'steps'?
    """
    valid = list(valid)
    for key in given:
        if key in valid:
            continue
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {sorted(valid)}"
        raise ValueError(f"{where}: unknown key {key!r}; {hint}")


def _check_static(name: str, profile: Mapping) -> None:
    """The keys that need no import of torch: checked at import for every profile."""
    where = f"profile {name!r}"
    check_keys(profile, TOP_KEYS, where)
    for cohort, spec in (profile.get("cohorts") or {}).items():
        check_keys(spec, COHORT_KEYS, f"{where} cohorts.{cohort}")
    check_keys(profile.get("slice_filter") or {}, SLICE_FILTER_KEYS, f"{where} slice_filter")
    finetune = profile.get("finetune") or {}
    check_keys(finetune, FINETUNE_KEYS, f"{where} finetune")
    for i, task in enumerate(finetune.get("tasks") or []):
        check_keys(task, TASK_KEYS, f"{where} finetune.tasks[{i}] ({task.get('name')})")
    check_keys(finetune.get("probes") or {}, PROBES_KEYS, f"{where} finetune.probes")
    check_keys(profile.get("saliency") or {}, SALIENCY_KEYS, f"{where} saliency")
    for stage in ("stage1", "stage2"):
        cohort = (profile.get(stage) or {}).get("cohort")
        if cohort is not None and cohort not in (profile.get("cohorts") or {}):
            raise ValueError(f"{where} {stage}.cohort: {cohort!r} is not one of its cohorts "
                             f"{sorted(profile.get('cohorts') or {})}")
    if finetune.get("leakage", "refuse") not in ("refuse", "flag"):
        raise ValueError(f"{where} finetune.leakage: must be 'refuse' or 'flag', got {finetune['leakage']!r}")


def validate_profile(name: str, profile: Mapping, *, stage_keys: Iterable[str], config_keys: Iterable[str]) -> None:
    """Refuse any unknown key of a resolved profile, naming the nearest valid one: stage keys against
    ``stage_keys``, fine-tuning configs against ``config_keys``. The two schemas come from the rooms that own
    them (:func:`kit.train.checks.stage_keys`, :class:`kit.finetune.FinetuneConfig`'s fields), passed in so
    that this module, at the bottom of the kit, imports nothing above it; :func:`kit.run.profiles.validate_profile`
    passes them.

    Example:
        >>> validate_profile("x", {"stage1": {"stpes": 3}}, stage_keys=("steps", "lr"), config_keys=())
        Traceback (most recent call last):
        ...
        ValueError: profile 'x' stage1: unknown key 'stpes'; did you mean 'steps'?
    """
    _check_static(name, profile)
    where, keys = f"profile {name!r}", tuple(stage_keys)
    for stage in ("stage1", "stage2"):
        settings = profile.get(stage) or {}
        check_keys(settings, keys, f"{where} {stage}")
        for objective, extra in (settings.get("objective_stages") or {}).items():
            check_keys(extra, keys, f"{where} {stage}.objective_stages.{objective}")
            check_keys(extra.get("slices") or {}, SLICES_KEYS, f"{where} {stage}.objective_stages.{objective}.slices")
        check_keys(settings.get("slices") or {}, SLICES_KEYS, f"{where} {stage}.slices")
    finetune, config_keys = profile.get("finetune") or {}, tuple(config_keys)
    check_keys(finetune.get("config") or {}, config_keys, f"{where} finetune.config")
    for i, task in enumerate(finetune.get("tasks") or []):
        check_keys(task.get("config") or {}, config_keys, f"{where} finetune.tasks[{i}].config")
    check_keys((finetune.get("slice_study") or {}).get("config") or {}, config_keys, f"{where} finetune.slice_study.config")


# ----------------------------------------------------------------------------- resolution


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``base`` with ``override`` on top: dicts merge key by key, anything else is replaced (a copy).

    Example:
        >>> deep_merge({"stage1": {"lr": 1e-3, "steps": 5}, "n": [1]}, {"stage1": {"steps": 8}, "n": [2]})
        {'stage1': {'lr': 0.001, 'steps': 8}, 'n': [2]}
    """
    out = json.loads(json.dumps(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = json.loads(json.dumps(value))
    return out


def resolve(name: str, overrides: Mapping) -> dict:
    """A profile: :data:`BASE` with the profile's ``overrides`` deep-merged on top, its keys checked.

    Example:
        >>> resolve("tiny", {"n_show": 1, "stage1": {"steps": 2}})["stage1"]["steps"]
        2
    """
    merged = deep_merge(BASE, overrides)
    profile = {key: merged[key] for key in TOP_KEYS if key in merged}  # the order a reader expects
    _check_static(name, {**merged, **profile})
    return profile


PROFILES: dict[str, dict] = {name: resolve(name, overrides) for name, overrides in OVERRIDES.items()}

# Notebook 04's 2D path (an objective with spatial_dims 2): tumour present per slice with label counts in
# subjects, paired seeds, from scratch, from the run's curated stage 1+2 and (``uncurated``) from the same
# pretraining on every slice (the tailored-curation ablation); kit.finetune.slice_run reads it.
_SLICE_STUDIES = {
    "smoke": {"counts": [1, "all"], "seeds": [0, 1], "test_fraction": 0.3, "modes": ["finetune"], "uncurated": True,
              "config": {"steps": 12, "batch_size": 8, "lr": 2e-3, "warmup_steps": 2, "class_weights": "balanced"}},
    "workshop": {"counts": [1, 2, 4, "all"], "seeds": [0, 1, 2], "test_fraction": 16, "modes": ["probe", "finetune"],
                 "uncurated": True,
                 "config": {"steps": 100, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "class_weights": "balanced"}},
    "study": {"counts": [1, 2, 4, "all"], "seeds": [0, 1, 2, 3, 4], "test_fraction": 20, "modes": ["probe", "finetune"],
              "uncurated": True,
              "config": {"steps": 150, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "class_weights": "balanced"}},
    "full": {"counts": [1, 5, 10, "all"], "seeds": [0, 1, 2, 3, 4], "test_fraction": 0.2, "modes": ["probe", "finetune"],
             "uncurated": True,
             "config": {"steps": 3000, "batch_size": 64, "lr": 1e-4, "warmup_steps": 100, "class_weights": "balanced",
                        "num_workers": 4}},
}
for _name, _study in _SLICE_STUDIES.items():
    check_keys(_study, SLICE_STUDY_KEYS, f"profile {_name!r} finetune.slice_study")
    PROFILES[_name]["finetune"]["slice_study"] = _study


def profile_config(profile: str) -> dict:
    """The settings of a profile (a deep copy, safe to modify in a notebook); its keys were checked when the
    profile was resolved, and :func:`kit.run.profiles.profile_config` also checks them against the TrainConfig
    and FinetuneConfig fields.

    Example:
        >>> profile_config("smoke")["resolution_mm"]
        4.0
    """
    if profile not in PROFILES:
        close = difflib.get_close_matches(str(profile), list(PROFILES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown profile {profile!r}{hint}; choose one of {sorted(PROFILES)}")
    return json.loads(json.dumps(PROFILES[profile]))
