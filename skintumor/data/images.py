"""Decode any supported image file into 8-bit greyscale, with errors that name the file.

One rule for every format: colour becomes ITU-R 601 luma, alpha is dropped, palettes are expanded,
and the pixel value is scaled by the *file's* bit depth (8-bit: /255, 16-bit: /65535, DICOM:
/(2**BitsStored - 1)), never by the image's own maximum, so one grey level means the same in
every file. DICOM files (``.dcm``/``.dicom`` or any file with the DICM preamble) are decoded by
:mod:`skintumor.data.dicom`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from skintumor.data import dicom
from skintumor.data.pixels import MAX_PIXELS, check_pixel_count, dtype_max, to_uint8_grey
from skintumor.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_greyscale(path: str | Path) -> np.ndarray:
    """Read an image file (PNG/JPEG/BMP/TIFF/DICOM) as an HxW uint8 array.

    Raises :class:`DataError` naming the file for anything that is not a decodable image.
    """
    return to_uint8_grey(*_decode(Path(path)))


def _decode(path: Path) -> tuple[np.ndarray, float]:
    """The file's pixels as stored (HxW or HxWxC, C = 1..4) and the value that means full white."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    if dicom.is_dicom(path):
        array, max_value = dicom.read_dicom_grey(path), 255.0
    else:
        try:
            with warnings.catch_warnings():  # the size is checked below, in a line that names the file
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(path)  # reads the header only
        except Image.DecompressionBombError as err:  # PIL refuses above 179 megapixels before giving the size
            found = re.search(r"\((\d+) pixels\)", str(err))
            size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
            raise DataError(f"{path}: image has {size}, more than the {MAX_PIXELS / 1e6:.0f}-megapixel limit") from None
        except Exception as err:  # noqa: BLE001 - any decoder failure on user data is one clear line
            raise DataError(f"{path}: not a readable image ({_first_line(err)})") from None
        with opened as img:
            check_pixel_count(path, *img.size)  # before a pixel is decoded
            try:
                img.load()
                img = ImageOps.exif_transpose(img)  # phone/camera JPEGs: pixels as every viewer shows them
                array, max_value = _pillow_array(img)
            except Exception as err:  # noqa: BLE001 - any decoder failure on user data is one clear line
                raise DataError(f"{path}: not a readable image ({_first_line(err)})") from None
    if array.size == 0:
        raise DataError(f"{path}: image has no pixels")
    return array, max_value


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0] or type(err).__name__


def _pillow_array(img: Image.Image) -> tuple[np.ndarray, float]:
    """The decoded pixels and the value that means full white, from the image's own bit depth."""
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16), 65535.0
    if mode == "I":  # 32-bit integer (Pillow's 16-bit fallback): clip to the 16-bit range
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16), 65535.0
    if mode == "F":  # float32 as stored; scaled row blocks at a time (to_uint8_grey)
        array = np.asarray(img)
        return array, dtype_max(array)
    if mode in ("L", "LA", "RGB", "RGBA"):  # alpha kept: images drop it, masks may live in it
        return np.asarray(img), 255.0
    if mode == "1":
        return np.asarray(img.convert("L")), 255.0
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB")), 255.0
    return np.asarray(img.convert("RGB")), 255.0  # CMYK, YCbCr, LAB, ...


def read_mask(path: str | Path | Sequence[str | Path], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lesion mask as an HxW bool array; several files are merged (their union).

    Values are used as stored (a 16-bit label map of 0/1 stays 0/1). Binary masks and label maps
    (at most 8 distinct values) count every non-zero pixel; masks with many grey levels
    (JPEG-compressed) are thresholded at half their maximum so compression noise is not lesion.
    Colour masks count any non-zero channel; a mask drawn only in the alpha channel (a
    transparent overlay) uses the alpha channel.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise ValueError("read_mask needs at least one path")
    union = None
    for p in paths:
        mask = _binary(_decode(Path(p))[0])
        if shape is not None and mask.shape != tuple(shape):
            raise DataError(
                f"{p}: mask is {mask.shape[1]}x{mask.shape[0]} px but its image is {shape[1]}x{shape[0]} px"
            )
        if union is not None and mask.shape != union.shape:
            raise DataError(
                f"{p}: mask is {mask.shape[1]}x{mask.shape[0]} px but {paths[0]} is "
                f"{union.shape[1]}x{union.shape[0]} px"
            )
        union = mask if union is None else union | mask
    return union


def _binary(array: np.ndarray) -> np.ndarray:
    """Stored mask values (HxW or HxWxC) -> HxW bool, by the rules of :func:`read_mask`."""
    if array.ndim == 3:
        channels = array.shape[2]
        colour = array[..., : channels - 1] if channels in (2, 4) else array
        values = colour.max(axis=2)
        if channels in (2, 4) and not values.any():
            values = array[..., -1]  # the lesion is only in the alpha channel
        array = values
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0:
        levels = np.count_nonzero(np.bincount(array.ravel()))  # a counting pass, faster than np.unique
    else:
        levels = len(np.unique(array))
    if levels <= 8:
        return array > 0
    return array > array.max() / 2
