"""The manifest: one row per image, the contract every data source produces.

Columns (in this order, then any source-specific extras such as phantom findings):

    path        image path relative to ``root`` (absolute paths are refused when written)
    label       class name
    patient_id  patient identifier; images without one get a unique id of their own
    group_id    the unit folds never split: the patient, or a user's group of whole patients,
                joined with near-duplicate groups (groups that share a patient are joined)
    mask_path   lesion mask relative to ``root``, or several joined by ``;`` (the mask is their
                union, e.g. BUSI's ``_mask_1`` files), or empty

The manifest is plain pandas + pathlib so it can be used from a notebook.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from skintumor.errors import DataError

REQUIRED_COLUMNS = ("path", "label", "patient_id")
CORE_COLUMNS = ("path", "label", "patient_id", "group_id", "mask_path")
MASK_SEPARATOR = ";"


@dataclass
class Manifest:
    """A validated table of images plus the folder its relative paths start from.

    Attributes:
        table: DataFrame with :data:`CORE_COLUMNS` first, then extra columns.
        root: folder the ``path`` and ``mask_path`` columns are relative to.
        classes: class names in label-index order (index ``i`` is logit ``i``).
    """

    table: pd.DataFrame
    root: Path
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.table = _normalise(self.table, self.root, what=str(self.root))
        found = sorted(self.table["label"].unique())
        if not self.classes:
            self.classes = found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            row = self.table[self.table["label"].isin(unknown)].iloc[0]
            raise DataError(f"{row['path']}: unknown class {row['label']!r} (known: {', '.join(self.classes)})")

    def __len__(self) -> int:
        return len(self.table)

    @property
    def labels(self) -> list[int]:
        """Class index of every row."""
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[x] for x in self.table["label"]]

    @property
    def groups(self) -> list[str]:
        return list(self.table["group_id"])

    def image_path(self, i: int) -> Path:
        return self.root / self.table["path"].iloc[i]

    def mask_path(self, i: int) -> Path | list[Path] | None:
        """Row ``i``'s mask file, a list when it has several (their union is the mask), or None.

        Either form can be passed to :func:`skintumor.data.images.read_mask`.
        """
        paths = self.mask_paths(i)
        return None if not paths else paths[0] if len(paths) == 1 else paths

    def mask_paths(self, i: int) -> list[Path]:
        """Row ``i``'s mask files (empty list when it has no mask)."""
        value = self.table["mask_path"].iloc[i]
        return [self.root / part for part in value.split(MASK_SEPARATOR)] if value else []

    def subset(self, indices) -> Manifest:
        return Manifest(self.table.iloc[list(indices)].reset_index(drop=True), self.root, list(self.classes))

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV (paths stay relative to ``root``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path, index=False)
        return path

    @classmethod
    def from_csv(
        cls, csv_path: str | Path, root: str | Path | None = None, classes: list[str] | None = None
    ) -> Manifest:
        """Read a manifest CSV; relative paths resolve against ``root`` (default: the CSV's folder)."""
        csv_path = Path(csv_path).expanduser()
        table = read_user_csv(csv_path, "manifest CSV")
        root = Path(root).expanduser() if root is not None else csv_path.parent
        table = _normalise(table, root, what=str(csv_path))
        return cls(table, root, list(classes or []))


def read_user_csv(csv_path: str | Path, what: str = "CSV", dtype=str) -> pd.DataFrame:
    """Read a user's CSV (``~`` expanded) with empty cells as "";
    a missing or unreadable file is a :class:`DataError`."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: {what} not found")
    try:
        return pd.read_csv(csv_path, dtype=dtype, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable CSV ({str(err).splitlines()[0]})") from None


def _normalise(table: pd.DataFrame, root: Path, what: str) -> pd.DataFrame:
    """Check required columns, fill optional ones, put the core columns first."""
    table = table.copy()
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if "patient_id" in missing:  # a manifest without patients: each image is its own patient
        missing.remove("patient_id")
        if "path" in table.columns:
            warnings.warn(f"{what}: no patient_id column; every image is treated as its own patient", stacklevel=3)
            table["patient_id"] = ["img:" + str(p) for p in table["path"]]
    if missing:
        raise DataError(
            f"{what}: manifest is missing column(s) {', '.join(missing)} (has: {', '.join(map(str, table.columns))})"
        )
    if table.empty:
        raise DataError(f"{what}: manifest has no rows")
    for col in CORE_COLUMNS:
        if col not in table.columns:
            table[col] = ""
        table[col] = table[col].fillna("").astype(str)
    table.loc[table["group_id"] == "", "group_id"] = table["patient_id"]
    table["group_id"] = _whole_patient_groups(table, what)
    blank = table[(table["path"] == "") | (table["label"] == "") | (table["patient_id"] == "")]
    if len(blank):
        raise DataError(f"{what}: row {blank.index[0] + 2} has an empty path, label or patient_id")
    table["path"] = [_relative_inside(root, v, "path", what) for v in table["path"]]
    table["mask_path"] = [
        MASK_SEPARATOR.join(_relative_inside(root, part.strip(), "mask_path", what) for part in v.split(MASK_SEPARATOR))
        if v
        else v
        for v in table["mask_path"]
    ]
    extras = [c for c in table.columns if c not in CORE_COLUMNS]
    return table[list(CORE_COLUMNS) + extras].reset_index(drop=True)


def linked_rows(n: int, keys: Sequence[Sequence] = (), i: Sequence[int] = (), j: Sequence[int] = ()) -> np.ndarray:
    """Component label per row (n,): rows that share a value of any of ``keys`` (columns of n
    values), or are a pair (``i[k]``, ``j[k]``), end up in one component, transitively."""
    rows_i, rows_j = [np.asarray(i, dtype=int)], [np.asarray(j, dtype=int)]
    for key in keys:  # consecutive rows of one value link them all
        codes = pd.factorize(pd.Series(key))[0]
        order = np.argsort(codes, kind="stable")
        same = codes[order[1:]] == codes[order[:-1]]
        rows_i.append(order[:-1][same])
        rows_j.append(order[1:][same])
    a, b = np.concatenate(rows_i), np.concatenate(rows_j)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _whole_patient_groups(table: pd.DataFrame, what: str) -> pd.Series:
    """``group_id`` with groups that share a patient joined (named by the smallest of their ids).

    Folds keep groups whole; a patient filed under two groups (e.g. one group per lesion) would
    otherwise put one patient's images on both sides of a split. Warns when it joins anything.
    """
    per_patient = table.groupby("patient_id")["group_id"].nunique()
    straddling = per_patient[per_patient > 1]
    if straddling.empty:
        return table["group_id"]
    component = linked_rows(len(table), keys=(table["patient_id"], table["group_id"]))
    joined = table["group_id"].groupby(component).transform("min")
    example = straddling.index[0]
    groups = sorted(set(table.loc[table["patient_id"] == example, "group_id"]))
    warnings.warn(
        f"{what}: {len(straddling)} patient(s) have images in more than one group_id (e.g. {example}: "
        f"{', '.join(groups[:3])}); those groups were joined so that no patient straddles a split",
        stacklevel=4,
    )
    return joined


def _relative_inside(root: Path, value: str, col: str, what: str) -> str:
    """``value`` as a path relative to ``root``; refuses paths that leave the root (``../x``)."""
    # normpath, not resolve(): symlinks inside the root may point anywhere and are fine
    root_abs = os.path.abspath(root)
    target = os.path.normpath(os.path.join(root_abs, value))  # an absolute value stays absolute
    if os.path.commonpath([root_abs, target]) != root_abs or target == root_abs:
        raise DataError(f"{what}: {col} {value!r} points outside the data root {root}")
    return Path(os.path.relpath(target, root_abs)).as_posix()


def warn_mixed_label_patients(manifest: Manifest) -> list[str]:
    """Warn about patients whose images carry different labels; folds still keep them whole."""
    counts = manifest.table.groupby("patient_id")["label"].nunique()
    mixed = sorted(counts[counts > 1].index)
    if mixed:
        shown = ", ".join(mixed[:5]) + (" ..." if len(mixed) > 5 else "")
        warnings.warn(
            f"{len(mixed)} patient(s) have images of more than one class ({shown}); each stays whole inside one fold",
            stacklevel=2,
        )
    return mixed
