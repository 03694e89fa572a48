"""Patient-grouped, stratified folds: the only place that decides which image goes where.

Outer folds come from scikit-learn's StratifiedGroupKFold over *groups* (patients, merged with
near-duplicate images), so no patient or duplicate ever sits on both sides of a split. Inside each
outer training part an inner grouped split gives the validation set that picks the checkpoint, and
:meth:`PatientGroupedFolds.inner_folds` gives the K inner folds of the augmentation search.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from skintumor.errors import DataError


@dataclass(frozen=True)
class Split:
    """Row indices of one outer fold: ``train`` fits, ``val`` selects the checkpoint, ``test`` is read once."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict:
        return {"fold": self.fold, "train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist()}


class PatientGroupedFolds:
    """Stratified group k-fold with an inner validation split, deterministic by seed.

    Args:
        labels: class index per row.
        groups: group id per row (patient or duplicate group).
        n_splits: number of outer folds (the study: 5).
        val_fraction: share of the outer training part's groups held out for validation;
            realised as one fold of a ``round(1 / val_fraction)``-fold inner StratifiedGroupKFold.
        seed: shuffling seed; the same seed always gives the same folds.
        classes: class names in label order, for messages (default: the label numbers).
    """

    def __init__(
        self,
        labels,
        groups,
        n_splits: int = 5,
        val_fraction: float = 0.2,
        seed: int = 42,
        classes: list[str] | None = None,
    ):
        self.labels = np.asarray(labels)
        self.groups = np.asarray(groups)
        self.n_splits = int(n_splits)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.classes = list(classes) if classes is not None else None
        if len(self.labels) != len(self.groups):
            raise ValueError("labels and groups differ in length")
        if self.n_splits < 2:
            raise DataError(f"n_folds must be at least 2, got {self.n_splits}")
        if not 0.0 < self.val_fraction < 0.5:
            raise DataError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        self._check_enough_groups(self.labels, self.groups, self.n_splits, "outer folds (data.n_folds)")
        splitter = StratifiedGroupKFold(n_splits=self.n_splits, shuffle=True, random_state=self.seed)
        self._outer = [test for _, test in splitter.split(np.zeros(len(self.labels)), self.labels, self.groups)]

    def class_name(self, label) -> str:
        """The name of class index ``label`` (its number when no names were given)."""
        return self.classes[int(label)] if self.classes is not None else str(label)

    def _check_enough_groups(self, labels, groups, k: int, what: str) -> None:
        """Each class needs at least k groups, or some fold would have none of it."""
        for cls in np.unique(labels):
            n = len(np.unique(groups[labels == cls]))
            if n < k:
                raise DataError(
                    f"class {self.class_name(cls)} has only {n} patient group(s), fewer than the {k} {what}; "
                    "lower data.n_folds or add patients"
                )

    def __len__(self) -> int:
        return self.n_splits

    def test_indices(self, fold: int) -> np.ndarray:
        self._check_fold(fold)
        return np.sort(self._outer[fold])

    def train_part(self, fold: int) -> np.ndarray:
        """Everything outside outer fold ``fold``: what training, validation and search may see."""
        test = set(self.test_indices(fold).tolist())
        return np.array([i for i in range(len(self.labels)) if i not in test], dtype=int)

    def split(self, fold: int, inner_fold: int = 0, nested: bool = False) -> Split:
        """Outer fold ``fold`` as train / val / test row indices; checked for leaks before returning.

        ``inner_fold`` picks which of the ``round(1 / val_fraction)`` inner folds validates (default
        0): members of a fold ensemble use different ones, so together they learn from every
        training image. The test fold is the same whatever ``inner_fold`` is.

        ``nested=True`` judges recipes without the outer test fold: the training part's last inner
        fold stands in as the test fold (not inner fold 0, the validation split of every ordinary run,
        on which recipes were chosen), and train / val are split from the rest as above. Ensembles whose
        members validate on different images (fold ensembles) can be compared on that stand-in, which no
        member has seen; the outer test fold is not used at all.
        """
        part = self.train_part(fold)
        n_inner = max(2, round(1.0 / self.val_fraction))
        if not 0 <= inner_fold < n_inner:
            raise DataError(
                f"inner_fold {inner_fold} does not exist (inner folds are 0..{n_inner - 1} "
                f"for val_fraction {self.val_fraction})"
            )
        test = self.test_indices(fold)
        if nested:
            part, test = self._validation_split(fold, fold, part, n_inner, n_inner - 1)
            fold_seed = 2000 + fold  # a different inner shuffle for the part that is left
        else:
            fold_seed = fold
        train, val = self._validation_split(fold, fold_seed, part, n_inner, inner_fold)
        untrained = sorted(set(self.labels) - set(self.labels[train]))
        if untrained:
            raise DataError(
                f"fold {fold}: class(es) {', '.join(map(self.class_name, untrained))} have no training image "
                "(add patients of that class, or lower data.n_folds)"
            )
        absent = sorted(set(self.labels[part]) - set(self.labels[val]))
        if absent:
            warnings.warn(
                f"fold {fold}: class(es) {', '.join(map(self.class_name, absent))} have no validation image; "
                "checkpoint selection cannot see them (add patients or raise data.val_fraction)",
                stacklevel=2,
            )
        result = Split(fold, np.sort(train), np.sort(val), np.sort(test))
        assert_disjoint_groups(result, self.groups)
        return result

    def _validation_split(self, fold: int, seed_offset: int, part: np.ndarray, n_inner: int, inner_fold: int):
        """(train, val) of ``part`` (of outer fold ``fold``): its inner fold ``inner_fold`` of ``n_inner`` validates."""
        # only one inner fold is used here, so two groups per class suffice
        self._check_enough_groups(self.labels[part], self.groups[part], 2, "parts of the validation split")
        n_groups = len(np.unique(self.groups[part]))
        if n_groups < n_inner:  # scikit-learn cannot make more folds than there are groups
            fewer_folds = "lower data.n_folds, or " if self.n_splits > 2 else ""
            hint = f"set data.val_fraction={_fraction_for(n_groups)} or more, {fewer_folds}add patients"
            raise DataError(
                f"fold {fold}: its training part has only {n_groups} patient group(s), fewer than the {n_inner} "
                f"inner folds that data.val_fraction={self.val_fraction:g} asks for (one of them validates); {hint}"
            )
        with warnings.catch_warnings():  # sklearn warns when a class has fewer groups than n_inner
            warnings.simplefilter("ignore", UserWarning)
            return list(self._inner_splits(part, n_inner, seed_offset=seed_offset))[inner_fold]

    def inner_folds(self, fold: int, n_inner: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
        """K grouped, stratified (train, val) splits of outer fold ``fold``'s training part.

        Used by the augmentation search; the outer test fold never appears in them.
        """
        part = self.train_part(fold)
        self._check_enough_groups(self.labels[part], self.groups[part], n_inner, "inner folds")
        return [(np.sort(tr), np.sort(va)) for tr, va in self._inner_splits(part, n_inner, seed_offset=1000 + fold)]

    def _inner_splits(self, part: np.ndarray, k: int, seed_offset: int):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=self.seed + seed_offset)
        for tr, va in splitter.split(np.zeros(len(part)), self.labels[part], self.groups[part]):
            yield part[tr], part[va]

    def _check_fold(self, fold: int) -> None:
        if not 0 <= fold < self.n_splits:
            raise DataError(f"fold {fold} does not exist (folds are 0..{self.n_splits - 1})")


def _fraction_for(n_groups: int) -> float:
    """The smallest val_fraction (two decimals, below 0.5) whose ``round(1 / val_fraction)`` inner folds
    need at most ``n_groups`` groups."""
    return next(v / 100 for v in range(1, 50) if max(2, round(100 / v)) <= n_groups)


def assert_disjoint_groups(split: Split, groups) -> None:
    """Raise if any group (patient) has rows in two of train / val / test, or a row is used twice."""
    groups = np.asarray(groups)
    parts = {"train": split.train, "val": split.val, "test": split.test}
    seen: dict[str, str] = {}
    for name, idx in parts.items():
        for g in map(str, np.unique(groups[idx])):
            if g in seen and seen[g] != name:
                raise DataError(f"leak: patient group {g!r} is in both {seen[g]} and {name} of fold {split.fold}")
            seen[g] = name
    all_idx = np.concatenate(list(parts.values()))
    if len(np.unique(all_idx)) != len(all_idx):
        raise DataError(f"leak: a row appears in two parts of fold {split.fold}")
