"""One SSL pretraining stage from a datalist: cache, dataset, model, objective, loop.

Notebooks 02 (stage 1, healthy brains) and 03 (stage 2, diseased brains, from the stage-1
checkpoint) both call :func:`run_pretraining` with their profile's stage settings, so the two
stages differ only in data, channels, learning rate and initialisation, as in BrainSegFounder.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Callable

from kit.data.cache import CacheIndex, build_cache
from kit.train.loop import TrainConfig, train
from kit.train.sampling import ArrayCropDataset

__all__ = ["PretrainSetup", "prepare_pretraining", "run_pretraining", "train_config_from", "stage_for_objective"]


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
    """Build a :class:`TrainConfig` from a profile's stage dict (unknown keys are ignored).

    Example:
        >>> train_config_from({"steps": 5, "lr": 1e-3, "crop": 32}, seed=0, device="cpu", progress=False).steps
        5
    """
    names = {f.name for f in fields(TrainConfig)}
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

    Example:
        >>> setup = prepare_pretraining(profile_config("smoke")["stage1"], entries, ["t1", "flair"], "runs/x/02_stage1")  # doctest: +SKIP
    """
    from kit.models import create_model
    from kit.ssl import create_objective
    from kit.ssl.base import objective_class

    out = Path(out_dir)
    if stage.get("slices") is not None and slices is None:
        raise ValueError(f"stage {stage.get('objective')!r} trains on 2D slices: pass slices= (notebook 01's slices.csv)")
    cache = build_cache(entries, modalities, out / "cache", with_labels=False, progress=progress)
    objective_cfg = dict(stage.get("objective_cfg", {}))
    if stage.get("slices") is not None:
        from kit.data.slices import SliceDataset

        spec = dict(stage["slices"])
        dataset = SliceDataset(cache, slices, axis=int(spec.get("axis", 2)), cohort=cohort, size=int(spec.get("size", 64)),
                               channels=spec.get("channels", "all"), curated=bool(spec.get("curated", True)))
        modalities = dataset.modalities
        objective_cfg.setdefault("lr_dim", dataset.lr_dim)  # left-right flips only where the slice has that axis
    else:
        dataset = ArrayCropDataset(cache.images(), stage["crop"])
    model = create_model(stage["backbone"], in_channels=len(modalities), out_channels=3, **stage.get("model", {}))
    name = stage.get("objective", "swin_trio")
    if getattr(objective_class(name), "uses_total_steps", False):
        objective_cfg.setdefault("total_steps", int(stage["steps"]))  # e.g. a coarse-to-fine schedule
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
        The loop's summary dict.
    """
    return train(
        setup.objective,
        setup.dataset,
        setup.train_config,
        setup.out_dir,
        init_checkpoint=init_checkpoint,
        modalities=setup.modalities,
        callback=callback,
    )
