"""Which subjects each pretraining stage saw, and the study's leakage guard.

A label-efficiency study is only honest if its test subjects were never seen by the encoder it
fine-tunes. BrainSegFounder's stage 2 pretrains on every BraTS subject, test cases included, so
a comparison on the same test set flatters the pretrained model. Each stage therefore writes
``seen_subjects.json`` beside its checkpoint: its own subjects plus those of the stage it started
from (the lineage), and :func:`leakage_report` intersects that with a test set::

    {"stages": [{"stage": "02_stage1", "cohort": "healthy", "subjects": [...]},
                {"stage": "03_stage2", "cohort": "tumor", "subjects": [...]}]}
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from kit.tempfiles import write_text_atomic

__all__ = ["SEEN_FILE", "record_seen_subjects", "seen_subjects", "leakage_report"]

SEEN_FILE = "seen_subjects.json"


def _seen_path(checkpoint_or_dir: str | os.PathLike) -> Path:
    path = Path(checkpoint_or_dir)
    return path / SEEN_FILE if path.is_dir() else path.with_name(SEEN_FILE)


def seen_subjects(checkpoint: str | os.PathLike) -> dict[str, list[str]] | None:
    """Stage name -> subject ids seen by the checkpoint's stage and every stage before it; None
    when the checkpoint has no ``seen_subjects.json`` beside it (provenance unknown).

    Example:
        >>> seen_subjects("runs/x/03_stage2/checkpoint.pt")  # doctest: +SKIP
        {'02_stage1': ['UKB_0000', ...], '03_stage2': ['BraTS2021_00000', ...]}
    """
    path = _seen_path(checkpoint)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return {str(s["stage"]): [str(x) for x in s["subjects"]] for s in data["stages"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a seen-subjects record ({err})") from err


def record_seen_subjects(out_dir: str | os.PathLike, stage: str, subjects: Sequence[str], *, cohort: str | None = None,
                         init_checkpoint: str | os.PathLike | None = None) -> Path:
    """Write ``out_dir/seen_subjects.json``: this stage's subjects after those of ``init_checkpoint``'s lineage.

    Returns:
        The file written (atomically).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = record_seen_subjects(d, "03_stage2", ["b", "a"], cohort="tumor")
        >>> seen_subjects(Path(d) / "checkpoint.pt")
        {'03_stage2': ['a', 'b']}
    """
    stages = []
    if init_checkpoint is not None:
        parent = _seen_path(init_checkpoint)
        if parent.exists():
            stages = [s for s in json.loads(parent.read_text())["stages"] if s["stage"] != stage]
        else:
            warnings.warn(f"{init_checkpoint}: no {SEEN_FILE} beside it; the lineage of {stage} is incomplete",
                          stacklevel=2)
    stages.append({"stage": str(stage), "cohort": cohort, "subjects": sorted(str(s) for s in subjects)})
    path = Path(out_dir) / SEEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"stages": stages}, indent=1))
    return path


def leakage_report(inits: Mapping[str, str], test_subjects: Sequence[str]) -> dict[str, dict]:
    """The test subjects each initialisation's pretraining saw.

    Args:
        inits: init name -> 'scratch' or a checkpoint path.
        test_subjects: the study's test set (subject ids).

    Returns:
        ``{init: {"stages": [stages that saw test subjects], "subjects": [those subjects]}}``, only
        for inits with an overlap. A checkpoint without a record is warned about, not reported.

    Example:
        >>> leakage_report({"scratch": "scratch"}, ["s1"])
        {}
    """
    test = {str(s) for s in test_subjects}
    out = {}
    for name, init in inits.items():
        if str(init) == "scratch":
            continue
        seen = seen_subjects(init)
        if seen is None:
            warnings.warn(f"{init}: no {SEEN_FILE} beside it; cannot check that test subjects were unseen "
                          "in its pretraining", stacklevel=2)
            continue
        stages = [stage for stage, subjects in seen.items() if test & set(subjects)]
        if stages:
            out[name] = {"stages": stages, "subjects": sorted(test & {s for st in stages for s in seen[st]})}
    return out


def describe_leakage(leaks: Mapping[str, Mapping[str, dict]]) -> str:
    """One line for a report from ``leakage.json`` (task -> :func:`leakage_report`): how many test
    subjects each task's inits saw, and in which stages.

    Example:
        >>> describe_leakage({"tumor_seg": {"stage1+2": {"stages": ["03_stage2"], "subjects": ["a", "b"]},
        ...                                 "mim:stage1+2": {"stages": ["03_stage2"], "subjects": ["a", "b"]}}})
        'test subjects seen (unlabelled) in pretraining, as in the published two-stage protocol: tumor_seg: 2 in 03_stage2 (stage1+2, mim:stage1+2)'
        >>> describe_leakage({})
        'no test subject seen in pretraining'
    """
    parts = []
    for task, per_init in leaks.items():
        groups: dict[tuple, list[str]] = {}
        for init, entry in per_init.items():
            groups.setdefault((len(entry["subjects"]), ", ".join(entry["stages"])), []).append(init)
        parts.append(f"{task}: " + ", ".join(f"{n} in {stages} ({', '.join(inits)})" for (n, stages), inits in groups.items()))
    if not parts:
        return "no test subject seen in pretraining"
    return "test subjects seen (unlabelled) in pretraining, as in the published two-stage protocol: " + "; ".join(parts)
