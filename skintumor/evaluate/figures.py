"""Report figures (matplotlib, Agg): confusion matrices, per-class ROC curves over folds, reliability.

Each function returns a ``Figure``; :func:`save` writes it as PNG and closes it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc as area_under_curve  # noqa: E402
from sklearn.metrics import roc_curve

FPR_GRID = np.linspace(0.0, 1.0, 201)  # common x axis for averaging ROC curves over folds


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_figure(conf: np.ndarray, classes: list[str], title: str):
    """Two panels: counts and row-normalised (share of each true class); ``conf`` (C, C), rows = true."""
    conf = np.asarray(conf, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = conf / conf.sum(1, keepdims=True)
    size = 2.2 + 0.9 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, fmt, name in ((axes[0], conf, "{:.0f}", "counts"), (axes[1], rows, "{:.2f}", "row-normalised")):
        shown = np.nan_to_num(data)
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=max(shown.max(), 1e-9))
        for i in range(len(classes)):
            for j in range(len(classes)):
                dark = shown[i, j] > 0.6 * shown.max()
                ax.text(
                    j,
                    i,
                    fmt.format(data[i, j]) if not np.isnan(data[i, j]) else "-",
                    ha="center",
                    va="center",
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_figure(per_fold: dict[int, tuple[np.ndarray, np.ndarray]], classes: list[str]):
    """One panel per class (one-vs-rest): every fold's ROC curve, their vertical mean and +-1 SD band.

    ``per_fold``: fold -> (y (N,), probs (N, C)). A fold without positives or negatives of a class
    has no curve for that class.
    """
    fig, axes = plt.subplots(1, len(classes), figsize=(4.2 * len(classes), 4.2), squeeze=False)
    for c, (ax, name) in enumerate(zip(axes[0], classes)):
        tprs, aucs = [], []
        for fold, (y, probs) in sorted(per_fold.items()):
            positive = y == c
            if not 0 < positive.sum() < len(y):
                continue
            fpr, tpr, _ = roc_curve(positive, probs[:, c])
            auc = float(area_under_curve(fpr, tpr))
            tprs.append(np.interp(FPR_GRID, fpr, tpr))
            tprs[-1][0] = 0.0
            aucs.append(auc)
            ax.plot(fpr, tpr, lw=0.9, alpha=0.55, label=f"fold {fold} ({auc:.3f})")
        if tprs:
            mean, sd = np.mean(tprs, 0), np.std(tprs, 0)
            ax.plot(
                FPR_GRID,
                mean,
                color="black",
                lw=2.2,
                label=f"mean ({np.mean(aucs):.3f} ± {np.std(aucs, ddof=1) if len(aucs) > 1 else 0:.3f})",
            )
            ax.fill_between(FPR_GRID, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), color="grey", alpha=0.2)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="1 - specificity",
            ylabel="sensitivity",
            title=f"{name} vs rest",
            aspect="equal",
        )
        ax.legend(loc="lower right", fontsize=7, title="AUROC", title_fontsize=7)
    fig.tight_layout()
    return fig


def reliability_figure(bins: dict[str, np.ndarray], ece: float, title: str):
    """Reliability diagram (accuracy vs confidence per bin) above a histogram of bin counts.

    ``bins``: output of :func:`skintumor.evaluate.metrics.calibration_bins`.
    """
    edges = bins["edges"]
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = bins["count"] > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        centres[filled],
        bins["accuracy"][filled],
        width=width[filled],
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    top.bar(
        centres[filled],
        bins["confidence"][filled] - bins["accuracy"][filled],
        bottom=bins["accuracy"][filled],
        width=width[filled],
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE {ece:.3f}, {len(centres)} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, bins["count"], width=width, color="grey", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="count")
    fig.tight_layout()
    return fig


__all__ = ["save", "confusion_figure", "roc_figure", "reliability_figure", "FPR_GRID"]
