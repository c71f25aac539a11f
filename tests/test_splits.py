"""Label-fraction splits: subject-level, nested, reproducible, stratified."""

import pytest

from kit.data.splits import label_fraction_subsets, stratified_order, subjects_of, train_test_split

IDS = [f"sub-{i:03d}" for i in range(40)]
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)


def test_subsets_are_nested_and_sized():
    subsets = label_fraction_subsets(IDS, FRACTIONS, seed=0)
    sizes = [len(subsets[f]) for f in FRACTIONS]
    assert sizes == [1, 2, 4, 10, 40]
    for small, large in zip(FRACTIONS, FRACTIONS[1:]):
        assert set(subsets[small]) <= set(subsets[large])


def test_reproducible_and_seed_dependent():
    a = label_fraction_subsets(IDS, FRACTIONS, seed=1)
    assert a == label_fraction_subsets(IDS, FRACTIONS, seed=1)
    assert a[0.25] != label_fraction_subsets(IDS, FRACTIONS, seed=2)[0.25]
    # independent of the order the ids come in
    assert label_fraction_subsets(list(reversed(IDS)), FRACTIONS, seed=1) == a


def test_test_set_is_fixed_and_disjoint():
    train, test = train_test_split(IDS, 0.25, seed=0)
    assert len(test) == 10 and not set(train) & set(test) and set(train) | set(test) == set(IDS)
    assert (train, test) == train_test_split(IDS, 0.25, seed=0)
    for seed in range(3):  # study seeds draw subsets from the training pool only
        for subset in label_fraction_subsets(train, FRACTIONS, seed).values():
            assert not set(subset) & set(test)


def test_stratified_prefixes_keep_proportions():
    strata = ["glioma"] * 20 + ["metastasis"] * 20
    order = stratified_order(IDS, 5, strata)
    label = dict(zip(IDS, strata))
    for k in (2, 4, 10, 20):
        counts = sum(label[s] == "glioma" for s in order[:k])
        assert abs(counts - k / 2) <= 1
    train, test = train_test_split(IDS, 0.2, seed=0, strata=strata)
    assert sum(label[s] == "glioma" for s in test) == 4


def test_subject_level_and_errors():
    entries = [{"subject": "a", "session": 1}, {"subject": "a", "session": 2}, {"subject": "b"}]
    assert subjects_of(entries) == ["a", "b"]
    with pytest.raises(ValueError, match="unique"):
        stratified_order(["a", "a", "b"], 0)
    with pytest.raises(ValueError, match="label fractions"):
        label_fraction_subsets(IDS, (0.0, 0.5), seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(IDS, 1.0)


def test_paired_seeds_draw_different_smallest_sets_and_keep_their_own_when_unique():
    from kit.data.splits import label_fraction_subsets, paired_seed_subsets

    ids = [f"s{i}" for i in range(22)]
    fractions = (1 / 22, 2 / 22, 4 / 22, 1.0)
    per_seed = paired_seed_subsets(ids, fractions, seeds=range(5))
    smallest = [tuple(per_seed[s][1 / 22]) for s in range(5)]
    assert len(set(smallest)) == 5
    independent = [tuple(label_fraction_subsets(ids, fractions, s)[1 / 22]) for s in range(5)]
    for s in range(5):  # a seed keeps its own draw unless an earlier seed drew the same subject
        if independent[s] not in independent[:s]:
            assert smallest[s] == independent[s]
        assert set(per_seed[s][1 / 22]) <= set(per_seed[s][2 / 22]) <= set(per_seed[s][4 / 22])
    assert paired_seed_subsets(ids, fractions, seeds=range(5)) == per_seed  # deterministic
    # a pool too small for distinct sets still gives every seed a set
    tiny = paired_seed_subsets(["a", "b"], (0.5, 1.0), seeds=range(4))
    assert all(len(v[0.5]) == 1 for v in tiny.values())
