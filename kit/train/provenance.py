"""Which subjects each pretraining stage saw, and the study's leakage guard.

A label-efficiency study is only honest if its test subjects were never seen by the encoder it
fine-tunes. BrainSegFounder's stage 2 pretrains on every BraTS subject, test cases included, so
a comparison on the same test set flatters the pretrained model. Each stage therefore writes
``seen_subjects.json`` beside its checkpoint: its own subjects plus those of the stage it started
from (the lineage), and :func:`leakage_report` intersects that with a study's test, validation and
labelled subjects (:func:`guard_leakage` refuses any overlap, and any checkpoint without a record, in
``refuse`` mode)::

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

__all__ = ["SEEN_FILE", "LEAKAGE_MODES", "record_seen_subjects", "seen_subjects", "leakage_report", "guard_leakage",
           "describe_leakage"]

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


#: ``refuse``: an init whose pretraining saw a study subject (or has no record) stops the study;
#: ``flag``: it runs and the overlap is reported (the published transductive protocol, ``full`` only)
LEAKAGE_MODES = ("refuse", "flag")


def _roles(subjects: Sequence[str] | Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    if isinstance(subjects, Mapping):
        return {str(role): {str(s) for s in ids} for role, ids in subjects.items()}
    return {"test": {str(s) for s in subjects}}


def leakage_report(inits: Mapping[str, str], subjects: Sequence[str] | Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """The study subjects each initialisation's pretraining saw.

    Args:
        inits: init name -> 'scratch' or a checkpoint path.
        subjects: the study's subjects by role (``{"test": [...], "validation": [...], "labelled": [...]}``),
            or a plain list of test subjects.

    Returns:
        ``{init: {"stages": [stages that saw study subjects], "subjects": [those subjects],
        "roles": {role: [subjects]}}}``, only for inits with an overlap; an init whose checkpoint has
        no ``seen_subjects.json`` (provenance unknown) gets ``{"stages": [], "subjects": [],
        "roles": {}, "unrecorded": True}``.

    Example:
        >>> leakage_report({"scratch": "scratch"}, ["s1"])
        {}
    """
    roles = _roles(subjects)
    study = set().union(*roles.values()) if roles else set()
    out = {}
    for name, init in inits.items():
        if str(init) == "scratch":
            continue
        seen = seen_subjects(init)
        if seen is None:
            out[name] = {"stages": [], "subjects": [], "roles": {}, "unrecorded": True}
            continue
        stages = [stage for stage, ids in seen.items() if study & set(ids)]
        if stages:
            hit = study & {s for st in stages for s in seen[st]}
            out[name] = {"stages": stages, "subjects": sorted(hit),
                         "roles": {role: sorted(ids & hit) for role, ids in roles.items() if ids & hit}}
    return out


def guard_leakage(inits: Mapping[str, str], subjects: Sequence[str] | Mapping[str, Sequence[str]], mode: str,
                  where: str) -> dict[str, dict]:
    """The leakage guard of every fine-tuning readout (study, probes, the 2D slice study).

    Args:
        inits, subjects: as for :func:`leakage_report`.
        mode: ``'refuse'`` (raise when an init's pretraining saw any of ``subjects``, or when its
            checkpoint has no seen-subjects record) or ``'flag'`` (return the overlap, warn about
            unrecorded checkpoints).
        where: what is checked, for the message (e.g. ``"run_study: task 'tumor_seg'"``).

    Returns:
        :func:`leakage_report` (empty when nothing leaked).

    Raises:
        ValueError: one line naming the init, the stage, the roles and example subjects.

    Example:
        >>> guard_leakage({"scratch": "scratch"}, {"test": ["s1"]}, "refuse", "demo")
        {}
        >>> guard_leakage({"x": "/nowhere/ckpt.pt"}, {"test": ["s1"]}, "refuse", "demo")
        Traceback (most recent call last):
        ...
        ValueError: demo: init 'x' (/nowhere/ckpt.pt) has no seen_subjects.json beside it, so nothing shows which subjects its pretraining saw; record them or use leakage='flag'
    """
    if mode not in LEAKAGE_MODES:
        raise ValueError(f"{where}: leakage must be one of {LEAKAGE_MODES}, got {mode!r}")
    report = leakage_report(inits, subjects)
    for name, entry in report.items():
        if entry.get("unrecorded"):
            if mode == "refuse":
                raise ValueError(f"{where}: init {name!r} ({inits[name]}) has no {SEEN_FILE} beside it, so nothing "
                                 "shows which subjects its pretraining saw; record them or use leakage='flag'")
            warnings.warn(f"{inits[name]}: no {SEEN_FILE} beside it; cannot check that study subjects were unseen "
                          "in its pretraining", stacklevel=2)
        elif mode == "refuse":
            roles = ", ".join(f"{len(ids)} {role}" for role, ids in entry["roles"].items())
            raise ValueError(f"{where}: init {name!r} saw study subjects in pretraining ({roles} subjects in "
                             f"{entry['stages']}, e.g. {entry['subjects'][:3]}); pretrain on a pool without them, "
                             "or use leakage='flag' to run the published transductive protocol and report it")
    return {name: entry for name, entry in report.items() if not entry.get("unrecorded")}


def describe_leakage(leaks: Mapping[str, Mapping[str, dict]]) -> str:
    """One line for a report from ``leakage.json`` (task -> :func:`leakage_report`): how many study
    subjects (test, validation, labelled) each task's inits saw, and in which stages.

    Example:
        >>> describe_leakage({"tumor_seg": {"stage1+2": {"stages": ["03_stage2"], "subjects": ["a", "b"],
        ...                                              "roles": {"test": ["a"], "validation": ["b"]}},
        ...                                 "mim:stage1+2": {"stages": ["03_stage2"], "subjects": ["a", "b"],
        ...                                                  "roles": {"test": ["a"], "validation": ["b"]}}}})
        'study subjects seen (unlabelled) in pretraining, as in the published two-stage protocol: tumor_seg: 1 test + 1 validation in 03_stage2 (stage1+2, mim:stage1+2)'
        >>> describe_leakage({})
        'no study subject (test, validation or labelled) seen in pretraining'
    """
    parts = []
    for task, per_init in leaks.items():
        groups: dict[tuple, list[str]] = {}
        for init, entry in per_init.items():
            roles = entry.get("roles") or {"test": entry["subjects"]}  # leakage.json from before roles: test only
            counts = " + ".join(f"{len(ids)} {role}" for role, ids in roles.items())
            groups.setdefault((counts, ", ".join(entry["stages"])), []).append(init)
        parts.append(f"{task}: " + ", ".join(f"{n} in {stages} ({', '.join(inits)})" for (n, stages), inits in groups.items()))
    if not parts:
        return "no study subject (test, validation or labelled) seen in pretraining"
    return "study subjects seen (unlabelled) in pretraining, as in the published two-stage protocol: " + "; ".join(parts)
