"""One SSL pretraining stage from a datalist: cache, dataset, model, objective, loop.

Notebooks 02 (stage 1, healthy brains) and 03 (stage 2, diseased brains, from the stage-1
checkpoint) and ``kit pretrain`` all call :func:`prepare_stage` and :func:`run_pretraining` with
their profile's stage settings, so the two stages differ only in data, channels, learning rate and
initialisation, as in BrainSegFounder. ``kit pretrain`` (:func:`pretrain_stage`) runs a stage
without a notebook, also under ``torchrun`` on several nodes::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m kit.cli pretrain --profile full --stage 1 --out RUN
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from kit.data.cache import CacheIndex, build_cache
from kit.train.loop import TrainConfig, train
from kit.train.sampling import pretraining_dataset

__all__ = [
    "PretrainSetup",
    "prepare_pretraining",
    "run_pretraining",
    "train_config_from",
    "STAGE_SETTINGS",
    "PretrainStage",
    "stage_settings",
    "prepare_stage",
    "pretrain_stage",
    "stage_for_objective",
    "comparison_dir",
    "pretrain_comparison",
    "inherit_patch_merging",
]

# stage number -> (run-directory folder, default cohort of the run's datalist, profile key); a profile's stage
# setting ``cohort`` names another (the synthetic profiles pretrain stage 2 on the unlabelled 'tumor_pool')
STAGE_SETTINGS = {1: ("02_stage1", "healthy", "stage1"), 2: ("03_stage2", "tumor", "stage2")}


class PretrainSetup:
    """Everything a pretraining stage needs, built once (the notebook previews it before training).

    Attributes:
        cache: the preprocessing cache (:class:`kit.data.cache.CacheIndex`).
        dataset: random crops addressed by ``(index, sample_seed)``.
        objective: the SSL objective wrapping the backbone (``objective.model``).
        modalities: channel names, in order.
        train_config: the loop's :class:`TrainConfig`.
        out_dir: the stage folder (checkpoint.pt, metrics.json land here).
    """

    def __init__(self, cache: CacheIndex, dataset, objective, modalities, train_config: TrainConfig, out_dir: Path):
        self.cache, self.dataset, self.objective = cache, dataset, objective
        self.modalities, self.train_config, self.out_dir = list(modalities), train_config, out_dir


def train_config_from(stage: dict, seed: int, device: str, progress: bool) -> TrainConfig:
    """Build a :class:`TrainConfig` from a profile's stage dict.

    The stage's own keys (``backbone``, ``model``, ``crop``, ``objective``...; see
    :data:`kit.profiles.STAGE_EXTRA_KEYS`) are not TrainConfig fields and are left out; any other
    unknown key is refused with the nearest valid name, so a typo does not silently fall back to a default.

    Example:
        >>> train_config_from({"steps": 5, "lr": 1e-3, "crop": 32}, seed=0, device="cpu", progress=False).steps
        5
        >>> train_config_from({"step": 5}, seed=0, device="cpu", progress=False)
        Traceback (most recent call last):
        ...
        ValueError: stage settings: unknown key 'step'; did you mean 'steps'?
    """
    from kit.profiles import STAGE_EXTRA_KEYS, check_keys

    names = [f.name for f in fields(TrainConfig)]
    check_keys(stage, names + list(STAGE_EXTRA_KEYS), "stage settings")
    values = {k: v for k, v in stage.items() if k in names}
    values.update(seed=seed, device=device, progress=progress)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return TrainConfig(**values)


def stage_for_objective(stage: dict, objective: str | None) -> dict:
    """A copy of a profile's stage settings with ``objective`` selected (None keeps the profile's).

    The stage's ``objective_cfg`` belongs to the profile's own objective; another objective takes its
    options from ``stage["objective_cfgs"][name]`` when the profile has them, else its defaults.
    ``stage["objective_stages"][name]`` replaces any other stage settings for that objective (moco_v3:
    ``backbone``, ``model``, ``slices``, ``batch_size``...).

    Example:
        >>> stage = {"objective": "swin_trio", "objective_cfg": {"mix_prob": 0.0}, "objective_cfgs": {"mim": {"patch_size": 8}}}
        >>> stage_for_objective(stage, "mim")["objective_cfg"], stage_for_objective(stage, None)["objective_cfg"]
        ({'patch_size': 8}, {'mix_prob': 0.0})
    """
    from kit.ssl import list_objectives

    out = dict(stage)
    name = objective or stage.get("objective", "swin_trio")
    if name not in list_objectives():
        raise ValueError(f"unknown SSL objective {name!r}; registered: {list_objectives()}")
    if name != stage.get("objective", "swin_trio"):
        out["objective_cfg"] = dict((stage.get("objective_cfgs") or {}).get(name, {}))
    # an objective may need other stage settings too, e.g. moco_v3: a 2D backbone on curated slices
    out.update(json.loads(json.dumps((stage.get("objective_stages") or {}).get(name, {}))))
    out["objective"] = name
    return out


def prepare_pretraining(
    stage: dict,
    entries: list[dict],
    modalities: list[str],
    out_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    slices: str | Path | None = None,
    cohort: str | None = None,
    cache_dir: str | Path | None = None,
) -> PretrainSetup:
    """Build the cache, crop (or slice) dataset, model and objective of one stage.

    Args:
        stage: the profile's stage settings: ``backbone``, ``model`` (kwargs), ``objective``,
            ``objective_cfg``, ``crop`` (voxels), and TrainConfig fields (steps, batch_size, lr, ...).
            A stage with a ``slices`` dict (``axis``, ``size``, ``channels``, ``curated``) trains a 2D
            objective (moco_v3) on the slices of ``slices`` (:class:`kit.data.slices.SliceDataset`)
            instead of 3D crops.
        entries: datalist entries of the stage's cohort.
        modalities: channel names of the entries' images.
        out_dir: the stage folder; the cache goes to ``out_dir/cache``.
        slices: notebook 01's ``slices.csv`` (needed by a 2D stage only).
        cohort: the entries' cohort in that table.
        cache_dir: where the preprocessing cache goes (default ``out_dir/cache``); several objectives
            pretrained on one pool can share it.

    Example:
        >>> setup = prepare_pretraining(profile_config("smoke")["stage1"], entries, ["t1", "flair"], "runs/x/02_stage1")  # doctest: +SKIP
    """
    from kit.models import create_model
    from kit.ssl import create_objective
    from kit.ssl.base import objective_class

    from kit.train.distributed import rank_and_world

    out = Path(out_dir)
    if stage.get("slices") is not None and slices is None:
        raise ValueError(f"stage {stage.get('objective')!r} trains on 2D slices: pass slices= (notebook 01's slices.csv)")
    rank, world_size = rank_and_world()
    if world_size > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 writes the cache first; the others then find it complete
    cache = build_cache(entries, modalities, out / "cache" if cache_dir is None else Path(cache_dir), with_labels=False,
                        progress=progress and rank == 0)
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    objective_cfg = dict(stage.get("objective_cfg", {}))
    if stage.get("slices") is not None:
        from kit.data.slices import SliceDataset

        spec = dict(stage["slices"])
        dataset = SliceDataset(cache, slices, axis=int(spec.get("axis", 2)), cohort=cohort, size=int(spec.get("size", 64)),
                               channels=spec.get("channels", "all"), curated=bool(spec.get("curated", True)))
        modalities = dataset.modalities
        objective_cfg.setdefault("lr_dim", dataset.lr_dim)  # left-right flips only where the slice has that axis
    name = stage.get("objective", "swin_trio")
    if stage.get("slices") is None:
        # random crops, or the whole brain for objectives that read anatomy from position (anatomy_hierarchy)
        dataset = pretraining_dataset(cache.images(), stage["crop"], getattr(objective_class(name), "input_mode", "crop"))
    # Seeded initialisation: every process, and every rerun, starts from the same weights.
    if getattr(objective_class(name), "uses_total_steps", False):
        objective_cfg.setdefault("total_steps", int(stage["steps"]))  # e.g. a coarse-to-fine schedule
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(stage["backbone"], in_channels=len(modalities), out_channels=3, **stage.get("model", {}))
        objective = create_objective(name, model, **objective_cfg)
    config = train_config_from(stage, seed, device, progress)
    return PretrainSetup(cache, dataset, objective, modalities, config, out)


def run_pretraining(
    setup: PretrainSetup,
    init_checkpoint: str | Path | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train the prepared stage; resumes from ``out_dir/checkpoint.pt`` when the run was interrupted.

    Args:
        setup: from :func:`prepare_pretraining`.
        init_checkpoint: previous stage's checkpoint (stage 2 starts from stage 1's weights;
            a different channel set is mapped onto the first layer, not re-initialised).
        callback: ``callback(step, record)`` after each logged step (live plots).

    Returns:
        The loop's summary dict. ``out_dir/seen_subjects.json`` records the subjects this stage
        and its lineage saw (:mod:`kit.train.provenance`, the study's leakage guard).
    """
    from kit.train.provenance import record_seen_subjects

    entries = setup.cache.entries
    record_seen_subjects(setup.out_dir, Path(setup.out_dir).name, [str(e["subject"]) for e in entries],
                         cohort=str(entries[0].get("cohort")) if entries and entries[0].get("cohort") else None,
                         init_checkpoint=init_checkpoint)
    return train(
        setup.objective,
        setup.dataset,
        setup.train_config,
        setup.out_dir,
        init_checkpoint=init_checkpoint,
        modalities=setup.modalities,
        callback=callback,
    )


# ----------------------------------------------------------------------------- a stage of a run


def stage_settings(profile: str, stage: int, objective: str | None = None, overrides: dict | None = None) -> dict:
    """The profile's settings of pretraining ``stage`` (1 or 2), with ``objective`` and ``overrides`` applied.

    Example:
        >>> cfg = stage_settings("smoke", 1, overrides={"steps": 3, "objective_cfg": {"mix_prob": 0.0}})
        >>> cfg["steps"], cfg["objective"], cfg["objective_cfg"]
        (3, 'swin_trio', {'mix_prob': 0.0})
    """
    from kit.profiles import check_keys, profile_config
    from kit.train.checks import check_settings, stage_keys

    if stage not in STAGE_SETTINGS:
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    config = profile_config(profile)[STAGE_SETTINGS[stage][2]]
    check_keys(overrides or {}, stage_keys(), f"overrides of stage {stage}")
    check_settings(overrides or {}, f"overrides of stage {stage}")  # types and ranges, before any file is written
    config.update(overrides or {})
    if objective is not None:
        own = config.get("objective", "swin_trio")
        config = stage_for_objective(config, objective)  # another objective brings its own options
        # ...but what the user set wins over the objective's stage settings (moco_v3's batch_size)
        config.update({k: v for k, v in (overrides or {}).items() if k not in ("objective", "objective_cfg")})
        if objective != own and "objective_cfg" in (overrides or {}):
            config["objective_cfg"] = dict(overrides["objective_cfg"])
    return config


def inherit_patch_merging(config: dict, init_checkpoint: str | Path | None) -> dict:
    """The stage settings with the init checkpoint's SwinUNETR ``patch_merging`` order when the stage does not set
    one: weights imported from the published SSL files (``kit import-weights``: ``legacy``, MONAI < 1.5's order)
    compute their publisher's function only with that order. A stage that sets another order keeps it (loading
    the weights then refuses the mismatch, naming the setting); other backbones and unreadable files are left alone.

    Example:
        >>> inherit_patch_merging({"backbone": "segresnet_small", "model": {}}, None)
        {'backbone': 'segresnet_small', 'model': {}}
    """
    if init_checkpoint is None or not Path(init_checkpoint).is_file() or "patch_merging" in (config.get("model") or {}):
        return config
    from kit.models.checkpoints import load_checkpoint

    try:
        model_config = load_checkpoint(init_checkpoint, map_location="cpu")["model_config"]
    except Exception:  # noqa: BLE001  (an unreadable --init is refused, with its own message, by the checks)
        return config
    if model_config.get("name") != config.get("backbone") or "patch_merging" not in model_config:
        return config
    return {**config, "model": {**(config.get("model") or {}), "patch_merging": model_config["patch_merging"]}}


@dataclass
class PretrainStage:
    """One stage of a run, ready to train: what notebooks 02/03 and ``kit pretrain`` share.

    Attributes:
        config: the stage's settings (:func:`stage_settings`).
        entries, modalities: the stage's cohort from ``RUN/01_curation/datalist.json`` and its channels.
        out: the stage folder (``RUN/02_stage1`` or ``RUN/03_stage2``).
        setup: the prepared cache, dataset, model and objective (:func:`prepare_pretraining`).
        init_checkpoint: the weights the stage starts from (stage 2: stage 1's checkpoint), or None.
    """

    config: dict
    entries: list[dict]
    modalities: list[str]
    out: Path
    setup: PretrainSetup
    init_checkpoint: Path | None


def prepare_stage(
    profile: str,
    stage: int,
    run_dir: str | Path,
    *,
    objective: str | None = None,
    overrides: dict | None = None,
    init_checkpoint: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    out_dir: str | Path | None = None,
) -> PretrainStage:
    """Read the stage's cohort from the run's datalist and prepare its training.

    Under torchrun the process group is joined here (rank 0 builds the cache while the others wait).

    Args:
        profile: a :data:`kit.profiles.PROFILES` name.
        stage: 1 (healthy cohort, ``RUN/02_stage1``) or 2 (tumour cohort, ``RUN/03_stage2``).
        run_dir: the run directory; ``01_curation/datalist.json`` must exist (notebook 01).
        objective: SSL objective name (default: the profile's); overrides: stage settings to change.
        init_checkpoint: initial weights (default: stage 2 starts from ``RUN/02_stage1/checkpoint.pt``).
        seed, device, progress: as for :func:`prepare_pretraining`.
        out_dir: the stage's folder (default ``RUN/02_stage1`` or ``RUN/03_stage2``).

    Example:
        >>> st = prepare_stage("smoke", 1, "runs/smoke")  # doctest: +SKIP
        >>> summary = run_pretraining(st.setup, init_checkpoint=st.init_checkpoint)  # doctest: +SKIP
    """
    from kit.data.cohorts import load_cohort
    from kit.stages import stage_dir
    from kit.train.distributed import setup_distributed

    from kit.profiles import profile_config
    from kit.train.checks import check_pretrain_request

    config = stage_settings(profile, stage, objective, overrides)
    folder, cohort, _ = STAGE_SETTINGS[stage]
    cohort = config.get("cohort", cohort)  # e.g. stage 2 on an unlabelled pool ('tumor_pool'), not the study's cohort
    run = Path(run_dir)
    given_init = init_checkpoint is not None
    if init_checkpoint is None and stage == 2:
        init_checkpoint = run / "02_stage1" / "checkpoint.pt"
        if not init_checkpoint.is_file():
            raise FileNotFoundError(f"{init_checkpoint}: stage 2 starts from stage 1's checkpoint; run stage 1 first")
    config = inherit_patch_merging(config, init_checkpoint)
    entries, meta = load_cohort(run / "01_curation" / "datalist.json", cohort)
    modalities = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
    # every refusal happens here, before the stage folder, its cache or seen_subjects.json exist
    check_pretrain_request(config, modalities, subjects=[str(e["subject"]) for e in entries],
                           datalist=run / "01_curation" / "datalist.json", cohort=cohort,
                           slices=run / "01_curation" / "slices.csv", init_checkpoint=init_checkpoint,
                           init_label="--init" if given_init else "stage 1's checkpoint",
                           slice_filter=profile_config(profile).get("slice_filter"))
    setup_distributed(device)
    out = stage_dir(run, folder) if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slices = run / "01_curation" / "slices.csv" if config.get("slices") is not None else None  # a 2D stage
    setup = prepare_pretraining(config, entries, modalities, out, seed=seed, device=device, progress=progress,
                                slices=slices, cohort=cohort)
    return PretrainStage(config, entries, setup.modalities, out, setup, Path(init_checkpoint) if init_checkpoint else None)


def pretrain_stage(
    profile: str,
    stage: int,
    run_dir: str | Path,
    *,
    objective: str | None = None,
    device: str = "auto",
    seed: int = 0,
    overrides: dict | None = None,
    init_checkpoint: str | Path | None = None,
    progress: bool = False,
    callback: Callable[[int, dict], None] | None = None,
) -> dict[str, Any]:
    """``kit pretrain``: prepare and train one stage; resumes from ``checkpoint.pt`` when interrupted.

    Returns:
        the loop's summary (see :func:`kit.train.train`).

    Example:
        >>> pretrain_stage("smoke", 1, "runs/smoke", device="cpu")["world_size"]  # doctest: +SKIP
        1
    """
    prepared = prepare_stage(profile, stage, run_dir, objective=objective, overrides=overrides,
                             init_checkpoint=init_checkpoint, seed=seed, device=device, progress=progress)
    return run_pretraining(prepared.setup, init_checkpoint=prepared.init_checkpoint, callback=callback)


# ----------------------------------------------------------------------------- objectives compared


def comparison_dir(run_dir: str | Path, stage: int, objective: str) -> Path:
    """Where a compared objective's stage lives: ``RUN/02_stage1/objectives/NAME`` (or ``03_stage2``).

    Example:
        >>> comparison_dir("runs/w", 2, "mim").as_posix()
        'runs/w/03_stage2/objectives/mim'
    """
    return Path(run_dir) / STAGE_SETTINGS[stage][0] / "objectives" / objective


def pretrain_comparison(
    profile: str,
    run_dir: str | Path,
    objectives: list[str] | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> list[dict]:
    """Stage 1 and stage 2 of each objective a profile compares with its own, on the same data and budget.

    The run's own objective is pretrained by notebooks 02-03; the others named in the profile's
    ``stage2["compare_objectives"]`` (3D objectives only) go through the same two stages here, each
    with its own options (:func:`stage_for_objective`), into :func:`comparison_dir`. Each stage
    resumes from its checkpoint when interrupted; a finished stage is not trained again.

    Args:
        profile: a profile name; objectives: names to pretrain (default: the profile's list).
        run_dir: the run directory (notebook 01 done).
        seed, device, progress: as for :func:`prepare_stage`.

    Returns:
        One row per objective and stage: ``objective``, ``stage``, ``steps``, ``loss_first``,
        ``loss_last``, ``wall_s`` (this session), ``checkpoint``.

    Example:
        >>> rows = pretrain_comparison("workshop", "runs/workshop")  # doctest: +SKIP
        >>> sorted({r["objective"] for r in rows})  # doctest: +SKIP
        ['cross_contrast', 'mim']
    """
    from kit.profiles import profile_config

    names = list(profile_config(profile)["stage2"].get("compare_objectives", []) if objectives is None else objectives)
    rows = []
    for name in names:
        if stage_settings(profile, 1, name).get("slices") is not None:
            raise ValueError(f"pretrain_comparison: {name!r} is a 2D objective; the comparison takes 3D objectives")
        previous = None
        for stage in (1, 2):
            out = comparison_dir(run_dir, stage, name)
            prepared = prepare_stage(profile, stage, run_dir, objective=name, seed=seed, device=device,
                                     progress=progress, out_dir=out, init_checkpoint=previous)
            summary = run_pretraining(prepared.setup, init_checkpoint=prepared.init_checkpoint)
            records = json.loads((out / "metrics.json").read_text())["records"]
            rows.append({"objective": name, "stage": stage, "steps": records[-1]["step"],
                         "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
                         "wall_s": round(float(summary.get("wall_s") or 0.0), 1),
                         "checkpoint": str(out / "checkpoint.pt")})
            previous = out / "checkpoint.pt"
    return rows
