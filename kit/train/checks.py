"""Checks of a pretraining request before anything is written: settings, what the objective needs, ``--init``.

``kit pretrain`` (through :func:`kit.train.pretrain.prepare_stage`, which notebooks 02-03 call too) and
``kit reproduce`` (:func:`kit.run.pipeline.reproduce`) run these first, so a refusal leaves the run folder
as it was: no cache, no ``seen_subjects.json``, no stage folder. Each check raises ``ValueError`` (or
``FileNotFoundError``) with one line naming the setting, file or argument and what is wrong.

* :func:`check_setting` types a stage setting against :class:`kit.train.loop.TrainConfig`'s field types
  and the stage's own keys (:data:`kit.profiles.STAGE_EXTRA_KEYS`);
* :func:`check_objective_fits` compares what an objective class declares (``spatial_dims``,
  ``min_channels``, ``min_crop``: :class:`kit.ssl.base.SSLObjective`) with the stage and its contrasts;
* :func:`check_pretrain_request` does all of it for one stage of a run, plus the 2D slice table, the
  backbone's input size, the objective's options and the initial checkpoint.

Example:
    >>> check_setting("steps", 5)
    >>> check_setting("steps", "abc")
    Traceback (most recent call last):
    ...
    ValueError: steps must be a positive integer
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["check_setting", "check_settings", "stage_channels", "check_objective_fits", "check_slices",
           "check_stage_settings", "check_pretrain_request"]

# TrainConfig fields the command sets from its own arguments: a --set of them would be ignored.
_COMMAND_ARGS = {"device": "--device", "seed": "--seed", "progress": "--quiet"}
_POSITIVE_INTS = ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every")
_DICTS = ("model", "objective_cfg", "objective_cfgs", "objective_stages")
_SLICE_KEYS = ("axis", "size", "channels", "curated")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_train_field(key: str, value: Any, kind: Any) -> str | None:
    """The problem with TrainConfig field ``key`` = ``value`` (its annotation ``kind``), or None."""
    from kit.devices import AMP_CHOICES

    if key in _POSITIVE_INTS:
        return None if _is_int(value) and value >= 1 else f"{key} must be a positive integer"
    if key == "lr":
        return None if _is_number(value) and value > 0 else "lr must be a positive finite number"
    if key == "max_grad_norm":
        return None if value is None or (_is_number(value) and value > 0) else \
            "max_grad_norm must be a positive finite number or null"
    if key == "betas":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(b) and 0 <= b < 1 for b in value)
        return None if ok else "betas must be two numbers in [0, 1), e.g. [0.9,0.999]"
    if key == "amp":
        return None if value in AMP_CHOICES else f"amp must be one of {', '.join(AMP_CHOICES)}"
    if kind is bool:
        return None if isinstance(value, bool) else f"{key} must be true or false"
    if kind is int:
        return None if _is_int(value) and value >= 0 else f"{key} must be an integer >= 0"
    if kind is float:
        return None if _is_number(value) and value >= 0 else f"{key} must be a finite number >= 0"
    return None


def _check_slices_setting(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return 'slices must be a JSON object such as {"axis": 2, "size": 64} or null'
    unknown = sorted(set(value) - set(_SLICE_KEYS))
    if unknown:
        return f"slices: unknown key {unknown[0]!r}; keys are {', '.join(_SLICE_KEYS)}"
    if "axis" in value and value["axis"] not in (0, 1, 2):
        return "slices.axis must be 0, 1 or 2"
    if "size" in value and not (_is_int(value["size"]) and value["size"] >= 1):
        return "slices.size must be a positive integer"
    if "curated" in value and not isinstance(value["curated"], bool):
        return "slices.curated must be true or false"
    channels = value.get("channels", "all")
    if not (isinstance(channels, str) or (_is_int(channels) and channels >= 0)):
        return "slices.channels must be 'all', a contrast name or a channel index"
    return None


def stage_keys() -> tuple[str, ...]:
    """Keys a pretraining stage may set: :class:`kit.train.loop.TrainConfig` fields plus the stage's own
    (:data:`kit.profiles.STAGE_EXTRA_KEYS`).

    Example:
        >>> {"steps", "lr", "backbone", "slices"} <= set(stage_keys())
        True
    """
    from kit.profiles import STAGE_EXTRA_KEYS
    from kit.train.loop import TrainConfig

    return tuple(f.name for f in fields(TrainConfig)) + STAGE_EXTRA_KEYS


def check_setting(key: str, value: Any) -> None:
    """Refuse one pretraining-stage setting whose key is unknown or whose value has the wrong type or range.

    The types are :class:`kit.train.loop.TrainConfig`'s fields (``steps`` a positive integer, ``lr`` a
    positive finite number, ``amp`` one of its choices...) and the stage's own keys (``crop`` a positive
    integer, ``backbone`` a registered model, ``objective`` a registered objective, ``model`` and
    ``objective_cfg`` JSON objects, ``slices`` a slice spec or null). ``device``, ``seed`` and
    ``progress`` belong to the command's own arguments.

    Raises:
        ValueError: one line without a prefix, e.g. ``steps must be a positive integer``.

    Example:
        >>> check_setting("lr", 1e-3)
        >>> check_setting("lr", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: lr must be a positive finite number
    """
    from kit.profiles import STAGE_EXTRA_KEYS, check_keys
    from kit.train.loop import TrainConfig

    kinds = typing.get_type_hints(TrainConfig)
    names = [f.name for f in fields(TrainConfig)]
    try:
        check_keys([key], names + list(STAGE_EXTRA_KEYS), "stage settings")
    except ValueError as err:
        raise ValueError(str(err).removeprefix("stage settings: ")) from None
    if key in _COMMAND_ARGS:
        raise ValueError(f"{key} is set by the command's {_COMMAND_ARGS[key]} option, not as a stage setting")
    problem: str | None
    if key in names:
        problem = _check_train_field(key, value, kinds.get(key))
    elif key == "crop":
        ok = _is_int(value) and value >= 1
        problem = None if ok else "crop must be a positive integer (voxels per side)"
    elif key == "backbone":
        from kit.models import list_models

        problem = None if value in list_models() else f"backbone must be one of {', '.join(list_models())}"
    elif key == "objective":
        from kit.ssl import list_objectives

        problem = None if value in list_objectives() else f"objective must be one of {', '.join(list_objectives())}"
    elif key == "compare_objectives":
        from kit.ssl import list_objectives

        ok = isinstance(value, list) and all(v in list_objectives() for v in value)
        problem = None if ok else f"compare_objectives must be a list of {', '.join(list_objectives())}"
    elif key in _DICTS:
        problem = None if isinstance(value, dict) else f"{key} must be a JSON object, e.g. {{}}"
    elif key == "slices":
        problem = _check_slices_setting(value)
    elif key == "cohort":
        problem = None if isinstance(value, str) and value else "cohort must be the name of a cohort of the run's datalist"
    else:  # pragma: no cover - every STAGE_EXTRA_KEYS entry is handled above
        problem = None
    if problem:
        raise ValueError(problem)


def check_settings(settings: Mapping[str, Any], where: str) -> None:
    """:func:`check_setting` for each item; the message starts with ``where`` and shows the value.

    Example:
        >>> check_settings({"steps": -5}, "overrides of stage 1")
        Traceback (most recent call last):
        ...
        ValueError: overrides of stage 1: steps=-5: steps must be a positive integer
    """
    import json

    for key, value in settings.items():
        try:
            check_setting(key, value)
        except ValueError as err:
            raise ValueError(f"{where}: {key}={json.dumps(value, default=str)}: {err}") from None


def stage_channels(stage: Mapping[str, Any], modalities: Sequence[str]) -> list[str]:
    """The contrasts a stage's network reads: all of ``modalities`` for 3D crops; for a 2D stage those that
    ``slices.channels`` selects (``'all'``, a name or an index), as :class:`kit.data.slices.SliceDataset` does.

    Example:
        >>> stage_channels({"slices": {"channels": "flair"}}, ["t1", "flair"]), stage_channels({}, ["t1", "flair"])
        (['flair'], ['t1', 'flair'])
    """
    modalities = list(modalities)
    spec = stage.get("slices")
    if spec is None or spec.get("channels", "all") == "all":
        return modalities
    channels = spec["channels"]
    if isinstance(channels, str):
        if channels not in modalities:
            raise ValueError(f"slices.channels: no contrast {channels!r}; the data has {', '.join(modalities)}")
        return [channels]
    if not 0 <= int(channels) < len(modalities):
        raise ValueError(f"slices.channels: channel {channels} outside 0..{len(modalities) - 1} ({', '.join(modalities)})")
    return [modalities[int(channels)]]


def check_objective_fits(objective: str, stage: Mapping[str, Any], modalities: Sequence[str], source: str) -> None:
    """Refuse a stage whose data or settings cannot satisfy what the objective class declares.

    Args:
        objective: a registered objective name.
        stage: the stage's settings (:func:`kit.train.pretrain.stage_settings`).
        modalities: the contrasts of the stage's cohort, in order.
        source: where ``modalities`` come from, for the message (``RUN/01_curation/datalist.json cohort
            'healthy'``).

    Raises:
        ValueError: one line naming the requirement, e.g. ``objective 'cross_contrast' needs >= 2
            contrasts; RUN/01_curation/datalist.json cohort 'healthy' has 1 (t1)``.

    Example:
        >>> check_objective_fits("cross_contrast", {"crop": 32}, ["t1"], "datalist.json cohort 'healthy'")
        Traceback (most recent call last):
        ...
        ValueError: objective 'cross_contrast' needs >= 2 contrasts; datalist.json cohort 'healthy' has 1 (t1)
    """
    from kit.ssl.base import objective_class

    cls = objective_class(objective)
    spec = stage.get("slices")
    dims = 2 if spec is not None else 3
    if cls.spatial_dims != dims:
        wants = "2D slices (the stage needs a 'slices' setting)" if cls.spatial_dims == 2 else "3D crops"
        raise ValueError(f"objective {objective!r} trains on {wants}; the stage's settings give it "
                         f"{'2D slices' if dims == 2 else '3D crops'}")
    channels = stage_channels(stage, modalities)
    if len(channels) < cls.min_channels:
        raise ValueError(f"objective {objective!r} needs >= {cls.min_channels} contrasts; {source} has "
                         f"{len(channels)} ({', '.join(channels) or 'none'})")
    side, what = (int(spec.get("size", 64)), "slices.size") if dims == 2 else (stage.get("crop"), "crop")
    if side is None:
        raise ValueError(f"objective {objective!r} trains on 3D crops; the stage has no crop setting")
    if int(side) < cls.min_crop:
        raise ValueError(f"objective {objective!r} needs {what} >= {cls.min_crop} voxels per side; the stage's "
                         f"{what} is {side}")


def check_slices(slices: str | os.PathLike, stage: Mapping[str, Any], subjects: Sequence[str], cohort: str,
                 slice_filter: Mapping[str, Any] | None = None) -> int:
    """The number of slices a 2D stage will train on; refuse a table that leaves none or does not fit.

    Reads ``slices.csv`` (notebook 01) only: the same selection as :class:`kit.data.slices.SliceDataset`
    (the cohort's subjects, ``kept`` rows when ``slices.curated``), checked before the cache is built.

    Raises:
        FileNotFoundError / ValueError: one line naming ``slices.csv`` and the filter.

    Example:
        >>> check_slices("runs/x/01_curation/slices.csv", {"slices": {"axis": 2}}, ["s1"], "healthy")  # doctest: +SKIP
        37
    """
    from kit.data.slices import read_slice_table, select_slices

    spec = dict(stage.get("slices") or {})
    path = Path(slices)
    table = read_slice_table(path)
    axis, curated = int(spec.get("axis", 2)), bool(spec.get("curated", True))
    if "axis" in table.columns and len(table) and set(table.axis.unique()) != {axis}:
        raise ValueError(f"{path}: slices were taken along axis {sorted(table.axis.unique())}, but the stage's "
                         f"slices.axis is {axis}")
    every = select_slices(table, subjects, curated=False, cohort=cohort)
    unlisted = sorted(set(map(str, subjects)) - set(every.subject.astype(str)))
    if unlisted:
        raise ValueError(f"{path}: no slices listed for {len(unlisted)} subjects of cohort {cohort!r} "
                         f"(e.g. {unlisted[0]}); rerun notebook 01 (kit reproduce --force 01)")
    kept = select_slices(table, subjects, curated=curated, cohort=cohort)
    if kept.empty:
        rule = "".join(f", {k} {v}" for k, v in (slice_filter or {}).items())
        raise ValueError(f"{path}: the slice filter kept no slice of cohort {cohort!r} ({len(every)} slices of "
                         f"{len(subjects)} subjects, 'kept' false for all{rule}); loosen the profile's slice_filter "
                         "or set slices.curated=false")
    return len(kept)


def _build(stage: Mapping[str, Any], objective: str, channels: Sequence[str]):
    """A throwaway model and objective of the stage (to check its options and input size), RNG untouched."""
    import torch

    from kit.models import create_model
    from kit.ssl import create_objective
    from kit.ssl.base import objective_class

    cfg = dict(stage.get("objective_cfg") or {})
    if getattr(objective_class(objective), "uses_total_steps", False):
        cfg.setdefault("total_steps", int(stage["steps"]))
    if stage.get("slices") is not None:
        from kit.data.slices import lr_dim_of

        cfg.setdefault("lr_dim", lr_dim_of(int(stage["slices"].get("axis", 2))))
    with torch.random.fork_rng(devices=[]):
        try:
            model = create_model(stage["backbone"], in_channels=len(channels), out_channels=3, **stage.get("model", {}))
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"backbone {stage['backbone']!r} with model {dict(stage.get('model', {}))}: "
                             f"{_first_line(err)}") from None
        try:
            create_objective(objective, model, **cfg)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"objective {objective!r} with objective_cfg {dict(stage.get('objective_cfg') or {})}: "
                             f"{_first_line(err)}") from None
    side = int(stage["slices"].get("size", 64)) if stage.get("slices") is not None else int(stage["crop"])
    dims = 2 if stage.get("slices") is not None else 3
    probe = torch.empty(1, len(channels), *[side] * dims, device="meta")
    try:
        model.check_input(probe)
    except ValueError as err:
        what = "slices.size" if dims == 2 else "crop"
        raise ValueError(f"{what} {side} does not fit backbone {stage['backbone']!r}: {_first_line(err)}") from None
    return model


def _first_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def _check_init(model, init: Path, stage: Mapping[str, Any], objective: str, channels: Sequence[str], label: str):
    """Refuse an initial checkpoint that cannot start this stage (missing, unreadable, another backbone)."""
    from kit.models.checkpoints import CheckpointError, load_checkpoint
    from kit.models.transfer import init_from_checkpoint
    from kit.ssl import list_objectives
    from kit.ssl.base import objective_class

    if not init.is_file():
        raise FileNotFoundError(f"{label} {init}: no such file" if not init.exists() else f"{label} {init}: not a file")
    try:
        checkpoint = load_checkpoint(init)
    except CheckpointError as err:
        raise ValueError(f"{label} {init}: {str(err).removeprefix(f'{init}: ')}") from None
    theirs = (checkpoint.get("model_config") or {}).get("name")
    ssl = ((checkpoint.get("extra") or {}).get("ssl_objective") or {}).get("name")
    their_dims = objective_class(ssl).spatial_dims if ssl in list_objectives() else None
    dims = 2 if stage.get("slices") is not None else 3
    if theirs != stage["backbone"] or (their_dims is not None and their_dims != dims):
        made = f"{their_dims}D " if their_dims else ""
        by = f", objective {ssl!r}" if ssl else ""
        raise ValueError(f"{label} {init}: a {made}checkpoint ({theirs}{by}) cannot start this {dims}D stage "
                         f"({stage['backbone']}, objective {objective!r})")
    try:
        init_from_checkpoint(model, checkpoint, modalities=list(channels), source=init)
    except (CheckpointError, ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"{label} {init}: does not fit this stage's {stage['backbone']} backbone: "
                         f"{_first_line(err)}") from None


def check_pretrain_request(
    stage: Mapping[str, Any],
    modalities: Sequence[str],
    *,
    subjects: Sequence[str],
    datalist: str | os.PathLike,
    cohort: str,
    slices: str | os.PathLike | None = None,
    init_checkpoint: str | os.PathLike | None = None,
    init_label: str = "--init",
    slice_filter: Mapping[str, Any] | None = None,
) -> None:
    """Everything a pretraining stage can be refused for, checked before it writes a file.

    The stage settings' types (:func:`check_settings`) and :class:`TrainConfig`; what the objective
    declares against the cohort's contrasts and the stage (:func:`check_objective_fits`); a cohort with no
    subject; a 2D stage's slice table (:func:`check_slices`); the objective's options and the crop or slice
    size against the backbone (a throwaway model); the initial checkpoint (exists, is a kit checkpoint of
    the same backbone and dimensionality, its weights fit).

    Args:
        stage: the stage's settings (:func:`kit.train.pretrain.stage_settings`).
        modalities: the cohort's contrasts; subjects: its subject ids.
        datalist, cohort: where they come from (for messages).
        slices: notebook 01's ``slices.csv`` (a 2D stage).
        init_checkpoint: the weights the stage starts from, or None; ``init_label`` names it in messages.
        slice_filter: the profile's ``slice_filter`` (shown when it keeps no slice).

    Raises:
        ValueError / FileNotFoundError: one line naming the setting, file or argument.

    Example:
        >>> check_pretrain_request(stage_settings("smoke", 1), ["t1"], subjects=["s1"], datalist="d.json",
        ...                        cohort="healthy")  # doctest: +SKIP
    """
    objective = stage.get("objective", "swin_trio")
    source = f"{datalist} cohort {cohort!r}"
    if not subjects:
        raise ValueError(f"{source} has no subject to pretrain on")
    if stage.get("slices") is not None:
        if slices is None:
            raise ValueError(f"objective {objective!r} trains on 2D slices: it needs notebook 01's slices.csv")
        check_objective_fits(objective, stage, modalities, source)  # the table is read only if the stage fits
        check_slices(slices, stage, subjects, cohort, slice_filter)
    model = check_stage_settings(stage, modalities, source)
    if init_checkpoint is not None:
        _check_init(model, Path(init_checkpoint), stage, objective, stage_channels(stage, modalities), init_label)


def check_stage_settings(stage: Mapping[str, Any], modalities: Sequence[str], source: str):
    """A stage's settings against the schema, :class:`TrainConfig`, its objective's needs and its backbone.

    Needs no run folder: ``kit reproduce`` runs it on the profile before notebook 01 (``modalities`` from
    the cohort's manifest) and :func:`check_pretrain_request` on the run's datalist.

    Returns:
        a throwaway model of the stage (to check an initial checkpoint against).

    Raises:
        ValueError: one line naming the setting, e.g. ``objective 'mim' needs crop >= 32 voxels per side``.

    Example:
        >>> from kit.train.pretrain import stage_settings
        >>> _ = check_stage_settings(stage_settings("smoke", 1), ["t1", "flair"], "datalist.json cohort 'healthy'")
        >>> check_stage_settings(stage_settings("smoke", 1, "mim", {"crop": 16}), ["t1"], "d")
        Traceback (most recent call last):
        ...
        ValueError: objective 'mim' needs crop >= 32 voxels per side; the stage's crop is 16
    """
    from kit.train.pretrain import train_config_from

    objective = stage.get("objective", "swin_trio")
    check_settings({k: v for k, v in stage.items() if k not in _COMMAND_ARGS}, "stage settings")
    try:
        train_config_from(dict(stage), seed=0, device="auto", progress=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"stage settings: {_first_line(err)}") from None
    check_objective_fits(objective, stage, modalities, source)
    return _build(stage, objective, stage_channels(stage, modalities))
