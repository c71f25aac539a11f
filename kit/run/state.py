"""What a rerun of ``kit reproduce`` does with the stages a run directory already holds.

``RUN_DIR/run.json`` records, for every stage, its status and the settings it ran with
(``stages[STAGE]["settings"]``: the notebook parameters except ``run_dir``/``interactive``, and
the profile's section for that stage). Running ``kit reproduce`` again into the same folder then:

* **skips** a stage that is ``done`` with the same settings (its outputs, e.g. the stage-1
  checkpoint, stay byte for byte as they were); the device may differ, it changes no result;
* **refuses** a stage that is ``done`` with other settings (one line naming what differs), unless
  ``--force STAGE`` asks to redo it;
* **redoes** a forced stage, and every later stage of the call, from scratch: their folders are
  removed first, since their results were computed from the outputs being replaced;
* **resumes** a stage that failed or was interrupted (the training loop restarts from its last
  checkpoint).

Example:
    >>> decide("02_stage1", {"status": "done", "settings": {"seed": 0}}, {"seed": 0}, forced=False, upstream_redone=False)
    'skip'
    >>> decide("02_stage1", {"status": "failed"}, {"seed": 0}, forced=False, upstream_redone=False)
    'run'
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["STAGE_SECTIONS", "stage_settings", "decide", "SettingsChanged", "clear_stage"]

#: The profile keys each stage reads (the rest of a profile does not change that stage's result).
STAGE_SECTIONS = {
    "01_curation": ("cohorts", "resolution_mm", "slice_filter", "n_show"),
    "02_stage1": ("stage1",),
    "03_stage2": ("stage2",),
    "04_finetune": ("finetune",),
    "05_saliency": ("saliency",),
}
# Parameters that say where or how a stage runs, not what it computes.
_NOT_SETTINGS = ("run_dir", "interactive")
_MAY_DIFFER = ("device",)


class SettingsChanged(ValueError):
    """A finished stage was asked for again with different settings."""


def stage_settings(stage: str, parameters: dict, config: dict) -> dict:
    """The settings that define a stage's result: notebook parameters plus its profile section.

    Example:
        >>> stage_settings("02_stage1", {"profile": "smoke", "seed": 0, "run_dir": "r"}, {"stage1": {"steps": 8}})
        {'profile': 'smoke', 'seed': 0, 'config': {'stage1': {'steps': 8}}}
    """
    settings = {k: v for k, v in parameters.items() if k not in _NOT_SETTINGS}
    settings["config"] = {k: config[k] for k in STAGE_SECTIONS.get(stage, ()) if k in config}
    return settings


def _differences(stored: dict, current: dict) -> list[str]:
    keys = sorted(set(stored) | set(current))
    return [f"{k} {stored.get(k)!r} then, {current.get(k)!r} now" if k != "config" else "the profile's settings"
            for k in keys if k not in _MAY_DIFFER and stored.get(k) != current.get(k)]


def decide(stage: str, record: dict | None, settings: dict, *, forced: bool, upstream_redone: bool) -> str:
    """``'skip'``, ``'run'`` (resume or first run) or ``'redo'`` (clear the folder, run) for one stage.

    Args:
        stage: the stage name.
        record: ``run.json``'s entry for the stage (None when never run).
        settings: :func:`stage_settings` of this call.
        forced: ``--force`` names this stage.
        upstream_redone: an earlier stage of this call was redone or run, so this one is stale.

    Raises:
        SettingsChanged: the stage is done with other settings and was not forced.
    """
    status = (record or {}).get("status")
    if status != "done":
        return "redo" if forced else "run"
    if forced or upstream_redone:
        return "redo"
    stored = record.get("settings")
    if stored is None:  # written before settings were recorded: trust it
        return "skip"
    differences = _differences(stored, settings)
    if differences:
        raise SettingsChanged(
            f"{stage} is already done in this run directory with other settings ({'; '.join(differences)}): "
            f"pass --force {stage} to redo it (and the stages after it), or use a new --out folder"
        )
    return "skip"


def clear_stage(run_dir: str | Path, stage: str) -> None:
    """Remove ``RUN_DIR/STAGE`` (a stage folder written by kit) before the stage is redone."""
    folder = Path(run_dir) / stage
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
