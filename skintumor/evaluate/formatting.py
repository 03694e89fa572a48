"""How the reports write numbers and metric names: ``0.859 [0.828, 0.886]``, ``0.863 ± 0.025``,
``lipoma: sensitivity``; and results made JSON-safe. Used by the CV report, the comparison, the model
card and the dashboard."""

from __future__ import annotations

import math

from skintumor.evaluate.metrics import PER_CLASS

LABELS = {
    "acc": "accuracy",
    "bal_acc": "balanced accuracy",
    "auroc_macro": "AUROC (macro)",
    "f1_macro": "F1 (macro)",
    "sens_macro": "sensitivity (macro)",
    "spec_macro": "specificity (macro)",
    "prec_macro": "precision (macro)",
    "ece": "ECE (top-label)",
    "ece_classwise": "ECE (class-wise)",
    "brier": "Brier score",
    "sens": "sensitivity",
    "spec": "specificity",
    "prec": "precision",
    "f1": "F1",
    "auroc": "AUROC",
    "acc_ovr": "accuracy (one-vs-rest)",
}


def metric_label(name: str, classes: list[str]) -> str:
    """Readable name of a metric key, e.g. ``sens_lipoma`` -> ``lipoma: sensitivity``."""
    if name in LABELS:
        return LABELS[name]
    for c in classes:
        for m in PER_CLASS:
            if name == f"{m}_{c}":
                return f"{c}: {LABELS['acc_ovr' if m == 'acc' else m]}"
    return name


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mean_sd_text(entry: dict, always_sd: bool = False) -> str:
    """``mean ± SD`` of a :func:`~skintumor.evaluate.summary.mean_sd` entry; when the SD is undefined
    (the metric defined in fewer than two folds) the mean alone, or ``mean ± n/a`` with ``always_sd``
    (the comparison tables)."""
    text = fmt(entry["mean"])
    if always_sd or not math.isnan(entry["sd"]):
        text += f" ± {fmt(entry['sd'])}"
    return text


def interval_text(entry: dict | None) -> str:
    """``[ci_low, ci_high]`` of an entry with those keys (``n/a`` for what is missing)."""
    entry = entry or {}
    return f"[{fmt(entry.get('ci_low'))}, {fmt(entry.get('ci_high'))}]"


def ci_text(entry: dict | None) -> str:
    """``value [ci_low, ci_high]`` of a pooled entry (see :func:`~skintumor.evaluate.metrics.confidence_intervals`);
    ``n/a`` for what is missing."""
    return f"{fmt((entry or {}).get('value'))} {interval_text(entry)}"


def json_safe(value):
    """NaN -> None (JSON has no NaN), tuple -> list, keys -> str; recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


__all__ = ["LABELS", "metric_label", "fmt", "mean_sd_text", "interval_text", "ci_text", "json_safe"]
