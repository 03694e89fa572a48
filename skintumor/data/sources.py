"""Data sources. Each turns what a user has on disk into a :class:`Manifest`.

``load_source(name, **options)`` is what the data module and the CLI call; new sources register in
:data:`SOURCES` with a function ``(root, **options) -> Manifest``.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from skintumor.data.dicom import DICOM_SUFFIXES, MULTIFRAME_RULES, dicom_header, is_dicom
from skintumor.data.images import IMAGE_SUFFIXES
from skintumor.data.manifest import MASK_SEPARATOR, Manifest, read_user_csv
from skintumor.errors import ConfigError, DataError

BUSI_ROOT = "../shared/data/busi"  # relative to the repo root (the working directory of every entry point)


def folder_manifest(
    root: str | Path, patients_csv: str | Path | None = None, classes: list[str] | None = None
) -> Manifest:
    """``root/<class>/*.{png,jpg,jpeg,bmp,tif,tiff,dcm}``; patient ids from an optional CSV.

    The CSV needs ``path`` (relative to root, or a bare file name if unique) and ``patient_id``.
    Without it each image is its own patient, which a warning says.
    """
    root, class_dirs = _class_dirs(root, classes)
    suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
    rows = []
    for class_dir in class_dirs:
        files = _files(class_dir, lambda p: p.suffix.lower() in suffixes)
        if not files:
            raise DataError(f"{class_dir}: class folder has no images ({', '.join(suffixes)})")
        rows += [{"path": p.relative_to(root).as_posix(), "label": class_dir.name} for p in files]
    table = pd.DataFrame(rows)
    masks = [p for p in table["path"] if BUSI_MASK_PATTERN.search(Path(p).stem)]
    if masks:
        warnings.warn(
            f"{root}: {len(masks)} file(s) look like masks (e.g. {masks[0]}) and are read as images; "
            "for <name>.png + <name>_mask.png folders use source 'busi'",
            stacklevel=2,
        )
    if patients_csv is None:
        warnings.warn(
            f"{root}: no patients CSV given; every image is treated as its own patient "
            "(near-duplicates of one lesion may then straddle folds)",
            stacklevel=2,
        )
        table["patient_id"] = ["img:" + p for p in table["path"]]
    else:
        table["patient_id"] = _patient_ids(Path(patients_csv), table["path"])
    return Manifest(table, root, [d.name for d in class_dirs])


def _class_dirs(root: str | Path, classes: list[str] | None) -> tuple[Path, list[Path]]:
    """The data root and its class folders (all non-hidden sub-folders, or ``classes`` in that order)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise DataError(f"{root}: no folder for class(es) {', '.join(missing)}")
        class_dirs = [root / c for c in classes]
    if not class_dirs:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>.png)")
    return root, class_dirs


def _files(folder: Path, keep: Callable[[Path], bool]) -> list[Path]:
    """Non-hidden files under ``folder`` (recursively) that ``keep`` accepts, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and keep(p))


def _patient_ids(csv_path: Path, paths: pd.Series) -> list[str]:
    ids = read_user_csv(csv_path, "patients CSV")
    missing = [c for c in ("path", "patient_id") if c not in ids.columns]
    if missing:
        raise DataError(f"{csv_path}: patients CSV is missing column(s) {', '.join(missing)}")
    by_path = dict(zip(ids["path"], ids["patient_id"]))
    names = pd.Series([Path(p).name for p in by_path]).value_counts()
    by_name = {Path(p).name: pid for p, pid in by_path.items() if names[Path(p).name] == 1}  # unique names only
    result, unmatched = [], []
    for p in paths:
        pid = by_path.get(p) or by_name.get(Path(p).name)
        if not pid:
            unmatched.append(p)
            pid = "img:" + p
        result.append(pid)
    if unmatched:
        warnings.warn(
            f"{csv_path}: {len(unmatched)} image(s) have no patient id (e.g. {unmatched[0]}); "
            "each is treated as its own patient",
            stacklevel=3,
        )
    return result


def csv_manifest(
    root: str | Path | None = None, manifest: str | Path | None = None, classes: list[str] | None = None
) -> Manifest:
    """A user's CSV manifest (``path, label, patient_id[, mask_path, ...]``); extra columns are kept.

    ``root`` defaults to the CSV's folder; every file named must exist.
    """
    if manifest is None:
        raise ConfigError(REQUIRED["csv"][1])
    try:
        result = Manifest.from_csv(manifest, root=root, classes=classes)
    except DataError as err:
        message = str(err)
        raise DataError(message if message.startswith(str(manifest)) else f"{manifest}: {message}") from None
    for col in ("path", "mask_path"):
        for value in result.table[col]:
            for part in value.split(MASK_SEPARATOR) if value else []:
                if not (result.root / part).is_file():
                    raise DataError(f"{manifest}: {col} {part!r} does not exist under {result.root}")
    return result


def dicom_manifest(
    root: str | Path | None = None,
    manifest: str | Path | None = None,
    classes: list[str] | None = None,
    multiframe: str = "middle",
) -> Manifest:
    """DICOM files, from ``root/<class>/*`` (``.dcm``, ``.dicom`` or any file with the DICM preamble)
    or from a CSV ``manifest`` (``path, label[, patient_id, mask_path, ...]``).

    ``PatientID`` is the patient id unless the CSV gives one. Extra columns: ``n_frames``,
    ``pixel_spacing_row_mm``, ``pixel_spacing_col_mm`` (empty when unknown), ``modality``,
    ``photometric``. ``multiframe``: ``"middle"`` reads a clip's middle frame, ``"refuse"``
    raises :class:`DataError` listing the clips. A file whose header cannot be read stays in the
    manifest without metadata; decoding it (the data check, training) reports it.
    """
    if multiframe not in MULTIFRAME_RULES:
        raise DataError(f"dicom source: multiframe must be one of {', '.join(MULTIFRAME_RULES)}, got {multiframe!r}")
    if manifest is not None:
        with warnings.catch_warnings():  # a missing patient_id column is filled from PatientID below
            warnings.simplefilter("ignore")
            base = csv_manifest(root, manifest, classes)
        root, table, class_names = base.root, base.table.copy(), base.classes
    else:
        if root is None:
            raise ConfigError(REQUIRED["dicom"][1])
        root, class_dirs = _class_dirs(root, classes)
        rows = []
        for class_dir in class_dirs:
            files = _files(class_dir, is_dicom)
            if not files:
                raise DataError(f"{class_dir}: class folder has no DICOM files")
            rows += [{"path": p.relative_to(root).as_posix(), "label": class_dir.name} for p in files]
        table, class_names = pd.DataFrame(rows), [d.name for d in class_dirs]
        table["patient_id"] = ["img:" + p for p in table["path"]]
    headers = []
    for path in table["path"]:
        try:
            headers.append(dicom_header(root / path))
        except DataError:
            headers.append({})
    header = pd.DataFrame(headers, index=table.index)
    for col in ("n_frames", "pixel_spacing_row_mm", "pixel_spacing_col_mm", "modality", "photometric"):
        table[col] = header[col].fillna("").astype(str) if col in header else ""
    from_dicom = header["patient_id"].fillna("") if "patient_id" in header else pd.Series("", index=table.index)
    use = table["patient_id"].str.startswith("img:") & (from_dicom != "")
    table.loc[use, "patient_id"] = from_dicom[use]
    if "group_id" in table:  # recomputed from the final patient ids
        table["group_id"] = ""
    clips = table.loc[pd.to_numeric(table["n_frames"], errors="coerce").fillna(1) > 1, "path"].tolist()
    if clips and multiframe == "refuse":
        raise DataError(
            f"{root / clips[0]}: multi-frame DICOM clip ({len(clips)} clip(s) in all; "
            "export stills, or set multiframe=middle to use each clip's middle frame)"
        )
    if clips:
        warnings.warn(
            f"{root}: {len(clips)} multi-frame DICOM clip(s) (e.g. {clips[0]}); each is read as its middle frame",
            stacklevel=2,
        )
    if table["patient_id"].str.startswith("img:").all():
        warnings.warn(
            f"{root}: no DICOM PatientID found; every image is treated as its own patient "
            "(duplicate grouping still keeps near-identical images together)",
            stacklevel=2,
        )
    return Manifest(table, root, class_names)


BUSI_MASK_PATTERN = re.compile(r"_mask(_\d+)?$")


def busi_manifest(root: str | Path = BUSI_ROOT, classes: list[str] | None = None) -> Manifest:
    """The BUSI layout: ``root/<class>/<name>.png`` with ``<name>_mask.png`` (+ ``_mask_1``, ...).

    Several mask files of one image are listed together in ``mask_path`` (joined by ``;``) and
    merged at read time (:func:`~skintumor.data.images.read_mask` takes their union), so nothing is
    written anywhere. An image without any mask keeps an empty ``mask_path`` (the data check lists
    it); a mask without its image is reported by a warning. BUSI has no patient ids: every image is
    its own patient, and duplicate grouping (:mod:`skintumor.data.dedup`) joins near-identical ones.
    """
    if not Path(root).expanduser().is_dir():
        raise DataError(
            f"{root}: BUSI folder not found (a relative root starts at the directory you run from, "
            "normally the repo root; set data.root=DIR)"
        )
    root, class_dirs = _class_dirs(root, classes)
    rows, orphans = [], []
    for class_dir in class_dirs:
        files = _files(class_dir, lambda p: p.suffix.lower() in IMAGE_SUFFIXES)
        masks: dict[tuple[Path, str], list[tuple[int, Path]]] = {}
        for p in files:
            match = BUSI_MASK_PATTERN.search(p.stem)
            if match:
                part = int(match.group(1)[1:]) if match.group(1) else 0
                masks.setdefault((p.parent, p.stem[: match.start()]), []).append((part, p))
        images = [p for p in files if not BUSI_MASK_PATTERN.search(p.stem)]
        if not images:
            raise DataError(f"{class_dir}: class folder has no images (expected <name>.png beside <name>_mask.png)")
        for p in images:
            parts = [m for _, m in sorted(masks.pop((p.parent, p.stem), []))]
            rows.append(
                {
                    "path": p.relative_to(root).as_posix(),
                    "label": class_dir.name,
                    "mask_path": MASK_SEPARATOR.join(m.relative_to(root).as_posix() for m in parts),
                    "n_masks": len(parts),
                }
            )
        orphans += [m for parts in masks.values() for _, m in parts]
    if orphans:
        warnings.warn(f"{root}: {len(orphans)} mask file(s) without their image (e.g. {orphans[0]})", stacklevel=2)
    table = pd.DataFrame(rows)
    table["patient_id"] = ["img:" + p for p in table["path"]]
    return Manifest(table, root, [d.name for d in class_dirs])


def _phantom(root="outputs/phantom", **options) -> Manifest:
    from skintumor.data.phantom import phantom_manifest  # imported on use: keeps `import sources` light

    _check_options("phantom", phantom_manifest, {"root": root} | options)
    return phantom_manifest(root, **options)


SOURCES: dict[str, Callable[..., Manifest]] = {
    "folder": folder_manifest,
    "csv": csv_manifest,
    "phantom": _phantom,
    "dicom": dicom_manifest,
    "busi": busi_manifest,
}


# What each source cannot do without, as the line that says which setting to give (Hydra's names).
REQUIRED = {
    "folder": (("root",), "data=folder needs data.root=DIR (a folder with one sub-folder of images per class)"),
    "csv": (("manifest",), "data=csv needs data.options.manifest=FILE.csv (columns path, label, patient_id)"),
    "dicom": (
        ("root", "manifest"),
        "data=dicom needs data.root=DIR (one sub-folder of DICOM files per class) or data.options.manifest=FILE.csv",
    ),
}


def load_source(name: str, **options) -> Manifest:
    """Build the manifest of source ``name`` (see :data:`SOURCES`); options are that source's arguments."""
    given = {k: v for k, v in options.items() if v is not None}
    check_source_settings(name, given.get("root"), {k: v for k, v in given.items() if k != "root"})
    return SOURCES[name](**given)


def check_source_settings(name: str | None, root, options: dict) -> None:
    """ConfigError for a source that does not exist, an option it does not take, or a setting it cannot
    do without (e.g. ``data=folder`` without ``data.root``): before anything is read."""
    if name not in SOURCES:
        raise ConfigError(f"data.source={name!r}: unknown data source (known: {', '.join(sorted(SOURCES))})")
    given = {k: v for k, v in options.items() if v is not None} | ({"root": root} if root is not None else {})
    _check_options(name, SOURCES[name], given)
    needed, line = REQUIRED.get(name, ((), ""))
    if needed and not any(given.get(key) not in (None, "") for key in needed):
        raise ConfigError(line)


def _check_options(name: str, source: Callable, given: dict) -> None:
    """A ConfigError naming the unknown ``data.options`` keys, not a TypeError from deep inside."""
    parameters = inspect.signature(source).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return  # passes them on; the callee checks
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        raise ConfigError(
            f"data source {name!r} has no option {', '.join(unknown)} (it takes: {', '.join(parameters)})"
        )
