"""One uploaded file -> a decoded (H, W) uint8 scan, or a one-line refusal with its HTTP status.

Checks, cheapest first, before anything is decoded: empty (422), over the size limit (413), not a
PNG/JPEG/BMP/TIFF/DICOM (415), more pixels than the limit according to the file's header (413: a
decompression bomb is refused before it is inflated). Then the bytes are written under a name of our
own (``upload_<i>.<suffix>``) in the request's temporary folder and decoded by
:func:`skintumor.data.images.read_greyscale`, the reader training and ``skintumor predict`` use. The
user's filename is only ever echoed back in messages, never used as a path.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from skintumor.data.dicom import DICOM_SUFFIXES
from skintumor.data.images import IMAGE_SUFFIXES, read_greyscale
from skintumor.errors import DataError

PILLOW_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF")  # MPO: the JPEG variant phones write


class Rejected(Exception):
    """An upload that cannot be predicted: ``code`` (413, 415, 422) and a one-line ``message``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def check_size(name: str, size: int, max_bytes: int) -> None:
    """Refuse an empty file (422) or one over ``max_bytes`` (413) before it is read into memory."""
    if size == 0:
        raise Rejected(422, f"{name}: file is empty (0 bytes)")
    if size > max_bytes:
        raise Rejected(413, f"{name}: {size / 2**20:.1f} MB is over the upload limit of {max_bytes / 2**20:g} MB")


def decode_upload(name: str, data: bytes, folder: Path, index: int, max_bytes: int, max_pixels: int) -> np.ndarray:
    """The checks above, then :func:`read_greyscale` of the bytes saved as ``folder/upload_<index>``."""
    check_size(name, len(data), max_bytes)
    suffix = Path(name).suffix.lower()
    dicom = suffix in DICOM_SUFFIXES or data[128:132] == b"DICM"
    width, height = _dicom_size(name, data) if dicom else _pillow_size(name, data)
    if width * height > max_pixels:
        raise Rejected(
            413, f"{name}: {width} x {height} pixels is over the limit of {max_pixels:,} pixels (--max-pixels)"
        )
    if suffix not in IMAGE_SUFFIXES + DICOM_SUFFIXES:
        suffix = ".dcm" if dicom else ""
    path = folder / f"upload_{index}{suffix}"
    path.write_bytes(data)
    try:
        return read_greyscale(path)
    except DataError as err:
        raise Rejected(422, str(err).replace(str(path), name)) from None


def _pillow_size(name: str, data: bytes) -> tuple[int, int]:
    """Width and height from the image's header (Pillow reads no pixels until asked)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(io.BytesIO(data)) as img:
                kind, size = img.format, img.size
    except Image.DecompressionBombError as err:
        raise Rejected(413, f"{name}: too many pixels ({err})") from None
    except UnidentifiedImageError:
        raise Rejected(415, f"{name}: not an image (PNG, JPEG, BMP, TIFF or DICOM expected)") from None
    except Exception as err:  # noqa: BLE001 - a broken header is one clear line
        raise Rejected(
            422, f"{name}: not a readable image ({str(err).splitlines()[0] if str(err) else err!r})"
        ) from None
    if kind not in PILLOW_FORMATS:
        raise Rejected(415, f"{name}: {kind} images are not supported (PNG, JPEG, BMP, TIFF or DICOM expected)")
    return size


def _dicom_size(name: str, data: bytes) -> tuple[int, int]:
    """Columns and Rows from the DICOM header (pixel data not read); (0, 0) when it has none, and
    the decoder then says what is missing."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
    except Exception as err:  # noqa: BLE001 - force=True parses anything; any failure is one clear line
        first = (str(err).splitlines() or [""])[0] or type(err).__name__
        raise Rejected(422, f"{name}: not a readable DICOM file ({first})") from None
