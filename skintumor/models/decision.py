"""Where the decision falls between classes: class offsets chosen on the inner validation split.

Balanced accuracy (and every class's sensitivity) depends on the argmax, AUROC does not. A model
trained from scratch on a few hundred images often ranks well but leans towards one class; adding
an offset per class to the log-probabilities moves the decision without retraining. The offsets are
chosen on the inner validation split (never on the test fold) by an exhaustive grid search: with
three classes that is 31 x 31 points, cheap, and no library does it for balanced accuracy. From
five classes on the full grid is too large (31^4 points and up), so one class's offset at a time
moves along its grid line until no move helps (coordinate ascent on the same grid).

    offsets = balanced_offsets(y_val, p_val)     # (C,), offsets[0] = 0
    p_test = shift_probabilities(p_test, offsets)
"""

from __future__ import annotations

import itertools

import numpy as np


def shift_probabilities(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, C) probabilities with ``offsets`` (C,) added to their logarithms, renormalised -> (N, C)."""
    shifted = np.log(np.clip(probs, 1e-12, None)) + np.asarray(offsets)
    shifted = np.exp(shifted - shifted.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def balanced_accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` of argmax(probs).

    Written out because it runs ~1000 times per grid search; sklearn's balanced_accuracy_score
    (the same definition) re-validates its input on every call and is ~30x slower here."""
    pred = probs.argmax(1)
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


EXHAUSTIVE_UP_TO = 4  # classes; 31^3 grid points at four


def balanced_offsets(y: np.ndarray, probs: np.ndarray, step: float = 0.1, limit: float = 1.5) -> np.ndarray:
    """Offsets (C,) on log-probabilities that maximise the balanced accuracy of (y, probs).

    The first class's offset is 0 (only differences matter); the others range over
    ``[-limit, limit]`` in ``step``s. Ties go to the smallest total offset, so a model that is
    already balanced keeps zeros. Exhaustive up to :data:`EXHAUSTIVE_UP_TO` classes, coordinate
    ascent on the same grid beyond.
    """
    y, logp = np.asarray(y), np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, None))
    grid = np.round(np.arange(-limit, limit + step / 2, step), 6)

    def key(offsets: np.ndarray) -> tuple[float, float]:
        return balanced_accuracy(y, logp + offsets), -float(np.abs(offsets).sum())

    n_classes = logp.shape[1]
    if n_classes <= EXHAUSTIVE_UP_TO:
        candidates = (np.array((0.0, *rest)) for rest in itertools.product(grid, repeat=n_classes - 1))
        return max(candidates, key=key)  # max keeps the first of equal keys, as the loop did
    best = np.zeros(n_classes)
    best_key = key(best)
    for _ in range(50):  # passes; each either improves the key or ends the search
        before = best_key
        for c in range(1, n_classes):
            for value in grid:
                trial = best.copy()
                trial[c] = value
                trial_key = key(trial)
                if trial_key > best_key:
                    best, best_key = trial, trial_key
        if best_key == before:
            break
    return best


def cross_fitted(
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None = None,
    step: float = 0.1,
    limit: float = 1.5,
    seed: int = 0,
) -> np.ndarray:
    """Validation probabilities shifted by offsets chosen on the *other* half of the split.

    Scoring offsets on the images that chose them flatters them; halving the split and swapping gives an
    honest estimate of what the offsets add. The halves are drawn by patient group (``groups``; all views
    of a patient in one half, stratified by the group's class) so that no patient helps choose the
    offsets it is scored with; without groups, by image. -> (N, C).
    """
    y, rng = np.asarray(y), np.random.default_rng(seed)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    names, first = np.unique(groups, return_index=True)
    half_groups = set()
    for c in np.unique(y[first]):  # a group's class: its first image's (groups are one patient, one lesion)
        members = rng.permutation(names[y[first] == c])
        half_groups.update(members[: len(members) // 2].tolist())
    half = np.isin(groups, list(half_groups))
    probs = np.asarray(probs, dtype=float)
    out = probs.copy()
    for chooser in (half, ~half):
        out[~chooser] = shift_probabilities(probs[~chooser], balanced_offsets(y[chooser], probs[chooser], step, limit))
    return out
