import numpy as np
import pytest

from skintumor.data.folds import PatientGroupedFolds, Split, assert_disjoint_groups
from skintumor.errors import DataError


def _study_like(seed=0):
    """Patients 149/74/32 with 1-5 images each, like the study."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for cls, n in enumerate((149, 74, 32)):
        for p in range(n):
            k = rng.integers(1, 6)
            labels += [cls] * k
            groups += [f"{cls}-{p}"] * k
    return np.array(labels), np.array(groups)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_patient_in_two_parts_and_every_row_tested_once(seed):
    labels, groups = _study_like(seed)
    folds = PatientGroupedFolds(labels, groups, n_splits=5, seed=seed)
    tested = []
    for k in range(5):
        s = folds.split(k)
        parts = [set(groups[s.train]), set(groups[s.val]), set(groups[s.test])]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert len(s.train) + len(s.val) + len(s.test) == len(labels)
        tested += s.test.tolist()
    assert sorted(tested) == list(range(len(labels)))


def test_stratification_within_tolerance():
    labels, groups = _study_like()
    folds = PatientGroupedFolds(labels, groups, n_splits=5, seed=3)
    overall = np.bincount(labels) / len(labels)
    for k in range(5):
        s = folds.split(k)
        for part in (s.test, s.val):
            share = np.bincount(labels[part], minlength=3) / len(part)
            assert np.abs(share - overall).max() < 0.08


def test_same_seed_same_folds_other_seed_other_folds():
    labels, groups = _study_like()
    a = PatientGroupedFolds(labels, groups, seed=5).split(2)
    b = PatientGroupedFolds(labels, groups, seed=5).split(2)
    c = PatientGroupedFolds(labels, groups, seed=6).split(2)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.test, c.test)


def test_too_few_patients_in_a_class_is_a_clear_error():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    groups = np.array([f"p{i}" for i in range(20)] + ["q0", "q1", "q1"])
    with pytest.raises(DataError, match="class 2 has only 2 patient group"):
        PatientGroupedFolds(labels, groups, n_splits=5)


def test_inner_folds_never_contain_the_test_fold():
    labels, groups = _study_like()
    folds = PatientGroupedFolds(labels, groups, seed=1)
    test = set(folds.test_indices(4).tolist())
    inner = folds.inner_folds(4, n_inner=4)
    assert len(inner) == 4
    for train, val in inner:
        assert not (set(train) | set(val)) & test
        assert not set(groups[train]) & set(groups[val])


def test_guard_rejects_a_leaking_split():
    groups = np.array(["a", "a", "b", "c"])
    leaky = Split(0, train=np.array([0, 2]), val=np.array([3]), test=np.array([1]))
    with pytest.raises(DataError, match="patient group 'a'"):
        assert_disjoint_groups(leaky, groups)


def test_inner_fold_moves_validation_but_not_test():
    """Fold-ensemble members: each inner_fold validates on other patients, the test fold stays put,
    and together the five inner folds validate every training-part row exactly once."""
    labels, groups = _study_like()
    folds = PatientGroupedFolds(labels, groups, n_splits=5, val_fraction=0.2, seed=3)
    splits = [folds.split(1, inner_fold=j) for j in range(5)]
    assert splits[0].val.tolist() == folds.split(1).val.tolist()  # 0 is the default
    assert all(np.array_equal(s.test, splits[0].test) for s in splits)
    validated = np.concatenate([s.val for s in splits])
    assert sorted(validated.tolist()) == folds.train_part(1).tolist()
    with pytest.raises(DataError, match="inner_fold 5 does not exist"):
        folds.split(1, inner_fold=5)


def test_nested_split_judges_on_a_part_no_ordinary_run_validates_on():
    """nested=True: the training part's last inner fold stands in as the test fold (not inner fold 0,
    the validation split recipes were chosen on; the same for every inner_fold, so fold-ensemble members
    share it), train / val partition the rest, and no row of the outer test fold appears anywhere."""
    labels, groups = _study_like(seed=2)
    folds = PatientGroupedFolds(labels, groups, n_splits=5, val_fraction=0.2, seed=5)
    plain = folds.split(3)
    stand_in = folds.split(3, inner_fold=4).val  # val_fraction 0.2: inner folds 0..4
    nested = [folds.split(3, inner_fold=j, nested=True) for j in range(5)]
    training_part = sorted(np.concatenate([plain.train, plain.val]).tolist())
    for s in nested:
        assert np.array_equal(s.test, stand_in) and not set(s.test.tolist()) & set(plain.val.tolist())
        assert not (set(s.train) | set(s.val) | set(s.test)) & set(plain.test.tolist())
        assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == training_part
        assert_disjoint_groups(s, groups)
    assert sorted(np.concatenate([s.val for s in nested] + [stand_in]).tolist()) == training_part
    assert not np.array_equal(nested[0].val, nested[1].val)
    assert folds.split(3, nested=False).val.tolist() == plain.val.tolist()  # the default is untouched
