"""Cross-validation numbers of a :class:`~skintumor.evaluate.sweep.Sweep`, as a JSON-ready dict.

Numbers computed, at image level and at patient level (a patient's images averaged, see
:func:`skintumor.evaluate.metrics.patient_level`):

- per fold, and mean +- SD over the folds that have predictions;
- pooled over all out-of-fold predictions, with 95 % percentile intervals from a bootstrap that
  resamples duplicate groups (patients merged with their near-duplicates) with replacement.

Calibration (Brier score, top-label and class-wise ECE) of the raw probabilities (``score_``) and
of the decided ones (``p_``), before and after temperature scaling where the runs fitted one;
split-conformal prediction sets calibrated on each fold's validation split (:func:`conformal_sets`).

Every number says which folds it covers. Pure computation: nothing is read or written here
(reading: :mod:`skintumor.evaluate.sweep`; writing: :mod:`skintumor.evaluate.report`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from skintumor.evaluate.conformal import COVERAGES, METHODS, calibrate, coverage_summary, prediction_sets
from skintumor.evaluate.metrics import (
    ECE_BINS,
    calibration_bins,
    calibration_intervals,
    classification_metrics,
    confidence_intervals,
    metric_names,
    patient_level,
)
from skintumor.evaluate.sweep import Sweep

LEVELS = ("image", "patient")


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
    result["conformal"] = conformal_sets(sweep)
    return result


def untempered(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softmax(z / T) (N, C) -> softmax(z), undoing a temperature T. Exact for a plain
    softmax; with hflip TTA (a mean of two softmaxes) an approximation."""
    logits = temperature * np.log(np.clip(scores, 1e-12, None))
    logits -= logits.max(1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def temperature_summary(
    sweep: Sweep, pooled: pd.DataFrame, n_boot: int, seed: int, level_ci: float, n_bins: int
) -> dict | None:
    """Image-level raw probabilities before and after each fold's temperature (its run fitted it on the
    validation split): calibration metrics with CIs and reliability bins. None when no fold has one."""
    if not sweep.temperatures:
        return None
    arrays = level_arrays(pooled, sweep.classes, "image")
    after = arrays["scores"]
    fold_t = pooled["fold"].map(sweep.temperatures).fillna(1.0).to_numpy(float)
    before = after.copy()
    for t in np.unique(fold_t):
        before[fold_t == t] = untempered(after[fold_t == t], t)
    out = {"per_fold": {str(k): t for k, t in sorted(sweep.temperatures.items())}}
    for name, p in (("before", before), ("after", after)):
        out[name] = calibration_intervals(arrays["y"], p, arrays["cluster"], n_boot, seed, level_ci, n_bins)
        out[f"bins_{name}"] = {k: v.tolist() for k, v in calibration_bins(arrays["y"], p, n_bins).items()}
    return out


def conformal_sets(sweep: Sweep, coverages=COVERAGES, methods=METHODS) -> dict:
    """Split-conformal sets at each target coverage, image level: per fold, the threshold from the fold's
    validation predictions (``score_``), the sets on its test predictions; coverage and mean set size
    pooled over those folds, overall and per true class, for each method (:mod:`~skintumor.evaluate.conformal`).
    Folds without validation predictions are listed in ``folds_without_validation`` and left out."""
    used = sorted(k for k in sweep.folds if k in sweep.validation)
    out = {
        "calibration": "split-conformal on each fold's inner validation split",
        "folds_used": used,
        "folds_without_validation": sorted(set(sweep.folds) - set(used)),
        "methods": {},
    }
    for method in methods if used else ():
        out["methods"][method] = {}
        for coverage in coverages:
            sets, ys, thresholds = [], [], {}
            for k in used:
                val = level_arrays(sweep.validation[k], sweep.classes, "image")
                test = level_arrays(sweep.folds[k], sweep.classes, "image")
                thresholds[str(k)] = calibrate(val["scores"], val["y"], 1 - coverage, method)
                sets.append(prediction_sets(test["scores"], thresholds[str(k)], method))
                ys.append(test["y"])
            summary = coverage_summary(np.concatenate(sets), np.concatenate(ys), sweep.classes)
            out["methods"][method][f"{coverage:g}"] = summary | {"thresholds": thresholds}
    return out


__all__ = [
    "LEVELS",
    "level_arrays",
    "point_metrics",
    "mean_sd",
    "evaluate_sweep",
    "untempered",
    "temperature_summary",
    "conformal_sets",
]
