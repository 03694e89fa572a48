"""Classification metrics: one home for what is computed during training and in reports.

Per class (one-vs-rest): accuracy, sensitivity (recall), specificity, precision, F1, AUROC; macro
averages; balanced accuracy (= macro sensitivity); top-label expected calibration error (ECE).
Calibration apart (:func:`calibration_metrics`, :func:`calibration_intervals`): multiclass Brier
score, top-label and class-wise ECE, for any probabilities (the raw softmax or after the decision rule).

- During training they come from torchmetrics (:mod:`skintumor.models.metrics`), with the same
  definitions (a test checks that both agree).
- On saved predictions (reports) they are numpy/sklearn functions: :func:`classification_metrics`
  for point estimates, :func:`patient_level` to average a patient's images, and
  :func:`bootstrap_metrics` for patient-level (group) bootstrap confidence intervals.

Shapes: ``y`` is (N,) class indices, ``probs`` is (N, C) probabilities, rows summing to 1.
The predicted class is always ``argmax(probs)``. ``scores`` (N, C), optional: what AUROC ranks
when it is not ``probs``: the network's probabilities before the class offsets of
``model.decision=balanced`` moved the decision (:mod:`skintumor.models.decision`). The offsets
are a threshold, chosen per fold; ranking the shifted probabilities would mix thresholds into a
threshold-free measure (and pooling folds would mix different shifts).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

# ---------------------------------------------------------------------------------------------
# Metrics on saved predictions (numpy / sklearn)
# ---------------------------------------------------------------------------------------------

ECE_BINS = 15  # equal-width confidence bins on [0, 1], the torchmetrics default

HEADLINE = ("acc", "bal_acc", "auroc_macro", "f1_macro", "sens_macro", "spec_macro", "prec_macro", "ece")
PER_CLASS = ("acc", "sens", "spec", "prec", "f1", "auroc")


def metric_names(class_names: list[str]) -> list[str]:
    """All metric keys in display order: headline metrics, then per class (``sens_<c>`` ...)."""
    return list(HEADLINE) + [f"{m}_{c}" for c in class_names for m in PER_CLASS]


def _rates(conf: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest rates from confusion matrices ``conf`` (..., C, C), rows = true class.

    Returns arrays (..., C); a rate whose denominator is 0 is NaN (undefined, not 0).
    """
    conf = np.asarray(conf, dtype=float)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    fn = conf.sum(-1) - tp
    fp = conf.sum(-2) - tp
    total = conf.sum((-2, -1))[..., None]
    tn = total - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "acc": (tp + tn) / total,
            "sens": tp / (tp + fn),
            "spec": tn / (tn + fp),
            "prec": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "overall_acc": tp.sum(-1) / total[..., 0],
        }


def _nanmean(x: np.ndarray, axis=-1) -> np.ndarray:
    """Mean over defined (non-NaN) entries; NaN where nothing is defined (without a warning)."""
    x = np.asarray(x, dtype=float)
    n = np.sum(~np.isnan(x), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(x, axis=axis) / np.maximum(n, 1), np.nan)


def _assemble(
    rates: dict[str, np.ndarray], auroc: np.ndarray, ece: np.ndarray, class_names: list[str]
) -> dict[str, np.ndarray]:
    """Named metrics from per-class arrays (..., C); macro = mean over classes where defined."""
    out = {
        "acc": rates["overall_acc"],
        "bal_acc": _nanmean(rates["sens"]),
        "auroc_macro": _nanmean(auroc),
        "f1_macro": _nanmean(rates["f1"]),
        "sens_macro": _nanmean(rates["sens"]),
        "spec_macro": _nanmean(rates["spec"]),
        "prec_macro": _nanmean(rates["prec"]),
        "ece": ece,
    }
    for i, c in enumerate(class_names):
        for m in PER_CLASS:
            out[f"{m}_{c}"] = (auroc if m == "auroc" else rates[m])[..., i]
    return out


def check_predictions(y, probs) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: ``y`` (N,) int in [0, C), ``probs`` (N, C) float."""
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or len(y) != len(probs):
        raise ValueError(f"expected y (N,) and probs (N, C); got {y.shape} and {probs.shape}")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError("labels outside 0..C-1")
    return y, probs


def calibration_bins(y, probs, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability statistics in ``n_bins`` equal-width bins of confidence on [0, 1].

    Returns (n_bins,) arrays ``count``, ``confidence`` (mean top probability), ``accuracy``
    (share of argmax predictions that are right; NaN for an empty bin) and ``edges`` (n_bins + 1,).
    """
    y, probs = check_predictions(y, probs)
    conf, correct, index = _top_label(y, probs, n_bins)
    count = np.bincount(index, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": count,
            "confidence": np.bincount(index, conf, minlength=n_bins) / count,
            "accuracy": np.bincount(index, correct, minlength=n_bins) / count,
            "edges": np.linspace(0.0, 1.0, n_bins + 1),
        }


def _top_label(y: np.ndarray, probs: np.ndarray, n_bins: int):
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    index = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)  # bin k = [k/n, (k+1)/n)
    return conf, correct, index


def expected_calibration_error(y, probs, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over bins of (bin share) * |accuracy - mean confidence|."""
    bins = calibration_bins(y, probs, n_bins)
    share = bins["count"] / max(bins["count"].sum(), 1)
    gap = np.abs(np.nan_to_num(bins["accuracy"] - bins["confidence"]))
    return float(np.sum(share * gap))


def ranking_scores(probs: np.ndarray, scores=None) -> np.ndarray:
    """What AUROC ranks: ``scores`` (N, C) when given, else ``probs``."""
    if scores is None:
        return probs
    scores = np.asarray(scores, dtype=float)
    if scores.shape != probs.shape:
        raise ValueError(f"scores {scores.shape} and probs {probs.shape} differ in shape")
    return scores


def classification_metrics(y, probs, class_names: list[str], n_bins: int = ECE_BINS, scores=None) -> dict[str, float]:
    """Point estimates of every metric in :func:`metric_names` (sklearn confusion matrix and AUROC).

    AUROC is one-vs-rest (``roc_auc_score(y == c, scores[:, c])``, scores defaulting to probs); a
    class with no positives or no negatives has undefined (NaN) sensitivity / AUROC, and macro
    means skip undefined classes.
    """
    y, probs = check_predictions(y, probs)
    scores = ranking_scores(probs, scores)
    n_classes = probs.shape[1]
    conf = confusion_matrix(y, probs.argmax(1), labels=list(range(n_classes)))
    auroc = np.full(n_classes, np.nan)
    for c in range(n_classes):
        positive = y == c
        if 0 < positive.sum() < len(y):
            auroc[c] = roc_auc_score(positive, scores[:, c])
    ece = expected_calibration_error(y, probs, n_bins)
    named = _assemble(_rates(conf), auroc, np.float64(ece), class_names)
    return {k: float(v) for k, v in named.items()}


def patient_level(y, probs, patient_ids, cluster_ids=None, scores=None) -> dict[str, np.ndarray]:
    """Average each patient's image probabilities; one row per (patient, label).

    A patient whose images carry different labels (e.g. two different tumours) gives one row per
    label, each averaging only that label's images: nothing is dropped and no label is invented.

    Args:
        y: (N,) class index per image; probs: (N, C); patient_ids: (N,) patient per image;
        cluster_ids: (N,) bootstrap cluster per image (e.g. ``group_id``); default the patient;
        scores: (N, C) ranking scores, averaged the same way (default: probs).

    Returns dict with ``y`` (P,), ``probs`` (P, C), ``scores`` (P, C), ``patient_id`` (P,),
    ``cluster`` (P,), ``n_images`` (P,) and ``mixed`` (sorted patient ids with more than one label).
    """
    y, probs = check_predictions(y, probs)
    scores = ranking_scores(probs, scores)
    patients = np.asarray(patient_ids).astype(str)
    clusters = patients if cluster_ids is None else np.asarray(cluster_ids).astype(str)
    keys = np.char.add(np.char.add(patients, "\x1f"), y.astype(str))
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(unique)).astype(float)

    def mean_per_patient(values: np.ndarray) -> np.ndarray:
        summed = np.zeros((len(unique), values.shape[1]))
        np.add.at(summed, inverse, values)
        return summed / counts[:, None]

    mixed = sorted({p for p, n in zip(*np.unique(patients[first], return_counts=True)) if n > 1})
    return {
        "y": y[first],
        "probs": mean_per_patient(probs),
        "scores": mean_per_patient(scores),
        "patient_id": patients[first],
        "cluster": clusters[first],
        "n_images": counts.astype(int),
        "mixed": mixed,
    }


# --- bootstrap ---------------------------------------------------------------------------------


def bootstrap_weights(cluster_ids, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Cluster bootstrap as row weights: (n_boot, N) counts of how often each row is drawn.

    Each replicate draws as many clusters (patients or duplicate groups) as there are, with
    replacement; every row of a drawn cluster comes along. Seeded, so reports are reproducible.
    """
    _, row_cluster = np.unique(np.asarray(cluster_ids).astype(str), return_inverse=True)
    n_clusters = int(row_cluster.max()) + 1 if len(row_cluster) else 0
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    cluster_counts = np.zeros((n_boot, n_clusters))
    np.add.at(cluster_counts, (np.arange(n_boot)[:, None], drawn), 1.0)
    return cluster_counts[:, row_cluster]


def weighted_auroc(positive, scores, weights) -> np.ndarray:
    """One-vs-rest AUROC under row weights, vectorised over replicates.

    Args: positive (N,) bool; scores (N,); weights (B, N). Returns (B,), NaN where a replicate
    has no positive or no negative weight. Ties count one half (as in sklearn).
    Written by hand because calling sklearn once per replicate and class is ~100x slower.
    """
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    w = np.asarray(weights, dtype=float)[:, order]
    pos_w = w * positive[order]
    neg_w = w - pos_w
    # tie blocks: rows with equal scores share one block
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    neg_block = np.add.reduceat(neg_w, starts, axis=1)  # (B, K)
    pos_block = np.add.reduceat(pos_w, starts, axis=1)
    neg_below = np.cumsum(neg_block, axis=1) - neg_block
    wins = np.sum(pos_block * (neg_below + 0.5 * neg_block), axis=1)
    denom = pos_block.sum(1) * neg_block.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, wins / denom, np.nan)


def weighted_metrics(
    y, probs, weights, class_names: list[str], n_bins: int = ECE_BINS, scores=None
) -> dict[str, np.ndarray]:
    """Every metric of :func:`classification_metrics` under row weights (B, N); returns (B,) arrays.

    With ``weights = np.ones((1, N))`` it equals :func:`classification_metrics` (tested).
    """
    y, probs = check_predictions(y, probs)
    scores = ranking_scores(probs, scores)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    n_classes = probs.shape[1]
    pred = probs.argmax(1)
    cell = np.zeros((len(y), n_classes * n_classes))
    cell[np.arange(len(y)), y * n_classes + pred] = 1.0
    conf = (weights @ cell).reshape(-1, n_classes, n_classes)
    auroc = np.stack([weighted_auroc(y == c, scores[:, c], weights) for c in range(n_classes)], axis=-1)
    top, correct, _ = _top_label(y, probs, n_bins)
    return _assemble(_rates(conf), auroc, _weighted_ece(top, correct, weights, n_bins), class_names)


def _weighted_ece(confidence: np.ndarray, outcome: np.ndarray, weights: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of predicted probabilities ``confidence`` (N,) of events ``outcome`` (N,) in {0, 1}, in
    ``n_bins`` equal-width bins, under row weights (B, N) -> (B,): sum over bins of |sum outcome -
    sum confidence| / total weight."""
    index = np.clip(np.floor(confidence * n_bins).astype(int), 0, n_bins - 1)  # bin k = [k/n, (k+1)/n)
    in_bin = np.zeros((len(confidence), n_bins))
    in_bin[np.arange(len(confidence)), index] = 1.0
    gap = np.abs(weights @ (in_bin * (outcome - confidence)[:, None]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap.sum(1) / weights.sum(1)


# --- calibration: Brier score and ECE, on any probabilities (raw softmax or after the decision rule)

CALIBRATION = ("brier", "ece", "ece_classwise")


def weighted_calibration(y, probs, weights, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Calibration metrics under row weights (B, N) -> (B,) arrays:

    - ``brier``: multiclass Brier score, mean over images of sum_c (p_c - 1[y = c])^2 (0 is perfect,
      2 the worst; sklearn's ``brier_score_loss`` of a multiclass problem, tested);
    - ``ece``: top-label ECE (:func:`expected_calibration_error`);
    - ``ece_classwise``: class-wise ECE (Kull et al. 2019), the mean over classes of the ECE of
      ``p_c`` as the probability of class c, each in its own equal-width bins.
    """
    y, probs = check_predictions(y, probs)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    onehot = np.eye(probs.shape[1])[y]
    with np.errstate(invalid="ignore", divide="ignore"):
        brier = weights @ ((probs - onehot) ** 2).sum(1) / weights.sum(1)
    top, correct, _ = _top_label(y, probs, n_bins)
    classwise = [_weighted_ece(probs[:, c], onehot[:, c], weights, n_bins) for c in range(probs.shape[1])]
    return {"brier": brier, "ece": _weighted_ece(top, correct, weights, n_bins), "ece_classwise": np.mean(classwise, 0)}


def calibration_metrics(y, probs, n_bins: int = ECE_BINS) -> dict[str, float]:
    """Point estimates of :func:`weighted_calibration`."""
    return {k: float(v[0]) for k, v in weighted_calibration(y, probs, np.ones((1, len(y))), n_bins).items()}


def calibration_intervals(
    y, probs, cluster_ids, n_boot: int = 2000, seed: int = 0, level: float = 0.95, n_bins: int = ECE_BINS
) -> dict[str, dict[str, float]]:
    """:func:`calibration_metrics` with cluster-bootstrap percentile intervals (the same replicates as
    :func:`confidence_intervals` for the same ``cluster_ids`` and ``seed``; ECE's re-centred, see
    :data:`RESAMPLING_BIASED`), entries as there."""
    point = calibration_metrics(y, probs, n_bins)
    samples = weighted_calibration(y, probs, bootstrap_weights(cluster_ids, n_boot, seed), n_bins)
    return {name: _interval_entry(value, samples[name], level, name) for name, value in point.items()}


# Binned calibration errors grow when a resample repeats images (fewer distinct images per bin), so their
# bootstrap distribution sits above the estimate and a plain percentile interval can exclude it.
RESAMPLING_BIASED = ("ece", "ece_classwise")


def _interval_entry(value: float, samples: np.ndarray, level: float, name: str = "") -> dict[str, float]:
    """Percentile interval; for :data:`RESAMPLING_BIASED` metrics shifted down by the replicates' mean
    excess over the estimate (the resampling's own bias), floored at 0."""
    low, high = percentile_interval(samples, level)
    if name in RESAMPLING_BIASED and not np.isnan(low):
        shift = float(np.nanmean(samples)) - value
        low, high = max(low - shift, 0.0), high - shift
    return {"value": value, "ci_low": low, "ci_high": high, "undefined": int(np.isnan(samples).sum())}


def bootstrap_metrics(
    y,
    probs,
    cluster_ids,
    class_names: list[str],
    n_boot: int = 2000,
    seed: int = 0,
    n_bins: int = ECE_BINS,
    scores=None,
) -> dict[str, np.ndarray]:
    """Metric distributions (n_boot,) under a cluster (patient / group) bootstrap; see :func:`bootstrap_weights`."""
    weights = bootstrap_weights(cluster_ids, n_boot, seed)
    return weighted_metrics(y, probs, weights, class_names, n_bins, scores)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples, ignoring undefined (NaN) replicates."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def confidence_intervals(
    y,
    probs,
    cluster_ids,
    class_names: list[str],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = ECE_BINS,
    scores=None,
) -> dict[str, dict[str, float]]:
    """Point estimate and cluster-bootstrap percentile interval for every metric (ECE's re-centred on
    the estimate: :data:`RESAMPLING_BIASED`).

    Returns ``{metric: {"value", "ci_low", "ci_high", "undefined"}}``; ``undefined`` counts
    replicates where the metric could not be computed (e.g. a class absent from the resample).
    """
    point = classification_metrics(y, probs, class_names, n_bins, scores)
    samples = bootstrap_metrics(y, probs, cluster_ids, class_names, n_boot, seed, n_bins, scores)
    return {name: _interval_entry(value, samples[name], level, name) for name, value in point.items()}


__all__ = [
    "ECE_BINS",
    "HEADLINE",
    "RESAMPLING_BIASED",
    "PER_CLASS",
    "metric_names",
    "check_predictions",
    "ranking_scores",
    "calibration_bins",
    "expected_calibration_error",
    "classification_metrics",
    "patient_level",
    "bootstrap_weights",
    "weighted_auroc",
    "weighted_metrics",
    "bootstrap_metrics",
    "percentile_interval",
    "confidence_intervals",
    "CALIBRATION",
    "weighted_calibration",
    "calibration_metrics",
    "calibration_intervals",
]
