"""Data sources. Each turns what a user has on disk into a :class:`Manifest`.

``load_source(name, **options)`` is what the data module and the CLI call; new sources register in
:data:`SOURCES` with a function ``(root, **options) -> Manifest``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import pandas as pd

from skintumor.data.images import IMAGE_SUFFIXES
from skintumor.data.manifest import DataError, Manifest


def folder_manifest(root: str | Path, patients_csv: str | Path | None = None,
                    classes: list[str] | None = None) -> Manifest:
    """``root/<class>/*.{png,jpg,jpeg,bmp,tif,tiff}``; patient ids from an optional CSV.

    The CSV needs ``path`` (relative to root, or a bare file name if unique) and ``patient_id``.
    Without it each image is its own patient, which a warning says.
    """
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
    rows = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise DataError(f"{class_dir}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        rows += [{"path": p.relative_to(root).as_posix(), "label": class_dir.name} for p in files]
    table = pd.DataFrame(rows)
    if patients_csv is None:
        warnings.warn(f"{root}: no patients CSV given; every image is treated as its own patient "
                      "(near-duplicates of one lesion may then straddle folds)", stacklevel=2)
        table["patient_id"] = ["img:" + p for p in table["path"]]
    else:
        table["patient_id"] = _patient_ids(Path(patients_csv), table["path"])
    return Manifest(table, root, [d.name for d in class_dirs])


def _patient_ids(csv_path: Path, paths: pd.Series) -> list[str]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: patients CSV not found")
    try:
        ids = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in ("path", "patient_id") if c not in ids.columns]
    if missing:
        raise DataError(f"{csv_path}: patients CSV is missing column(s) {', '.join(missing)}")
    by_path = dict(zip(ids["path"], ids["patient_id"]))
    by_name = {Path(p).name: pid for p, pid in by_path.items()}
    result, unmatched = [], []
    for p in paths:
        pid = by_path.get(p) or by_name.get(Path(p).name)
        if not pid:
            unmatched.append(p)
            pid = "img:" + p
        result.append(pid)
    if unmatched:
        warnings.warn(f"{csv_path}: {len(unmatched)} image(s) have no patient id (e.g. {unmatched[0]}); "
                      "each is treated as its own patient", stacklevel=3)
    return result


def csv_manifest(root: str | Path | None = None, manifest: str | Path | None = None,
                 classes: list[str] | None = None) -> Manifest:
    """A user's CSV manifest (``path, label, patient_id[, mask_path, ...]``); extra columns are kept.

    ``root`` defaults to the CSV's folder; every file named must exist.
    """
    if manifest is None:
        raise DataError("csv source: set data.manifest=FILE.csv")
    result = Manifest.from_csv(manifest, root=root, classes=classes)
    for col in ("path", "mask_path"):
        for value in result.table[col]:
            if value and not (result.root / value).is_file():
                raise DataError(f"{manifest}: {col} {value!r} does not exist under {result.root}")
    return result


def _phantom(root="outputs/phantom", **options) -> Manifest:
    from skintumor.data.phantom import phantom_manifest  # imported on use: keeps `import sources` light

    return phantom_manifest(root, **options)


SOURCES: dict[str, Callable[..., Manifest]] = {
    "folder": folder_manifest,
    "csv": csv_manifest,
    "phantom": _phantom,
}


def load_source(name: str, **options) -> Manifest:
    """Build the manifest of source ``name`` (see :data:`SOURCES`); options are that source's arguments."""
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r} (known: {', '.join(sorted(SOURCES))})")
    return SOURCES[name](**{k: v for k, v in options.items() if v is not None})
