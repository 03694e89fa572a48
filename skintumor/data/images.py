"""Decode any supported image file into 8-bit greyscale, with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from skintumor.data.manifest import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def to_uint8_grey(array: np.ndarray) -> np.ndarray:
    """HxW or HxWxC array of any integer/float depth -> HxW uint8.

    Colour is converted with ITU-R 601 luma (as PIL's "L"); 16-bit and float images are scaled
    by their dtype's range (not per image), so the same pixel value maps the same way in every file.
    """
    if array.ndim == 3:
        if array.shape[2] == 4:  # RGBA: alpha is display-only for scans
            array = array[..., :3]
        if array.shape[2] == 1:
            array = array[..., 0]
        else:
            array = array[..., 0] * 0.299 + array[..., 1] * 0.587 + array[..., 2] * 0.114
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        top = 255.0 if array.max(initial=0) <= 255 else float(np.iinfo(array.dtype).max)
    else:
        top = 255.0 if array.max(initial=0) > 1.0 else 1.0
    return np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def read_greyscale(path: str | Path) -> np.ndarray:
    """Read an image file as an HxW uint8 array; raise :class:`DataError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":  # palette: expand before converting
                img = img.convert("RGB")
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int32)
                if img.mode == "I":
                    array = np.clip(array, 0, 65535).astype(np.uint16)
            elif img.mode in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "F"):
                if img.mode in ("1", "LA", "CMYK", "YCbCr"):
                    img = img.convert("L" if img.mode in ("1", "LA") else "RGB")
                array = np.asarray(img)
            else:
                array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({str(err).splitlines()[0] or type(err).__name__})") from None
    if array.size == 0:
        raise DataError(f"{path}: image has no pixels")
    return to_uint8_grey(array)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lesion mask as an HxW bool array (any non-zero pixel is lesion)."""
    mask = read_greyscale(path) > 0
    if shape is not None and mask.shape != tuple(shape):
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px but its image is "
                        f"{shape[1]}x{shape[0]} px")
    return mask
