"""Exact and near-duplicate images, duplicate groups for the folds, and label conflicts.

Every image gets two perceptual hashes (imagehash's 64-bit pHash and dHash) of its scan area.
Two images are near-duplicates when the Hamming distances of both hashes add up to at most
``max_distance`` (0..128): pHash alone ignores small shifts, rescaling and JPEG re-encoding but
confuses different scans with similar overall layout; dHash (gradient signs) separates those, so
the sum keeps true copies close and different lesions far.

The default 32 was measured on BUSI (780 images; ``python -m benchmarks.dedup_threshold``,
docs/results.md): below 32 frames of one lesion (same place and outline in their masks) at
distances 25-32 can land in different folds; at 32 every such pair up to 32 shares a group while
the largest group stays at 7 images, as at 24. Above it unrelated scans start to chain into one
group (largest group 11 at 34, 70 at 36, 263 at 38). The price: some different lesions of similar
layout are joined (a coarser split, not a leak).

Near-duplicates and images of one patient are joined into one group (connected components of
"same patient" and "near-duplicate" edges); the manifest's ``group_id`` is that group, so
:class:`~skintumor.data.folds.PatientGroupedFolds` never puts copies of one lesion on both sides
of a split, even when patient ids are missing or wrong. A near-duplicate pair filed under two
labels is a *label conflict*: kept (in one group) or excluded, by choice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from skintumor.data.images import read_greyscale
from skintumor.data.manifest import Manifest, linked_rows
from skintumor.data.scan_area import crop_scan_area
from skintumor.errors import DataError

DEFAULT_MAX_DISTANCE = 32  # measured: benchmarks/dedup_threshold.py (docs/results.md)
HASH_SIDE = 128  # images are shrunk to this longer side before hashing
LABEL_CONFLICT_RULES = ("keep", "exclude")


@dataclass
class DuplicateReport:
    """Near-duplicate pairs of a manifest's rows.

    Attributes:
        pairs: DataFrame ``i, j, distance`` (row indices, i < j; distance 0..128), sorted by distance.
        groups: row-index lists of every duplicate group with more than one image (pairs joined
            transitively), largest first.
        conflicts: the pairs whose two images carry different labels.
        max_distance: the threshold used.
        hashes: N x 2 uint64 array (pHash, dHash) per row, for reuse.
    """

    pairs: pd.DataFrame
    groups: list[list[int]]
    conflicts: pd.DataFrame
    max_distance: int
    hashes: np.ndarray = field(repr=False)

    @property
    def exact_pairs(self) -> pd.DataFrame:
        return self.pairs[self.pairs["distance"] == 0]

    @property
    def conflict_rows(self) -> list[int]:
        """Rows in any label-conflict pair (both sides: which label is right is unknown)."""
        return sorted(set(self.conflicts["i"]) | set(self.conflicts["j"]))

    def summary(self) -> str:
        n_images = sum(len(g) for g in self.groups)
        return (
            f"{len(self.pairs)} near-duplicate pair(s) ({len(self.exact_pairs)} exact) in {len(self.groups)} "
            f"group(s) of {n_images} images; {len(self.conflicts)} label conflict(s)"
        )


def image_hashes(images: Sequence[np.ndarray], scan_area: bool = True) -> np.ndarray:
    """(pHash, dHash) of each HxW uint8 image as an N x 2 uint64 array (of its scan area by default)."""
    result = np.zeros((len(images), 2), dtype=np.uint64)
    for k, image in enumerate(images):
        scale = HASH_SIDE / max(image.shape)
        if scale < 1:  # both hashes look at <= 32 px anyway; shrinking first makes hashing ~3x faster
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if scan_area:
            image = crop_scan_area(image)[0]
        pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        for c, fn in enumerate((imagehash.phash, imagehash.dhash)):
            result[k, c] = np.packbits(fn(pil).hash.ravel()).view(">u8")[0]
    return result


def hash_distances(hashes: np.ndarray, block: int = 1024) -> np.ndarray:
    """N x N summed Hamming distance of the hash columns (uint8, 0..64 per column)."""
    n = len(hashes)
    out = np.zeros((n, n), dtype=np.uint8)
    for start in range(0, n, block):  # blocks keep memory at block x N per hash
        part = hashes[start : start + block]
        dist = np.zeros((len(part), n), dtype=np.uint8)
        for c in range(hashes.shape[1]):
            dist += np.bitwise_count(part[:, None, c] ^ hashes[None, :, c]).astype(np.uint8)
        out[start : start + block] = dist
    return out


def find_duplicates(
    manifest: Manifest,
    images: Sequence[np.ndarray] | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    scan_area: bool = True,
    hashes: np.ndarray | None = None,
) -> DuplicateReport:
    """Find exact and near-duplicate rows of ``manifest``.

    Args:
        manifest: the rows to compare.
        images: HxW uint8 image per row, at any size (e.g. already decoded by the data module);
            read from disk when None.
        max_distance: largest summed pHash + dHash Hamming distance (0..128) that counts as a
            near-duplicate; 0 finds exact (perceptual) copies only.
        scan_area: hash each image's scan area (:func:`~skintumor.data.scan_area.find_scan_area`),
            so the same frame exported with and without scanner UI still matches.
        hashes: precomputed :func:`image_hashes` (N x 2) instead of ``images``.
    """
    if not 0 <= int(max_distance) <= 128:
        raise DataError(f"max_distance must be in 0..128, got {max_distance}")
    if hashes is None:
        if images is None:
            images = [read_greyscale(manifest.image_path(i)) for i in range(len(manifest))]
        hashes = image_hashes(images, scan_area=scan_area)
    if len(hashes) != len(manifest):
        raise ValueError(f"{len(hashes)} images for a manifest of {len(manifest)} rows")
    dist = hash_distances(hashes)
    i, j = np.nonzero(np.triu(dist <= max_distance, k=1))
    pairs = pd.DataFrame({"i": i, "j": j, "distance": dist[i, j].astype(int)})
    pairs = pairs.sort_values(["distance", "i", "j"], kind="stable").reset_index(drop=True)
    labels = manifest.table["label"].to_numpy()
    conflicts = pairs[labels[pairs["i"]] != labels[pairs["j"]]].reset_index(drop=True)
    component = linked_rows(len(manifest), i=pairs["i"], j=pairs["j"])
    members = pd.Series(range(len(manifest))).groupby(component).apply(list)
    groups = sorted((g for g in members if len(g) > 1), key=lambda g: (-len(g), g[0]))
    return DuplicateReport(pairs, groups, conflicts, int(max_distance), hashes)


def apply_duplicate_groups(manifest: Manifest, report: DuplicateReport, label_conflicts: str = "keep") -> Manifest:
    """A copy of ``manifest`` whose ``group_id`` joins groups (patients, or a user's groups of
    patients) linked by near-duplicates.

    A group linked to no other keeps its id; groups linked together are named
    ``dup:<smallest group id>``. ``label_conflicts``: ``"keep"`` leaves conflicting images in
    (their group keeps them in one fold; a warning counts them), ``"exclude"`` drops every image
    of a conflicting pair. The input manifest is not changed.
    """
    if label_conflicts not in LABEL_CONFLICT_RULES:
        raise DataError(f"label_conflicts must be one of {', '.join(LABEL_CONFLICT_RULES)}, got {label_conflicts!r}")
    if len(report.hashes) != len(manifest):
        raise ValueError("the duplicate report was made for a different manifest")
    table = manifest.table.copy()
    n = len(table)
    # rows of one group (a group holds whole patients) and every near-duplicate pair are linked
    component = linked_rows(n, keys=(table["group_id"],), i=report.pairs["i"], j=report.pairs["j"])
    groups = table.groupby(component)["group_id"].agg(lambda s: sorted(set(s)))
    names = {c: ids[0] if len(ids) == 1 else "dup:" + ids[0] for c, ids in groups.items()}
    table["group_id"] = [names[c] for c in component]
    if report.conflicts.empty:
        return Manifest(table, manifest.root, list(manifest.classes))
    rows = report.conflict_rows
    if label_conflicts == "exclude":
        keep = np.setdiff1d(np.arange(n), rows)
        table = table.iloc[keep].reset_index(drop=True)
        if table.empty:
            raise DataError(f"{manifest.root}: every image is in a label conflict; nothing left to train on")
    else:
        warnings.warn(
            f"{manifest.root}: {len(report.conflicts)} near-duplicate pair(s) carry different labels "
            f"({len(rows)} images, e.g. {table['path'].iloc[rows[0]]}); kept "
            "(set label_conflicts=exclude to drop them)",
            stacklevel=2,
        )
    return Manifest(table, manifest.root, list(manifest.classes))
