"""Split-conformal prediction sets, calibrated on the inner validation split.

A set is the classes a model cannot rule out at a target coverage ``1 - alpha``: "lipoma or
epidermal cyst, 90 % coverage" means that, over images exchangeable with the calibration images,
the true class lies in such sets at least 90 % of the time (marginally: not per image, class or patient).

Each class of an image gets a nonconformity score; the threshold is the ``ceil((n + 1)(1 - alpha))``-th
smallest score of the true classes on the n calibration images; a set holds every class whose score
is at most the threshold, and never less than the most likely class. Two scores (:data:`METHODS`):

- ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): 1 - p_y. Continuous, so the
  coverage is within 1/(n + 1) of the target, and the sets are the smallest on average. What a model
  stores and predict shows.
- ``aps`` (adaptive prediction sets, Romano et al. 2020, not randomised): the probability mass of
  the classes at least as likely as y. Adapts the set to how spread out an image's probabilities
  are, but the least likely class always scores 1, so with few classes the sets are conservative
  (often all classes at 95 %); shown in the report for comparison.

The probabilities are the network's (``score_<class>``: softmax with the temperature, before the class
offsets), so a set does not depend on where the decision rule put its thresholds.
Grouped data: the validation and test splits hold whole patients (duplicate groups), so patients,
not images, are exchangeable; the image-level coverage still holds on average over splits, but varies
more from fold to fold than n independent images would.

Written out (a few lines) rather than taken from a library: torchcp 1.2 and mapie 1.6 wrap a model
object and its fit/predict, not saved per-fold probabilities; crepes 0.9 takes precomputed scores but
gives sets through p-values, not the one threshold per coverage that a model stores and ``predict``
applies. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

COVERAGES = (0.9, 0.95)  # target coverages stored with a model and given in the report
METHODS = ("lac", "aps")


def nonconformity(probs: np.ndarray, method: str = "lac") -> np.ndarray:
    """(N, C) probabilities -> (N, C) scores of every class as the label (higher: less plausible)."""
    if method == "lac":
        return 1.0 - np.asarray(probs, dtype=float)
    if method == "aps":
        return aps_scores(probs)
    raise ValueError(f"conformal method must be one of {METHODS}, got {method!r}")


def aps_scores(probs: np.ndarray) -> np.ndarray:
    """(N, C) probabilities -> (N, C) APS scores: the mass of the classes at least as likely as each."""
    probs = np.asarray(probs, dtype=float)
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def calibrate(probs: np.ndarray, y: np.ndarray, alpha: float, method: str = "lac") -> float:
    """The threshold for coverage ``1 - alpha`` from calibration probabilities (N, C) and labels (N,).

    With too few images for the target (``(n + 1)(1 - alpha) > n``) the threshold is 1 (full sets)."""
    y = np.asarray(y, dtype=int)
    true_scores = nonconformity(probs, method)[np.arange(len(y)), y]
    n = len(true_scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or rank > n:
        return 1.0
    return float(np.sort(true_scores)[rank - 1])


def prediction_sets(probs: np.ndarray, threshold: float, method: str = "lac") -> np.ndarray:
    """(N, C) probabilities -> (N, C) bool set membership at a ``threshold`` (top class always in)."""
    probs = np.asarray(probs, dtype=float)
    sets = nonconformity(probs, method) <= threshold + 1e-9  # the threshold is one of the scores: keep ties in
    sets[np.arange(len(probs)), probs.argmax(1)] = True
    return sets


def set_names(sets: np.ndarray, classes: list[str]) -> list[str]:
    """Bool sets (N, C) -> ``"lipoma or cyst"`` strings, classes in ``classes`` order."""
    return [" or ".join(c for c, member in zip(classes, row) if member) for row in sets]


def coverage_summary(sets: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """Empirical coverage (share of true classes in their set) and mean set size, overall and per true class."""
    y = np.asarray(y, dtype=int)
    covered, size = sets[np.arange(len(y)), y], sets.sum(1)
    out = {"n": int(len(y)), "coverage": _mean(covered), "mean_size": _mean(size), "per_class": {}}
    for c, name in enumerate(classes):
        mine = y == c
        entry = {"n": int(mine.sum()), "coverage": _mean(covered[mine]), "mean_size": _mean(size[mine])}
        out["per_class"][name] = entry
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


__all__ = [
    "COVERAGES",
    "METHODS",
    "nonconformity",
    "aps_scores",
    "calibrate",
    "prediction_sets",
    "set_names",
    "coverage_summary",
]
