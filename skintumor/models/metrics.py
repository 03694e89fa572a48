"""The metrics the training loop logs per stage (train/val/test), from torchmetrics.

They follow the definitions of :mod:`skintumor.evaluate.metrics` (which computes them again on
saved predictions, with confidence intervals); a test checks that both agree.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAUROC, MulticlassStatScores


def stage_metrics(num_classes: int) -> MetricCollection:
    """Stateful metrics for one stage (train/val/test); feed (probabilities, targets)."""
    return MetricCollection(
        {
            "stats": MulticlassStatScores(num_classes=num_classes, average=None),
            "auroc": MulticlassAUROC(num_classes=num_classes, average=None),
        }
    )


def summarise(computed: dict[str, torch.Tensor], class_names: list[str]) -> dict[str, float]:
    """Turn a computed :func:`stage_metrics` collection into named scalars.

    Keys: ``acc`` (overall), ``bal_acc``, ``auroc_macro``, ``sens_macro``, ``spec_macro``, and per
    class ``acc_<c>`` (one-vs-rest), ``sens_<c>``, ``spec_<c>``, ``auroc_<c>``.
    """
    stats = computed["stats"].double()  # (C, 5): tp, fp, tn, fn, support
    tp, fp, tn, fn = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    total = tp + fp + tn + fn
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    # a class absent from the split (or the only one) has no sensitivity / specificity / AUROC:
    # NaN, skipped by the macro means, as in classification_metrics (torchmetrics would give 0)
    sens = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), nan)
    spec = torch.where(tn + fp > 0, tn / (tn + fp).clamp(min=1), nan)
    ovr_acc = (tp + tn) / total.clamp(min=1)
    auroc = torch.where((tp + fn > 0) & (tn + fp > 0), computed["auroc"].double(), nan)
    out = {
        "acc": float(tp.sum() / total[0].clamp(min=1)),
        "bal_acc": float(sens.nanmean()),
        "sens_macro": float(sens.nanmean()),
        "spec_macro": float(spec.nanmean()),
        "auroc_macro": float(auroc.nanmean()),
    }
    for i, name in enumerate(class_names):
        out[f"acc_{name}"] = float(ovr_acc[i])
        out[f"sens_{name}"] = float(sens[i])
        out[f"spec_{name}"] = float(spec[i])
        out[f"auroc_{name}"] = float(auroc[i])
    return out
