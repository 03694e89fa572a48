"""Figures people look at: a per-class gallery of correct and wrong cases (per-image overlays:
:mod:`skintumor.explain.overlay`).

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
    "decoder": "lesion decoder",
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


def gallery_figure(cases: list[Case], cls: str, path: str | Path, method: str = "gradcam", per_row: int = 6) -> Path:
    """Images of true class ``cls``: top row correct, bottom row wrong (up to ``per_row`` each), ``method``'s map."""
    rows = {
        "correct": [c for c in cases if c.label == cls and c.correct][:per_row],
        "wrong": [c for c in cases if c.label == cls and not c.correct][:per_row],
    }
    fig, axes = plt.subplots(2, per_row, figsize=(1.5 * per_row, 4.0), dpi=110, squeeze=False)
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
