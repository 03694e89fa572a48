"""Pixel values to 8-bit greyscale: the one rule every image format is decoded by.

Colour becomes ITU-R 601 luma, alpha is dropped, and the value is scaled by the *file's* bit depth,
never by the image's own maximum, so one grey level means the same in every file.
"""

from __future__ import annotations

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, the same weights as PIL's "L"


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
        elif array.shape[2] == 3:
            array = array.astype(np.float64) @ _LUMA
        else:
            raise ValueError(f"cannot convert an image with {array.shape[2]} channels to greyscale")
    elif array.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {array.shape}")
    if array.dtype == np.uint8 and max_value == 255:
        return array
    scaled = array.astype(np.float64) * (255.0 / float(max_value))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def dtype_max(array: np.ndarray) -> float:
    if array.dtype == bool:
        return 1.0
    if np.issubdtype(array.dtype, np.integer):
        return float(np.iinfo(array.dtype).max)
    return 1.0 if array.size == 0 or float(np.nanmax(array)) <= 1.0 else 255.0
