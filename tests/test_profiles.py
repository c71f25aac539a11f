"""Profiles as data (kit/profiles.py): the base plus overrides resolve to exactly the settings the
profiles had as one literal, and unknown keys are refused with the nearest valid name."""

import json
from pathlib import Path

import pytest

from kit import profiles
from kit.run import profiles as run_profiles
from kit.pipeline import PROFILES, profile_config
from kit.train.pretrain import stage_settings, train_config_from

SNAPSHOT = Path(__file__).parent / "data" / "profiles_resolved.json"


def _typed(obj) -> str:
    # sorted keys: order-free; json keeps 4 vs 4.0 and True vs 1 apart, which == would not
    return json.dumps(obj, sort_keys=True)


def test_resolved_profiles_equal_the_frozen_literal():
    frozen = json.loads(SNAPSHOT.read_text())
    assert list(PROFILES) == list(frozen)
    for name in frozen:
        assert _typed(PROFILES[name]) == _typed(frozen[name]), name
        assert _typed(profile_config(name)) == _typed(frozen[name]), name
    assert list(PROFILES["smoke"]) == list(profiles.TOP_KEYS)  # the order a reader expects


def test_every_profile_passes_the_schema():
    for name, profile in PROFILES.items():
        run_profiles.validate_profile(name, profile)


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, path + (key,))
    else:
        yield path, json.dumps(obj)


def test_values_shared_by_every_profile_live_in_base():
    per_profile = [dict(_leaves(o)) for o in profiles.OVERRIDES.values()]
    shared = [path for path, value in per_profile[0].items() if all(p.get(path) == value for p in per_profile[1:])]
    assert shared == [], f"identical in every profile, belongs in BASE: {shared}"
    base_paths = dict(_leaves(profiles.BASE))
    overridden = [p for p in base_paths if all(p in o for o in per_profile)]
    assert overridden == [], f"in BASE but overridden by every profile: {overridden}"


@pytest.mark.parametrize("override, message", [
    ({"n_shwo": 2}, "profile 'bad': unknown key 'n_shwo'; did you mean 'n_show'?"),
    ({"stage1": {"warmup_step": 2}}, "profile 'bad' stage1: unknown key 'warmup_step'; did you mean 'warmup_steps'?"),
    ({"stage2": {"objective_stages": {"moco_v3": {"bacth_size": 8}}}},
     "stage2.objective_stages.moco_v3: unknown key 'bacth_size'; did you mean 'batch_size'?"),
    ({"finetune": {"config": {"pos_fractoin": 0.5}}}, "finetune.config: unknown key 'pos_fractoin'; did you mean 'pos_fraction'?"),
    ({"finetune": {"tasks": [{"name": "t", "task": "segmentation", "cohrot": "tumor"}]}},
     "finetune.tasks[0] (t): unknown key 'cohrot'; did you mean 'cohort'?"),
    ({"finetune": {"tasks": [{"name": "t", "config": {"stesp": 3}}]}}, "unknown key 'stesp'; did you mean 'steps'?"),
    ({"cohorts": {"tumor": {"nn": 3}}}, "cohorts.tumor: unknown key 'nn'; did you mean 'n'?"),
    ({"saliency": {"method": ["vanilla"]}}, "saliency: unknown key 'method'; did you mean 'methods'?"),
])
def test_unknown_keys_are_refused_with_the_nearest_name(override, message):
    with pytest.raises(ValueError) as error:
        run_profiles.validate_profile("bad", profiles.resolve("bad", profiles.deep_merge(profiles.OVERRIDES["smoke"], override)))
    assert message in str(error.value)


def test_train_config_from_refuses_unknown_stage_keys():
    stage = profile_config("smoke")["stage1"]
    assert train_config_from(stage, seed=0, device="cpu", progress=False).steps == stage["steps"]
    with pytest.raises(ValueError, match="unknown key 'ckpt_evry'; did you mean 'ckpt_every'"):
        train_config_from({**stage, "ckpt_evry": 2}, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="unknown key 'stepz'; did you mean 'steps'"):
        stage_settings("smoke", 1, overrides={"stepz": 3})


def test_unknown_profile_names_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'smoke'"):
        profile_config("smok")
