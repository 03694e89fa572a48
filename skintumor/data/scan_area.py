"""Find the ultrasound image area inside a scanner screenshot and crop image and mask to it.

Exported ultrasound frames carry scanner UI around the scan: black margins, text, logos, grey or
colour bars, depth rulers. The scan itself is one large connected region of speckle. So: mark
pixels brighter than the background, erase thin strokes (text, rulers, caliper crosses) with a
morphological opening, and take the bounding box of the large connected regions. Hand-written
(on OpenCV primitives) because no kept library knows ultrasound screens; ~1 ms on a 400 px image.
Deep tissue with almost no echo (grey level <= ``background``) below the scan counts as margin.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open like numpy slices


def find_scan_area(image: np.ndarray, background: int = 4, min_fraction: float = 0.2) -> Box:
    """Bounding box ``(y0, y1, x0, x1)`` of the scan area of an HxW uint8 image.

    Args:
        image: HxW greyscale (uint8).
        background: grey level at or below which a pixel counts as screen background.
        min_fraction: if the region found covers less than this share of the image, the
            finder is not confident and the whole image is returned.

    Returns the whole image ``(0, H, 0, W)`` when no region stands out.
    """
    if image.ndim != 2:
        raise ValueError(f"find_scan_area expects an HxW image, got shape {image.shape}")
    height, width = image.shape
    whole = (0, height, 0, width)
    # smooth speckle first so dark patches inside tissue (cysts, shadows) stay connected
    size = max(3, round(min(height, width) / 60))
    smooth = cv2.blur(np.ascontiguousarray(image, dtype=np.uint8), (size, size))
    bright = (smooth > background).astype(np.uint8)
    # opening with a square a few px wide removes text, rulers and thin lines
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, np.ones((size, size), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n <= 1:  # label 0 is the background
        return whole
    # the scan may fall apart at a wide anechoic lesion (a cyst across the image splits tissue
    # above from its bright back wall below): keep every region at least a tenth of the largest;
    # text, rulers and colour bars are far smaller
    areas = stats[1:, cv2.CC_STAT_AREA]
    parts = stats[1:][areas >= 0.1 * areas.max()]
    x0, y0 = int(parts[:, cv2.CC_STAT_LEFT].min()), int(parts[:, cv2.CC_STAT_TOP].min())
    x1 = int((parts[:, cv2.CC_STAT_LEFT] + parts[:, cv2.CC_STAT_WIDTH]).max())
    y1 = int((parts[:, cv2.CC_STAT_TOP] + parts[:, cv2.CC_STAT_HEIGHT]).max())
    box = (y0, y1, x0, x1)
    return box if (y1 - y0) * (x1 - x0) >= min_fraction * height * width else whole


def crop_to_box(image: np.ndarray, box: Box, mask: np.ndarray | None = None):
    """``image[y0:y1, x0:x1]`` and the same crop of ``mask`` (None stays None): (image, mask)."""
    y0, y1, x0, x1 = box
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape[:2]} differs from image shape {image.shape[:2]}")
    return image[y0:y1, x0:x1], (None if mask is None else mask[y0:y1, x0:x1])


def crop_scan_area(image: np.ndarray, mask: np.ndarray | None = None, **options):
    """Crop ``image`` (HxW uint8) and its ``mask`` to :func:`find_scan_area`: (image, mask, box)."""
    box = find_scan_area(image, **options)
    cropped, cropped_mask = crop_to_box(image, box, mask)
    return cropped, cropped_mask, box
