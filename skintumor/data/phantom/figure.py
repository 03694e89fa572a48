"""The example figure: one row per class, typical views first, then the atypical presentations."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from skintumor.data.phantom.lesions import CLASSES
from skintumor.data.phantom.rendering import ViewPlan, render_view


def plot_examples(images: list[tuple[str, np.ndarray, np.ndarray, str]], path: str | Path, per_class: int = 5) -> Path:
    """Grid figure, one row per class: images with their mask outline. ``images``: (label, image, mask, caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(1.9 * per_class, 2.05 * len(CLASSES)), squeeze=False)
    for r, label in enumerate(CLASSES):
        chosen = [item for item in images if item[0] == label][:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(chosen):
                continue
            _, image, mask, caption = chosen[c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=["#ff2d2d"], linewidths=0.9)
            ax.set_title(caption, fontsize=6.5)
            if c == 0:
                ax.text(-0.08, 0.5, label, transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=9)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    # a 64-colour palette keeps the speckle figure small enough to commit (greys + the outline colour)
    Image.open(buffer).convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


def figure_examples(
    plans: list[ViewPlan], image_size: int, p_annotated: float, per_class: int, readout: bool = False
) -> list:
    """Pick views to show: per class, typical ones first, then each atypical variant once."""
    chosen = []
    for label in CLASSES:
        mine = [p for p in plans if p.label == label]
        atypical = {}
        for p in mine:
            if (p.variant != "typical" or p.small) and (p.variant, p.small) not in atypical:
                atypical[(p.variant, p.small)] = p
        extra = list(atypical.values())[: max(1, per_class // 2)]
        typical = [p for p in mine if p.variant == "typical" and not p.small and p.view == 1]
        chosen += typical[: per_class - len(extra)] + extra
    out = []
    for p in chosen:
        view = render_view(p, image_size, p_annotated, readout)
        tags = [p.variant if p.variant != "typical" else "", "small" if p.small else ""]
        caption = " ".join(t for t in [p.name] + tags if t)
        out.append((p.label, view.image, view.mask, caption))
    return out
