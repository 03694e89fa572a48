"""One explanation overlay per image, composited directly (colour lookup + alpha blend, text with
PIL): milliseconds per image, where a matplotlib figure takes most of a second. It serves
``skintumor predict --cam``, explain's per-image overlays and the web page alike.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

JET = (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)


def overlay_image(
    image: np.ndarray, cam: np.ndarray, caption: str = "", alpha: float = 0.45, min_side: int = 0
) -> Image.Image:
    """The scan in grey with the map in "jet" colours over it, and a caption bar below.

    Shapes: image (H, W) uint8; cam (h, w) in [0, 1] (resized to the image if it differs) -> an RGB
    image of H x W (+ a caption bar of 14 px per line when ``caption`` is given). ``alpha``: the map's
    opacity; ``min_side``: a smaller scan is first enlarged (nearest) to at least this many pixels.
    """
    image = np.asarray(image, dtype=np.uint8)
    if min_side and max(image.shape) < min_side:
        scale = -(-min_side // max(image.shape))
        image = np.asarray(
            Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
        )
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape:
        cam = np.asarray(Image.fromarray(cam).resize(image.shape[::-1], Image.BILINEAR))
    colours = JET[np.clip(np.rint(cam * 255), 0, 255).astype(np.uint8)].astype(np.float32)
    grey = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    blended = Image.fromarray(np.rint((1 - alpha) * grey + alpha * colours).astype(np.uint8))
    if not caption:
        return blended
    lines = caption.splitlines()
    canvas = Image.new("RGB", (blended.width, blended.height + 14 * len(lines) + 4), (0, 0, 0))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((3, blended.height + 2 + 14 * i), line, fill=(255, 255, 255), font=font)
    return canvas


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool lesion mask -> (H, W) bool, its boundary pixels (inside, next to the outside)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay_panels(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    mask: np.ndarray | None = None,
    caption: str = "",
    titles: dict[str, str] | None = None,
    min_side: int = 128,
) -> Image.Image:
    """The scan, then one :func:`overlay_image` panel per map, side by side; the lesion outline (white)
    on every panel when ``mask`` has one; a title under each panel and ``caption`` below all.

    Shapes: image (H, W) uint8; maps name -> (h, w) in [0, 1]; mask (H, W) bool or None. Small
    images are enlarged (nearest) to at least ``min_side`` px so the panels stay readable.
    """
    scale = max(1, -(-min_side // max(image.shape)))
    edge = outline(mask) if mask is not None and np.asarray(mask).any() else None
    names = ["image", *maps]
    panels = []
    for name in names:
        panel = (
            overlay_image(image, maps[name], alpha=0.45) if name != "image" else Image.fromarray(image).convert("RGB")
        )
        pixels = np.asarray(panel).copy()
        if edge is not None:
            pixels[edge] = 255
        panels.append(Image.fromarray(pixels).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST))
    width, height = panels[0].size
    lines = caption.splitlines()
    canvas = Image.new("RGB", (width * len(panels) + 2 * (len(panels) - 1), height + 16 + 14 * len(lines)), (0, 0, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i, (name, panel) in enumerate(zip(names, panels)):
        canvas.paste(panel, (i * (width + 2), 0))
        draw.text((i * (width + 2) + 2, height + 2), (titles or {}).get(name, name), fill=(255, 255, 255), font=font)
    for j, line in enumerate(lines):
        draw.text((2, height + 16 + 14 * j), line, fill=(255, 255, 255), font=font)
    return canvas
