"""One SSL pretraining stage from a datalist: cache, dataset, model, objective, loop.

Notebooks 02 (stage 1, healthy brains) and 03 (stage 2, diseased brains, from the stage-1
checkpoint) both call :func:`run_pretraining` with their profile's stage settings, so the two
stages differ only in data, channels, learning rate and initialisation, as in BrainSegFounder.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Callable

from kit.data.cache import CacheIndex, build_cache
from kit.train.loop import TrainConfig, train
from kit.train.sampling import ArrayCropDataset

__all__ = ["PretrainSetup", "prepare_pretraining", "run_pretraining", "train_config_from"]


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


def prepare_pretraining(
    stage: dict,
    entries: list[dict],
    modalities: list[str],
    out_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> PretrainSetup:
    """Build the cache, crop dataset, model and objective of one stage.

    Args:
        stage: the profile's stage settings: ``backbone``, ``model`` (kwargs), ``objective``,
            ``objective_cfg``, ``crop`` (voxels), and TrainConfig fields (steps, batch_size, lr, ...).
        entries: datalist entries of the stage's cohort.
        modalities: channel names of the entries' images.
        out_dir: the stage folder; the cache goes to ``out_dir/cache``.

    Example:
        >>> setup = prepare_pretraining(profile_config("smoke")["stage1"], entries, ["t1", "flair"], "runs/x/02_stage1")  # doctest: +SKIP
    """
    from kit.models import create_model
    from kit.ssl import create_objective

    out = Path(out_dir)
    cache = build_cache(entries, modalities, out / "cache", with_labels=False, progress=progress)
    dataset = ArrayCropDataset(cache.images(), stage["crop"])
    model = create_model(stage["backbone"], in_channels=len(modalities), out_channels=3, **stage.get("model", {}))
    objective = create_objective(stage.get("objective", "swin_trio"), model, **stage.get("objective_cfg", {}))
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
