"""The data check: decode every image and mask once, list every problem, find duplicates.

Two entry points share it: ``python -m skintumor.data check SOURCE`` (prints the report) and
:func:`prepare_manifest`, which the data module calls before every training so a run never
starts on data the check would reject.

    manifest = load_source("busi")
    prepared = prepare_manifest(manifest, crop=False, dedup=True, max_distance=24,
                                label_conflicts="keep", transform=resize)  # DataError lists every bad file
    prepared.manifest   # group_id joins near-duplicates; conflicting rows dropped if "exclude"
    prepared.images     # HxW uint8 per row of prepared.manifest (cropped if crop, then transform)
    prepared.masks      # HxW bool per row, or None where the row has no mask
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from skintumor.data.dedup import (
    DEFAULT_MAX_DISTANCE,
    LABEL_CONFLICT_RULES,
    DuplicateReport,
    apply_duplicate_groups,
    find_duplicates,
    image_hashes,
)
from skintumor.data.images import read_greyscale, read_mask
from skintumor.data.manifest import Manifest
from skintumor.data.scan_area import crop_scan_area
from skintumor.errors import DataError

LARGE_PATIENT_SHARE = 0.2  # one patient id on more images than this share (and >= 10) smells of a blanked id


@dataclass
class CheckReport:
    """What the check found in one manifest.

    Attributes:
        manifest: the manifest checked (rows unchanged).
        classes: DataFrame ``class, images, patients, masks, empty_masks`` (one row per class).
        sizes: DataFrame ``height, width`` per row (NaN where the image could not be read).
        errors: one line per bad file, naming it (unreadable image, unreadable or mis-sized mask, an
            image listed in more than one row).
        problems: one line per problem of the data as a whole that stops training (fewer than two
            classes with images), naming the data's root.
        warnings: one line per suspicious finding that does not stop training.
        duplicates: near-duplicate report over the readable rows (row indices of ``manifest``),
            or None when dedup was off.
        seconds: wall time of the check.
    """

    manifest: Manifest
    classes: pd.DataFrame
    sizes: pd.DataFrame
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates: DuplicateReport | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems

    def raise_for_errors(self, shown: int = 5) -> None:
        """Raise one :class:`DataError` naming the bad files (the first ``shown``, then a count), or the
        first problem of the data as a whole."""
        if self.problems and not self.errors:
            raise DataError(self.problems[0])
        if self.errors:
            more = f"; and {len(self.errors) - shown} more" if len(self.errors) > shown else ""
            raise DataError(
                f"{self.manifest.root}: {len(self.errors)} bad file(s): "
                + "; ".join(self.errors[:shown])
                + more
                + f" (list them all: python -m skintumor.data check {self.manifest.root})"
            )


@dataclass
class PreparedData:
    """A checked manifest with its decoded images and masks (row ``i`` of each belongs together)."""

    manifest: Manifest
    images: list[np.ndarray]
    masks: list[np.ndarray | None]
    report: CheckReport


@dataclass
class Decoded:
    """Every row of a manifest decoded once.

    Attributes:
        images: HxW uint8 per row (after crop / transform), None where the image is unreadable.
        masks: HxW bool per row, None where the row has no mask or it is unreadable.
        sizes: the full-resolution (H, W) per row, None where unreadable.
        hashes: N x 2 uint64 perceptual hashes of the full-resolution images (0 where unreadable),
            or None when not asked for.
        errors: one line per bad file, naming it.
    """

    images: list[np.ndarray | None]
    masks: list[np.ndarray | None]
    sizes: list[tuple[int, int] | None]
    hashes: np.ndarray | None
    errors: list[str]


Transform = Callable[[np.ndarray, "np.ndarray | None"], tuple]  # (image, mask) -> (image, mask)


def decode_manifest(
    manifest: Manifest,
    hashes: bool = True,
    crop: bool = False,
    transform: Transform | None = None,
    progress: bool = False,
) -> Decoded:
    """Decode every image and mask of ``manifest``, collecting (not raising) errors.

    Each row is hashed at full resolution, then cropped to its scan area (``crop``), then passed
    through ``transform(image, mask) -> (image, mask)`` (e.g. the data module's resize), so only
    the final arrays stay in memory.
    """
    decoded = Decoded([], [], [], np.zeros((len(manifest), 2), np.uint64) if hashes else None, [])
    for i in _progress(range(len(manifest)), progress, "decoding images"):
        image = mask = None
        try:
            image = read_greyscale(manifest.image_path(i))
        except DataError as err:
            decoded.errors.append(str(err))
        mask_path = manifest.mask_path(i)
        if mask_path is not None:
            try:
                mask = read_mask(mask_path, shape=None if image is None else image.shape)
            except DataError as err:
                decoded.errors.append(str(err))
        decoded.sizes.append(None if image is None else image.shape)
        if image is not None:
            if hashes:
                decoded.hashes[i] = image_hashes([image])[0]
            if crop:
                image, mask, _ = crop_scan_area(image, mask)
            if transform is not None:
                image, mask = transform(image, mask)
        decoded.images.append(image)
        decoded.masks.append(mask)
    return decoded


def check_manifest(
    manifest: Manifest,
    decoded: Decoded | None = None,
    dedup: bool = True,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    progress: bool = False,
) -> CheckReport:
    """Check every row of ``manifest``; bad files are listed in the report, not raised.

    Args:
        manifest: rows to check.
        decoded: the rows already decoded by :func:`decode_manifest` (decoded here when None).
        dedup: look for near-duplicates and label conflicts.
        max_distance: near-duplicate threshold (see :mod:`skintumor.data.dedup`).
    """
    start = time.perf_counter()
    if decoded is None:
        decoded = decode_manifest(manifest, hashes=dedup, progress=progress)
    table = manifest.table
    readable = [i for i, size in enumerate(decoded.sizes) if size is not None]
    sizes = pd.DataFrame([size or (np.nan, np.nan) for size in decoded.sizes], columns=["height", "width"])
    has_mask = table["mask_path"] != ""
    empty = pd.Series([m is not None and not m.any() for m in decoded.masks], index=table.index)
    classes = pd.DataFrame(
        {
            "class": manifest.classes,
            "images": [int((table["label"] == c).sum()) for c in manifest.classes],
            "patients": [table.loc[table["label"] == c, "patient_id"].nunique() for c in manifest.classes],
            "masks": [int(has_mask[table["label"] == c].sum()) for c in manifest.classes],
            "empty_masks": [int(empty[table["label"] == c].sum()) for c in manifest.classes],
        }
    )
    errors = list(decoded.errors) + _repeated_rows(manifest)
    report = CheckReport(manifest, classes, sizes, errors, _warnings(manifest, classes, has_mask))
    with_images = classes.loc[classes["images"] > 0, "class"].tolist()
    if len(with_images) < 2:
        report.problems.append(
            f"{manifest.root}: every image is of class {', '.join(with_images)}; a classifier needs images of "
            "at least two classes (class folders: one sub-folder per class; a CSV: its label column)"
        )
    if dedup and decoded.hashes is not None and len(readable) > 1:
        found = find_duplicates(manifest.subset(readable), hashes=decoded.hashes[readable], max_distance=max_distance)
        report.duplicates = _reindex(found, np.asarray(readable), len(manifest))
        if not found.conflicts.empty:
            report.warnings.append(
                f"{len(found.conflicts)} near-duplicate pair(s) carry different labels (label conflicts; see the table)"
            )
    report.seconds = time.perf_counter() - start
    return report


def _repeated_rows(manifest: Manifest) -> list[str]:
    """One error per image listed in more than one row, naming the file and the rows (numbered as in
    a spreadsheet of the CSV: the header is row 1): an image is one row, or the copies would be
    trained on twice, and could sit on both sides of a split under two patient ids."""
    table = manifest.table
    repeated = table[table["path"].duplicated(keep=False)]
    found = []
    for path, rows in repeated.groupby("path", sort=False):
        shown = [str(i + 2) for i in rows.index[:5]]
        numbers = ", ".join(shown[:-1]) + " and " + shown[-1] + (" ..." if len(rows) > 5 else "")
        differ = [c for c in rows.columns if rows[c].nunique() > 1]
        how = f"with different {', '.join(differ)}" if differ else "identical"
        found.append(
            f"{manifest.root / path}: listed in {len(rows)} rows of the manifest ({how}: rows {numbers}, the header "
            "being row 1); an image has one row (several masks: join them with ';' in mask_path)"
        )
    return found


def _warnings(manifest: Manifest, classes: pd.DataFrame, has_mask: pd.Series) -> list[str]:
    table, found = manifest.table, []
    for row in classes.itertuples():
        if row.images == 0:
            found.append(f"class {row[1]!r} has no images")
    if has_mask.any() and not has_mask.all():
        missing = table.loc[~has_mask, "path"].tolist()
        found.append(
            f"{len(missing)} image(s) have no mask while others do: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    counts = table["patient_id"].value_counts()
    if counts.iloc[0] >= 10 and counts.iloc[0] > LARGE_PATIENT_SHARE * len(table):
        found.append(
            f"patient {counts.index[0]!r} has {counts.iloc[0]} of {len(table)} images; "
            "was the patient id blanked by an anonymiser?"
        )
    mixed = table.groupby("patient_id")["label"].nunique()
    if (mixed > 1).any():
        found.append(
            f"{int((mixed > 1).sum())} patient(s) have images of more than one class "
            f"(e.g. {mixed[mixed > 1].index[0]}); each stays whole inside one fold"
        )
    if table["patient_id"].str.startswith("img:").all():
        found.append(
            "no patient ids: every image is its own patient; only duplicate grouping (dedup) "
            "keeps near-identical images of one lesion out of both train and test"
        )
    return found


def _reindex(report: DuplicateReport, rows: np.ndarray, n: int) -> DuplicateReport:
    """Map a report made on a subset (rows[k] is subset row k) back to the full manifest's rows."""

    def remap(pairs: pd.DataFrame) -> pd.DataFrame:
        return pairs.assign(i=rows[pairs["i"].to_numpy(dtype=int)], j=rows[pairs["j"].to_numpy(dtype=int)])

    hashes = np.zeros((n, report.hashes.shape[1]), dtype=report.hashes.dtype)
    hashes[rows] = report.hashes
    return DuplicateReport(
        remap(report.pairs),
        [rows[g].tolist() for g in report.groups],
        remap(report.conflicts),
        report.max_distance,
        hashes,
    )


def prepare_manifest(
    manifest: Manifest,
    crop: bool = False,
    dedup: bool = True,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    label_conflicts: str = "keep",
    transform: Transform | None = None,
    progress: bool = False,
) -> PreparedData:
    """Decode, check and group ``manifest`` for training; :class:`DataError` if any file is bad.

    Args:
        crop: crop every image and its mask to the scan area (:mod:`skintumor.data.scan_area`).
        dedup: join near-duplicates into one ``group_id`` (and apply ``label_conflicts``).
        max_distance: near-duplicate threshold, 0..128 (see :mod:`skintumor.data.dedup`).
        label_conflicts: ``"keep"`` or ``"exclude"`` near-duplicates filed under different labels.
        transform: ``(image, mask) -> (image, mask)`` applied to every row after the crop
            (the data module's resize); images stay full size when None.

    Returns images (HxW uint8) and masks (HxW bool or None) aligned with the returned manifest.
    """
    if label_conflicts not in LABEL_CONFLICT_RULES:
        raise DataError(f"label_conflicts must be one of {', '.join(LABEL_CONFLICT_RULES)}, got {label_conflicts!r}")
    decoded = decode_manifest(manifest, hashes=dedup, crop=crop, transform=transform, progress=progress)
    report = check_manifest(manifest, decoded, dedup=dedup, max_distance=max_distance)
    report.raise_for_errors()
    for line in report.warnings:  # what the check command would print, in the training log
        warnings.warn(f"{manifest.root}: {line}", stacklevel=2)
    rows = np.arange(len(manifest))
    if report.duplicates is not None:
        with warnings.catch_warnings():  # label conflicts were just reported
            warnings.simplefilter("ignore")
            grouped = apply_duplicate_groups(manifest, report.duplicates, label_conflicts)
        if label_conflicts == "exclude" and report.duplicates.conflict_rows:
            warnings.warn(
                f"{manifest.root}: excluded {len(report.duplicates.conflict_rows)} image(s) "
                "in label conflicts (label_conflicts=exclude)",
                stacklevel=2,
            )
        if label_conflicts == "exclude":
            rows = np.setdiff1d(rows, report.duplicates.conflict_rows)
        manifest = grouped
    return PreparedData(manifest, [decoded.images[i] for i in rows], [decoded.masks[i] for i in rows], report)


def _progress(items, enabled: bool, description: str):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


def load_and_check(
    source: str, dedup: bool = True, max_distance: int = DEFAULT_MAX_DISTANCE, progress: bool = False, **options
) -> CheckReport:
    """Build source ``source``'s manifest (sources' warnings become report warnings) and check it."""
    from skintumor.data.sources import load_source

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = load_source(source, **options)
    report = check_manifest(manifest, dedup=dedup, max_distance=max_distance, progress=progress)
    report.warnings = [str(w.message) for w in caught] + report.warnings
    return report
