"""Subject-level, seeded, nested splits for the label-efficiency study.

BrainSegFounder's few-shot splits were unseeded and its scripts missing; here a split is a pure
function of (subjects, seed): a fixed test set, then, per seed, one permutation of the remaining
training subjects whose prefixes are the label-fraction subsets. A smaller fraction is therefore
always a subset of a larger one (nested), and the same seed always gives the same subjects.

Splits are by *subject*: every entry of a subject (several sessions, several files) lands on the
same side, so no subject leaks from training into test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["check_disjoint", "stratified_order", "train_test_split", "label_fraction_subsets", "subjects_of"]


def subjects_of(entries: Sequence[dict]) -> list[str]:
    """Unique subject ids of datalist entries, in first-seen order.

    Example:
        >>> subjects_of([{"subject": "a"}, {"subject": "b"}, {"subject": "a"}])
        ['a', 'b']
    """
    return list(dict.fromkeys(str(e["subject"]) for e in entries))


def stratified_order(ids: Sequence[str], seed: int, strata: Sequence | None = None) -> list[str]:
    """A seeded permutation of ``ids`` whose every prefix keeps the strata's proportions.

    Each stratum is shuffled on its own; subjects are then merged by their relative rank
    ``(rank + u) / stratum_size`` (u a seeded jitter in [0, 1)), so the first k subjects hold
    each stratum in proportion up to rounding.

    Args:
        ids: subject ids.
        seed: permutation seed.
        strata: one label per id (e.g. tumour type), or None for a plain permutation.

    Example:
        >>> order = stratified_order(["a", "b", "c", "d"], 0, strata=[0, 0, 1, 1])
        >>> sorted(order) == ["a", "b", "c", "d"] and len({order[0], order[1]} & {"a", "b"}) == 1
        True
    """
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("stratified_order: subject ids must be unique (split by subject, not by file)")
    # sort first: the same subjects give the same order whatever order the datalist lists them in
    if strata is not None:
        if len(strata) != len(ids):
            raise ValueError(f"stratified_order: {len(strata)} strata for {len(ids)} ids")
        ids, strata = (list(t) for t in zip(*sorted(zip(ids, strata)))) if ids else ([], [])
    else:
        ids = sorted(ids)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    if strata is None:
        return [ids[i] for i in rng.permutation(len(ids))]
    keys = np.empty(len(ids))
    labels = np.asarray([str(s) for s in strata])
    for value in sorted(set(labels)):
        members = np.flatnonzero(labels == value)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    return [ids[i] for i in np.argsort(keys, kind="stable")]


def train_test_split(
    ids: Sequence[str], test_fraction: float, seed: int = 0, strata: Sequence | None = None
) -> tuple[list[str], list[str]]:
    """A fixed, stratified test set and the remaining training pool (both sorted).

    Args:
        ids: subject ids.
        test_fraction: share of subjects held out, in (0, 1); at least one subject each side.
        seed: split seed (keep it fixed across the study's seeds so the test set is fixed).
        strata: optional labels to balance (e.g. ``tumor_present``).

    Example:
        >>> train, test = train_test_split([f"s{i}" for i in range(10)], 0.3, seed=0)
        >>> len(train), len(test), set(train) & set(test)
        (7, 3, set())
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(ids) < 2:
        raise ValueError(f"need at least 2 subjects to split, got {len(ids)}")
    order = stratified_order(ids, seed + 1_000_003, strata)
    n_test = min(max(1, round(test_fraction * len(order))), len(order) - 1)
    return sorted(order[n_test:]), sorted(order[:n_test])


def label_fraction_subsets(
    train_ids: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    strata: Sequence | None = None,
    min_subjects: int = 1,
) -> dict[float, list[str]]:
    """Nested label-fraction subsets of the training pool for one study seed.

    The subset for fraction f is the first ``max(min_subjects, ceil(f * n))`` subjects of one
    seeded (stratified) permutation, so subsets are nested: f1 < f2 implies subset(f1) ⊆ subset(f2).

    Args:
        train_ids: the training pool (test subjects already removed).
        fractions: label fractions in (0, 1], e.g. (0.01, 0.05, 0.1, 0.25, 1.0).
        seed: the study seed (different seeds give different subsets of the same sizes).
        strata: optional labels to keep balanced in every subset.
        min_subjects: lower bound on a subset's size (1 % of 40 subjects is still 1 subject).

    Returns:
        ``{fraction: sorted subject ids}``.

    Example:
        >>> subsets = label_fraction_subsets([f"s{i}" for i in range(20)], (0.1, 0.5, 1.0), seed=3)
        >>> [len(subsets[f]) for f in (0.1, 0.5, 1.0)], set(subsets[0.1]) <= set(subsets[0.5])
        ([2, 10, 20], True)
    """
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"label fractions must be in (0, 1], got {f}")
    order = stratified_order(train_ids, seed, strata)
    n = len(order)
    return {
        float(f): sorted(order[: min(n, max(int(min_subjects), math.ceil(f * n - 1e-9)))])
        for f in sorted(fractions)
    }


def paired_seed_subsets(
    train_ids: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    strata: Sequence | None = None,
    min_subjects: int = 1,
    max_tries: int = 100,
) -> dict[int, dict[float, list[str]]]:
    """:func:`label_fraction_subsets` for every study seed, with a different smallest subset per seed.

    With one labelled subject out of 22, five independent draws repeat a subject about a third of
    the time, and a repeated set is a repeated experiment (a linear probe on it is the very same
    fit), so the seeds would count one labelled set twice. A seed whose smallest subset an earlier
    seed already drew is redrawn (deterministically, from ``seed + 100003 * k``) until it differs,
    while the pool allows; a seed that collides with no earlier one keeps its own draw.

    Returns:
        ``{seed: {fraction: sorted subject ids}}``, nested per seed.

    Example:
        >>> ids = [f"s{i}" for i in range(6)]
        >>> per_seed = paired_seed_subsets(ids, (1 / 6, 1.0), seeds=range(6))
        >>> len({tuple(v[1 / 6]) for v in per_seed.values()})  # six seeds, six different single subjects
        6
    """
    if not fractions:
        return {int(seed): {} for seed in seeds}
    smallest = float(min(fractions))
    out: dict[int, dict[float, list[str]]] = {}
    seen: set[tuple] = set()
    for seed in seeds:
        for attempt in range(max_tries):
            subsets = label_fraction_subsets(train_ids, fractions, int(seed) + 100003 * attempt, strata, min_subjects)
            key = tuple(subsets[smallest])
            if key not in seen or len(key) == len(train_ids):
                break
        seen.add(key)
        out[int(seed)] = subsets
    return out


def check_disjoint(groups: Mapping[str, Iterable[str]]) -> None:
    """Refuse subject IDs that appear in more than one group, naming the first such subject and both groups.

    Args:
        groups: group name -> subject IDs (e.g. ``{"pretraining pool": [...], "test": [...]}``).

    Raises:
        ValueError: one line, ``subject 'ID' is in both 'A' and 'B': ...``.

    Example:
        >>> check_disjoint({"a": ["1", "2"], "b": ["3"]})
    """
    owner: dict[str, str] = {}
    for name, subjects in groups.items():
        for subject in sorted({str(s) for s in subjects}):
            if subject in owner and owner[subject] != name:
                raise ValueError(f"subject {subject!r} is in both {owner[subject]!r} and {name!r}: a pretraining pool "
                                 "must hold no fine-tuning subject")
            owner[subject] = name
