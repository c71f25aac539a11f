"""The run profiles of :mod:`kit.profiles`, every key checked against the configs they feed.

:mod:`kit.profiles` (plain data at the bottom of the kit) refuses unknown top-level, cohort and task keys
itself; the stage keys (:func:`kit.train.checks.stage_keys`: TrainConfig fields plus the stage's own) and the
fine-tuning keys (:class:`kit.finetune.FinetuneConfig` fields) belong to rooms above it, so this room, which
sits above them, passes them in. Notebooks read profiles from here (through :mod:`kit.run.pipeline`).

Example:
    >>> profile_config("smoke")["stage1"]["objective"]
    'swin_trio'
    >>> validate_profile("x", {"finetune": {"config": {"stesp": 3}}})
    Traceback (most recent call last):
    ...
    ValueError: profile 'x' finetune.config: unknown key 'stesp'; did you mean 'steps'?
"""

from __future__ import annotations

from typing import Mapping

from kit import profiles
from kit.profiles import PROFILES  # noqa: F401  (re-exported)

__all__ = ["PROFILES", "profile_config", "validate_profile"]


def validate_profile(name: str, profile: Mapping) -> None:
    """Refuse any unknown key of a resolved profile, naming the nearest valid one (imports torch)."""
    from dataclasses import fields

    from kit.finetune.config import FinetuneConfig
    from kit.train.checks import stage_keys

    profiles.validate_profile(name, profile, stage_keys=stage_keys(),
                              config_keys=tuple(f.name for f in fields(FinetuneConfig)))


def profile_config(profile: str) -> dict:
    """The settings of a profile (a deep copy, safe to modify in a notebook), every key checked."""
    config = profiles.profile_config(profile)
    validate_profile(profile, config)
    return config
