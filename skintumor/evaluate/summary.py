"""Cross-validation numbers of a :class:`~skintumor.evaluate.sweep.Sweep`, as a JSON-ready dict.

Numbers computed, at image level and at patient level (a patient's images averaged, see
:func:`skintumor.evaluate.metrics.patient_level`):

- per fold, and mean +- SD over the folds that have predictions;
- pooled over all out-of-fold predictions, with 95 % percentile intervals from a bootstrap that
  resamples duplicate groups (patients merged with their near-duplicates) with replacement.

The cohort: images, patients and duplicate-aware groups per class (:func:`cohort_table`).

Calibration (Brier score, top-label and class-wise ECE) of the raw probabilities (``score_``) and
of the decided ones (``p_``); before and after temperature scaling (:func:`temperature_summary`),
with the temperature the runs fitted or, for runs without one, a temperature the report fits on
each fold's validation predictions (:func:`fit_temperature`); split-conformal prediction sets
calibrated on each fold's validation split (:func:`conformal_sets`).

Every number says which folds it covers. Pure computation: nothing is read or written here
(reading: :mod:`skintumor.evaluate.sweep`; writing: :mod:`skintumor.evaluate.report`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from skintumor.evaluate.conformal import COVERAGES, METHODS, calibrate, coverage_summary, prediction_sets
from skintumor.evaluate.metrics import (
    ECE_BINS,
    bootstrap_weights,
    calibration_bins,
    calibration_intervals,
    classification_metrics,
    confidence_intervals,
    metric_names,
    patient_level,
    percentile_interval,
)
from skintumor.evaluate.sweep import Sweep

LEVELS = ("image", "patient")
RUN_FITTED = "fitted by each run on its validation split"
REPORT_FITTED = "fitted by the report on each fold's validation predictions"
TEMPERATURE_BOUNDS = (0.05, 20.0)  # as SkinTumorClassifier.fit_temperature
PROB_FLOOR = 5e-7  # predictions are written with 6 decimals: a 0 stands for anything below 5e-7


def level_arrays(table: pd.DataFrame, classes: list[str], level: str) -> dict[str, np.ndarray]:
    """``y`` (N,), ``probs`` (N, C) (decision), ``scores`` (N, C) (ranking), ``cluster`` (N,)
    (bootstrap unit = group_id) for one level."""
    y = table["y"].to_numpy(int)
    probs = table[[f"p_{c}" for c in classes]].to_numpy(float)
    scores = table[[f"score_{c}" for c in classes]].to_numpy(float)
    if level == "image":
        return {
            "y": y,
            "probs": probs,
            "scores": scores,
            "cluster": table["group_id"].to_numpy(str),
            "patient_id": table["patient_id"].to_numpy(str),
            "mixed": [],
        }
    if level == "patient":
        return patient_level(y, probs, table["patient_id"].to_numpy(str), table["group_id"].to_numpy(str), scores)
    raise ValueError(f"level must be one of {LEVELS}")


def point_metrics(arrays: dict[str, np.ndarray], classes: list[str], n_bins: int = ECE_BINS) -> dict[str, float]:
    """Every metric of :func:`level_arrays` output, no bootstrap: ``probs`` decide, ``scores`` rank."""
    return classification_metrics(arrays["y"], arrays["probs"], classes, n_bins, arrays["scores"])


def mean_sd(per_fold: dict[int, dict[str, float]], names: list[str]) -> dict[str, dict[str, float]]:
    """Mean and sample SD over folds of each metric, skipping folds where it is undefined (NaN)."""
    out = {}
    for name in names:
        values = np.array([m[name] for m in per_fold.values()], dtype=float)
        values = values[~np.isnan(values)]
        out[name] = {
            "mean": float(values.mean()) if len(values) else math.nan,
            "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "n_folds": int(len(values)),
        }
    return out


def evaluate_sweep(
    sweep: Sweep, n_boot: int = 2000, seed: int = 0, level_ci: float = 0.95, n_bins: int = ECE_BINS
) -> dict:
    """All numbers of the report as a JSON-ready dict (see ``metrics_cv.json``)."""
    names = metric_names(sweep.classes)
    pooled = sweep.pooled()
    result = {
        "sweep_dir": str(sweep.directory),
        "classes": sweep.classes,
        "folds_expected": sweep.expected,
        "folds_used": sorted(sweep.folds),
        "folds_missing": {str(k): v for k, v in sorted(sweep.missing.items())},
        "coverage": sweep.coverage(),
        "overrides": sweep.overrides,
        "members": sweep.members,
        "notes": sweep.notes,
        "warnings": sweep.warnings,
        "explain": {str(k): v for k, v in sweep.explain.items()},
        "bootstrap": {
            "replicates": n_boot,
            "seed": seed,
            "level": level_ci,
            "unit": "group_id (patient merged with its near-duplicates)",
            "interval": "percentile",
        },
        "ece_bins": n_bins,
        "n_images": int(len(pooled)),
        "n_patients": int(pooled["patient_id"].nunique()),
        "n_groups": int(pooled["group_id"].nunique()),
        "cohort": cohort_table(pooled, sweep.classes),
    }
    for level in LEVELS:
        per_fold, sizes = {}, {}
        for k, table in sorted(sweep.folds.items()):
            arrays = level_arrays(table, sweep.classes, level)
            per_fold[k] = point_metrics(arrays, sweep.classes, n_bins)
            sizes[k] = {
                "n": int(len(arrays["y"])),
                "per_class": np.bincount(arrays["y"], minlength=len(sweep.classes)).tolist(),
            }
        arrays = level_arrays(pooled, sweep.classes, level)
        y, probs = arrays["y"], arrays["probs"]
        conf = np.zeros((len(sweep.classes),) * 2, dtype=int)
        np.add.at(conf, (y, probs.argmax(1)), 1)
        result[level] = {
            "per_fold": {str(k): v for k, v in per_fold.items()},
            "fold_sizes": {str(k): v for k, v in sizes.items()},
            "mean_sd": mean_sd(per_fold, names),
            "pooled": confidence_intervals(
                y, probs, arrays["cluster"], sweep.classes, n_boot, seed, level_ci, n_bins, arrays["scores"]
            ),
            "confusion": conf.tolist(),
            "calibration": {k: v.tolist() for k, v in calibration_bins(y, probs, n_bins).items()},
            "calibration_metrics": {
                kind: calibration_intervals(y, p, arrays["cluster"], n_boot, seed, level_ci, n_bins)
                for kind, p in (("raw", arrays["scores"]), ("decided", probs))
            },
            "n": int(len(y)),
            "mixed_label_patients": list(arrays["mixed"]),
        }
    result["temperature"] = temperature_summary(sweep, pooled, n_boot, seed, level_ci, n_bins)
    result["conformal"] = conformal_sets(sweep, n_boot=n_boot, seed=seed, level=level_ci)
    return result


def cohort_table(pooled: pd.DataFrame, classes: list[str]) -> dict:
    """Images (distinct ``path``), patients and duplicate-aware groups (``group_id``) per true class and in
    total, and each class's share of the images, from the pooled out-of-fold predictions (:meth:`Sweep.pooled`):
    a complete sweep tests every image once, so these are the cohort's numbers; with a fold missing, the
    tested folds'. A patient or group with images of two classes counts in both classes, once in the total.

    Returns ``{"per_class": {class: counts}, "total": counts}``, counts = ``images, patients, groups, share``.
    """

    def counts(rows: pd.DataFrame) -> dict:
        images = int(rows["path"].nunique())
        return {
            "images": images,
            "patients": int(rows["patient_id"].nunique()),
            "groups": int(rows["group_id"].nunique()),
            "share": images / max(int(pooled["path"].nunique()), 1),
        }

    return {"per_class": {c: counts(pooled[pooled["y"] == i]) for i, c in enumerate(classes)}, "total": counts(pooled)}


def fit_temperature(scores: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T that minimises the negative log-likelihood of softmax(z / T) with z = log(scores).

    ``scores`` (N, C): probabilities softmax(z) of the inner validation split (``score_``: before class
    offsets), ``y`` (N,) class indices. Searched on log T within ``bounds`` (Brent, bounded): T > 1 means
    the network was overconfident. The same fit as ``model.calibration=temperature`` in training, done
    afterwards on the written probabilities; with hflip TTA (a mean of two softmaxes) log(scores) is
    not the logits exactly, an approximation.
    """
    logits = np.log(np.clip(np.asarray(scores, float), PROB_FLOOR, None))
    rows, y = np.arange(len(logits)), np.asarray(y, int)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, y].mean())

    fit = minimize_scalar(nll, bounds=np.log(bounds), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(fit.x))


def tempered(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softmax(z) (N, C) -> softmax(z / T), z = log(scores) (the logits up to a constant)."""
    return softmax(np.log(np.clip(np.asarray(scores, float), PROB_FLOOR, None)) / temperature, axis=1)


def untempered(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softmax(z / T) (N, C) -> softmax(z), undoing a temperature T: ``tempered`` with
    1 / T. Exact for a plain softmax; with hflip TTA (a mean of two softmaxes) an approximation."""
    return tempered(scores, 1.0 / temperature)


def report_temperatures(sweep: Sweep) -> dict[int, float]:
    """fold -> :func:`fit_temperature` on the fold's validation predictions (never its test fold), for
    every fold that has them."""
    temperatures = {}
    for k in sorted(set(sweep.folds) & set(sweep.validation)):
        val = level_arrays(sweep.validation[k], sweep.classes, "image")
        temperatures[k] = fit_temperature(val["scores"], val["y"])
    return temperatures


def temperature_summary(
    sweep: Sweep, pooled: pd.DataFrame, n_boot: int, seed: int, level_ci: float, n_bins: int
) -> dict | None:
    """Image-level raw probabilities before and after temperature scaling: calibration metrics with CIs
    and reliability bins, each fold's T and its ``source``.

    Runs trained with ``model.calibration=temperature`` fitted T on their validation split and wrote
    tempered scores (:data:`RUN_FITTED`: "before" undoes T). For other runs the report fits T on each
    fold's validation predictions and applies it to that fold's test scores (:data:`REPORT_FITTED`);
    only when every fold has validation predictions, so that "after" covers the same images as the
    rest of the report. None otherwise.
    """
    arrays = level_arrays(pooled, sweep.classes, "image")
    fold = pooled["fold"].to_numpy(int)
    if sweep.temperatures:
        temperatures, source = sweep.temperatures, RUN_FITTED
        after = arrays["scores"]
        fold_t = pooled["fold"].map(temperatures).fillna(1.0).to_numpy(float)
        before = after.copy()
        for t in np.unique(fold_t):
            before[fold_t == t] = untempered(after[fold_t == t], t)
    elif sweep.validation and set(sweep.folds) <= set(sweep.validation):
        temperatures, source = report_temperatures(sweep), REPORT_FITTED
        before = arrays["scores"]
        after = before.copy()
        for k, t in temperatures.items():
            after[fold == k] = tempered(before[fold == k], t)
    else:
        return None
    out = {"source": source, "per_fold": {str(k): t for k, t in sorted(temperatures.items())}}
    for name, p in (("before", before), ("after", after)):
        out[name] = calibration_intervals(arrays["y"], p, arrays["cluster"], n_boot, seed, level_ci, n_bins)
        out[f"bins_{name}"] = {k: v.tolist() for k, v in calibration_bins(arrays["y"], p, n_bins).items()}
    return out


def conformal_sets(
    sweep: Sweep, coverages=COVERAGES, methods=METHODS, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Split-conformal sets at each target coverage, image level: per fold, the threshold from the fold's
    validation predictions (``score_``), the sets on its test predictions; coverage and mean set size
    pooled over those folds, overall and per true class, for each method (:mod:`~skintumor.evaluate.conformal`);
    overall coverage and size also with group-bootstrap percentile intervals (``coverage_ci``, ``mean_size_ci``;
    the replicates of the other intervals, the thresholds held fixed). Folds without validation predictions
    are listed in ``folds_without_validation`` and left out."""
    used = sorted(k for k in sweep.folds if k in sweep.validation)
    out = {
        "calibration": "split-conformal on each fold's inner validation split",
        "folds_used": used,
        "folds_without_validation": sorted(set(sweep.folds) - set(used)),
        "methods": {},
    }
    arrays = {  # fold -> (validation, test) image-level arrays
        k: tuple(level_arrays(table, sweep.classes, "image") for table in (sweep.validation[k], sweep.folds[k]))
        for k in used
    }
    if used:
        weights = bootstrap_weights(np.concatenate([arrays[k][1]["cluster"] for k in used]), n_boot, seed)
        weights = weights / weights.sum(1, keepdims=True)
    for method in methods if used else ():
        out["methods"][method] = {}
        for coverage in coverages:
            sets, ys, thresholds = [], [], {}
            for k in used:
                val, test = arrays[k]
                thresholds[str(k)] = calibrate(val["scores"], val["y"], 1 - coverage, method)
                sets.append(prediction_sets(test["scores"], thresholds[str(k)], method))
                ys.append(test["y"])
            sets, ys = np.concatenate(sets), np.concatenate(ys)
            summary = coverage_summary(sets, ys, sweep.classes)
            summary["coverage_ci"] = list(percentile_interval(weights @ sets[np.arange(len(ys)), ys], level))
            summary["mean_size_ci"] = list(percentile_interval(weights @ sets.sum(1), level))
            out["methods"][method][f"{coverage:g}"] = summary | {"thresholds": thresholds}
    return out


__all__ = [
    "LEVELS",
    "RUN_FITTED",
    "REPORT_FITTED",
    "level_arrays",
    "point_metrics",
    "mean_sd",
    "evaluate_sweep",
    "cohort_table",
    "fit_temperature",
    "tempered",
    "untempered",
    "report_temperatures",
    "temperature_summary",
    "conformal_sets",
]
