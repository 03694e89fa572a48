"""DICOM ultrasound: pixels to 8-bit greyscale, and the header fields a manifest keeps.

Decoding goes through :func:`skintumor.data.images.read_greyscale` like every other format.
Rules (stated once, here):

- greyscale (MONOCHROME1 is inverted to MONOCHROME2), RGB, YBR_FULL/YBR_FULL_422 (converted to
  RGB by pydicom) and PALETTE COLOR all become ITU-R 601 luma, scaled by ``2**BitsStored - 1``;
- a multi-frame clip gives its **middle frame**: the first frames of a saved cine loop are often
  the probe settling, the middle is where the sonographer held the lesion; sources can refuse
  clips instead (``multiframe="refuse"``) when a clinic's clips should be exported as stills;
- ``PatientID`` becomes the patient id; pixel spacing (``PixelSpacing`` or the ultrasound
  region's ``PhysicalDeltaX/Y``) is kept in millimetres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skintumor.data.pixels import check_pixel_count, to_uint8_grey
from skintumor.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
MULTIFRAME_RULES = ("middle", "refuse")
_CM_UNITS = 3  # DICOM PhysicalUnits code for centimetres


def is_dicom(path: str | Path) -> bool:
    """True for ``.dcm``/``.dicom`` files and for any file with the ``DICM`` preamble (PACS exports)."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or _has_preamble(path)


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _read_dataset(path: Path, pixels: bool):
    import pydicom

    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=not pixels)
    except Exception as err:  # noqa: BLE001 - force=True parses anything; any failure is one clear line
        first = (str(err).splitlines() or [""])[0] or type(err).__name__
        raise DataError(f"{path}: not a readable DICOM file ({first})") from None


def number_of_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def read_dicom_grey(path: str | Path) -> np.ndarray:
    """Decode a DICOM image (middle frame of a clip) as HxW uint8; :class:`DataError` otherwise."""
    from pydicom.pixels import apply_color_lut, pixel_array

    path = Path(path)
    ds = _read_dataset(path, pixels=True)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if not _has_preamble(path) and "SOPClassUID" not in ds:
            raise DataError(
                f"{path}: not a readable DICOM file (no DICM header, no SOP class: another format named .dcm?)"
            )
        raise DataError(f"{path}: DICOM file has no pixel data (a report or structured document?)")
    try:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        rows = columns = 0  # a bad header: pixel decoding below says what is wrong
    check_pixel_count(path, columns, rows)  # before a pixel is decoded
    frames = number_of_frames(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        array = pixel_array(ds, index=frames // 2 if frames > 1 else None)
        if photometric == "PALETTE COLOR":
            array = apply_color_lut(array, ds)
    except Exception as err:  # noqa: BLE001 - missing codec plugins, truncated data, bad tags
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        first = (str(err).splitlines() or [""])[0] or type(err).__name__
        raise DataError(f"{path}: cannot decode DICOM pixel data ({name}: {first})") from None
    if array.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        array = array[len(array) // 2]  # a frame axis left on a greyscale image: its middle frame
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: DICOM pixel data has an unexpected shape {array.shape}")
    if photometric == "PALETTE COLOR":
        return to_uint8_grey(array)  # the LUT's own depth (8 or 16 bit)
    bits = int(ds.get("BitsStored", array.dtype.itemsize * 8) or 8)
    if np.issubdtype(array.dtype, np.signedinteger):  # signed storage: shift to 0..2**bits-1
        array = array.astype(np.int64) + (1 << (bits - 1))
    top = (1 << bits) - 1
    if np.issubdtype(array.dtype, np.integer):  # integers stay integers (no float64 copy of the image)
        array = array.astype(np.promote_types(array.dtype, np.min_scalar_type(top)), copy=False)
    array = np.clip(array, 0, top)
    if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
        array = top - array
    return to_uint8_grey(array, float(top))


def dicom_header(path: str | Path) -> dict:
    """The manifest fields of a DICOM file (no pixel decoding).

    Returns ``patient_id`` ('' when absent), ``n_frames``, ``pixel_spacing_row_mm`` and
    ``pixel_spacing_col_mm`` ('' when unknown), ``modality``, ``photometric``.
    """
    path = Path(path)
    ds = _read_dataset(path, pixels=False)
    row_mm, col_mm = _pixel_spacing_mm(ds)
    return {
        "patient_id": str(ds.get("PatientID", "") or "").strip(),
        "n_frames": number_of_frames(ds),
        "pixel_spacing_row_mm": row_mm,
        "pixel_spacing_col_mm": col_mm,
        "modality": str(ds.get("Modality", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
    }


def _pixel_spacing_mm(ds) -> tuple[str, str]:
    """(row, column) spacing in mm as strings ('' when unknown); ultrasound keeps it per region."""
    spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        return f"{float(spacing[0]):.6g}", f"{float(spacing[1]):.6g}"
    regions = ds.get("SequenceOfUltrasoundRegions")
    for region in regions or []:
        if (
            region.get("PhysicalUnitsXDirection") == _CM_UNITS
            and region.get("PhysicalUnitsYDirection") == _CM_UNITS
            and "PhysicalDeltaX" in region
            and "PhysicalDeltaY" in region
        ):
            return f"{float(region.PhysicalDeltaY) * 10:.6g}", f"{float(region.PhysicalDeltaX) * 10:.6g}"
    return "", ""
