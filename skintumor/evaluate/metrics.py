"""Classification metrics: one home for what is computed during training and in reports.

Per class (one-vs-rest): accuracy, sensitivity (recall), specificity, AUROC; macro averages;
balanced accuracy (= macro sensitivity). During training they come from torchmetrics.
"""
from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAUROC, MulticlassStatScores


def stage_metrics(num_classes: int) -> MetricCollection:
    """Stateful metrics for one stage (train/val/test); feed (probabilities, targets)."""
    return MetricCollection({
        "stats": MulticlassStatScores(num_classes=num_classes, average=None),
        "auroc": MulticlassAUROC(num_classes=num_classes, average=None),
    })


def summarise(computed: dict[str, torch.Tensor], class_names: list[str]) -> dict[str, float]:
    """Turn a computed :func:`stage_metrics` collection into named scalars.

    Keys: ``acc`` (overall), ``bal_acc``, ``auroc_macro``, ``sens_macro``, ``spec_macro``, and per
    class ``acc_<c>`` (one-vs-rest), ``sens_<c>``, ``spec_<c>``, ``auroc_<c>``.
    """
    stats = computed["stats"].double()  # (C, 5): tp, fp, tn, fn, support
    tp, fp, tn, fn = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    total = tp + fp + tn + fn
    sens = tp / (tp + fn).clamp(min=1)
    spec = tn / (tn + fp).clamp(min=1)
    ovr_acc = (tp + tn) / total.clamp(min=1)
    auroc = computed["auroc"].double()
    out = {
        "acc": float(tp.sum() / total[0].clamp(min=1)),
        "bal_acc": float(sens.mean()),
        "sens_macro": float(sens.mean()),
        "spec_macro": float(spec.mean()),
        "auroc_macro": float(auroc.mean()),
    }
    for i, name in enumerate(class_names):
        out[f"acc_{name}"] = float(ovr_acc[i])
        out[f"sens_{name}"] = float(sens[i])
        out[f"spec_{name}"] = float(spec[i])
        out[f"auroc_{name}"] = float(auroc[i])
    return out


__all__ = ["stage_metrics", "summarise"]
