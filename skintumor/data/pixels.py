"""Pixel values to 8-bit greyscale: the one rule every image format is decoded by.

Colour becomes ITU-R 601 luma, alpha is dropped, and the value is scaled by the *file's* bit depth,
never by the image's own maximum, so one grey level means the same in every file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skintumor.errors import DataError

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, the same weights as PIL's "L"
# The largest image decoded (width x height): far above any ultrasound frame (about 1 megapixel),
# low enough that decoding one stays within a few hundred MB. Checked from the file's header before
# a pixel is decoded (PIL's decompression-bomb check is the same idea, but only warns up to 179 MP).
MAX_PIXELS = 50_000_000
_BLOCK = 1 << 20  # pixels converted at a time: float64 temporaries stay at a few MB, whatever the image


def check_pixel_count(path: str | Path, width: int, height: int) -> None:
    """DataError naming the file and its size when ``width x height`` is over :data:`MAX_PIXELS`."""
    pixels = int(width) * int(height)
    if pixels > MAX_PIXELS:
        raise DataError(
            f"{path}: image is {width}x{height} px ({pixels / 1e6:.0f} megapixels), more than the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit (downscale or crop it first)"
        )


def to_uint8_grey(array: np.ndarray, max_value: float | None = None) -> np.ndarray:
    """HxW or HxWxC array (C = 1, 2 = LA, 3 = RGB or 4 = RGBA) -> HxW uint8.

    Args:
        array: pixel values; colour channels are RGB(A).
        max_value: the value that becomes 255. Default: the dtype's range (uint8 255, uint16
            65535, bool 1); float arrays are taken as 0..1 when their maximum is <= 1, else 0..255.
    """
    if max_value is None:
        max_value = dtype_max(array)
    if array.ndim == 3:
        if array.shape[2] in (2, 4):  # LA / RGBA: alpha is display-only for scans
            array = array[..., :-1]
        if array.shape[2] == 1:
            array = array[..., 0]
        elif array.shape[2] != 3:
            raise ValueError(f"cannot convert an image with {array.shape[2]} channels to greyscale")
    elif array.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {array.shape}")
    if array.ndim == 2 and array.dtype == np.uint8 and max_value == 255:
        return array
    scale = 255.0 / float(max_value)
    grey = np.empty(array.shape[:2], np.uint8)
    step = max(1, _BLOCK // max(1, array.shape[1]))
    for top in range(0, array.shape[0], step):  # in row blocks: never the whole image as float64
        block = array[top : top + step].astype(np.float64)
        if block.ndim == 3:
            block = block @ _LUMA
        grey[top : top + step] = np.clip(np.rint(block * scale), 0, 255)
    return grey


def dtype_max(array: np.ndarray) -> float:
    if array.dtype == bool:
        return 1.0
    if np.issubdtype(array.dtype, np.integer):
        return float(np.iinfo(array.dtype).max)
    return 1.0 if array.size == 0 or float(np.nanmax(array)) <= 1.0 else 255.0
