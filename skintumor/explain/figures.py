"""Figures people look at: one overlay per image, and a per-class gallery of correct and wrong cases.

Maps are drawn as a translucent "jet" colour layer over the greyscale scan; the physician's lesion
outline, when there is one, is a white contour on every panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TITLES = {
    "gradcam": "Grad-CAM",
    "hirescam": "HiResCAM",
    "gradcam++": "Grad-CAM++",
    "branch_cam": "branch CAM",
    "gate2": "gate 2 (layer2)",
    "gate3": "gate 3 (layer3)",
    "random": "random",
}


@dataclass
class Case:
    """One explained image. image: (H, W) uint8; maps: method -> (H, W) in [0, 1]; mask: (H, W) bool or None;
    probs: class -> probability."""

    name: str
    image: np.ndarray
    maps: dict[str, np.ndarray]
    mask: np.ndarray | None
    label: str
    pred: str
    probs: dict[str, float]

    @property
    def correct(self) -> bool:
        return self.label == self.pred


def _panel(ax, image: np.ndarray, cam: np.ndarray | None, mask: np.ndarray | None, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if cam is not None:
        ax.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=0.45, interpolation="bilinear")
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=["white"], linewidths=0.8)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def overlay_figure(case: Case, path: str | Path, methods=None) -> Path:
    """Image plus one panel per map; title: true and predicted class with probabilities. Writes a PNG."""
    methods = [m for m in (methods or case.maps) if m in case.maps]
    fig, axes = plt.subplots(1, 1 + len(methods), figsize=(1.6 * (1 + len(methods)), 2.0), dpi=110)
    axes = np.atleast_1d(axes)
    _panel(
        axes[0],
        case.image,
        None,
        case.mask,
        "image" + (" + lesion" if case.mask is not None and case.mask.any() else ""),
    )
    for ax, method in zip(axes[1:], methods):
        _panel(ax, case.image, case.maps[method], case.mask, TITLES.get(method, method))
    probs = ", ".join(f"{k} {v:.2f}" for k, v in case.probs.items())
    verdict = "correct" if case.correct else "WRONG"
    fig.suptitle(f"{case.name}   true: {case.label}   predicted: {case.pred} ({verdict})   [{probs}]", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return _save(fig, path)


def gallery_figure(cases: list[Case], cls: str, path: str | Path, method: str = "gradcam", per_row: int = 6) -> Path:
    """Images of true class ``cls``: top row correct, bottom row wrong (up to ``per_row`` each), ``method``'s map."""
    rows = {
        "correct": [c for c in cases if c.label == cls and c.correct][:per_row],
        "wrong": [c for c in cases if c.label == cls and not c.correct][:per_row],
    }
    fig, axes = plt.subplots(2, per_row, figsize=(1.5 * per_row, 3.5), dpi=110, squeeze=False)
    for r, (kind, chosen) in enumerate(rows.items()):
        for col in range(per_row):
            ax = axes[r, col]
            if col >= len(chosen):
                ax.set_axis_off()
                if col == 0:
                    ax.text(0.5, 0.5, f"no {kind} cases", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                continue
            case = chosen[col]
            _panel(
                ax,
                case.image,
                case.maps.get(method),
                case.mask,
                f"{kind}: {case.pred} {case.probs.get(case.pred, float('nan')):.2f}",
            )
    fig.suptitle(f"true class {cls}: {TITLES.get(method, method)} (top: correct, bottom: wrong)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating folders) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
