"""Where the decision falls between classes: class offsets chosen on the inner validation split.

Balanced accuracy (and every class's sensitivity) depends on the argmax, AUROC does not. A model
trained from scratch on a few hundred images often ranks well but leans towards one class; adding
an offset per class to the log-probabilities moves the decision without retraining. The offsets are
chosen on the inner validation split (never on the test fold) by an exhaustive grid search: with
three classes that is 31 x 31 points, cheap, and no library does it for balanced accuracy.

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


def balanced_offsets(y: np.ndarray, probs: np.ndarray, step: float = 0.1, limit: float = 1.5) -> np.ndarray:
    """Offsets (C,) on log-probabilities that maximise the balanced accuracy of (y, probs).

    The first class's offset is 0 (only differences matter); the others range over
    ``[-limit, limit]`` in ``step``s. Ties go to the smallest total offset, so a model that is
    already balanced keeps zeros.
    """
    y, logp = np.asarray(y), np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, None))
    grid = np.round(np.arange(-limit, limit + step / 2, step), 6)
    best, best_key = np.zeros(logp.shape[1]), None
    for rest in itertools.product(grid, repeat=logp.shape[1] - 1):
        offsets = np.array((0.0, *rest))
        key = (balanced_accuracy(y, logp + offsets), -np.abs(offsets).sum())
        if best_key is None or key > best_key:
            best, best_key = offsets, key
    return best


def cross_fitted(y: np.ndarray, probs: np.ndarray, step: float = 0.1, limit: float = 1.5,
                 seed: int = 0) -> np.ndarray:
    """Validation probabilities shifted by offsets chosen on the *other* half of the split.

    Scoring offsets on the images that chose them flatters them; halving the split (stratified by
    class) and swapping gives an honest estimate of what the offsets add. -> (N, C).
    """
    y, rng = np.asarray(y), np.random.default_rng(seed)
    half = np.zeros(len(y), bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        half[members[: len(members) // 2]] = True
    probs = np.asarray(probs, dtype=float)
    out = probs.copy()
    for chooser in (half, ~half):
        out[~chooser] = shift_probabilities(probs[~chooser], balanced_offsets(y[chooser], probs[chooser], step, limit))
    return out
