"""Which near-duplicate threshold keeps BUSI's same-lesion pairs inside one fold, and what it costs.

    python -m benchmarks.dedup_threshold [--data ../shared/data/busi] [--thresholds 16 32 1]
                                         [--seeds 1000 0] [--n-folds 5] [--quick] [--out DIR]

For each ``data.max_distance`` from 16 to 32 the images are grouped as training groups them
(:func:`~skintumor.data.check.decode_manifest` hashes every image at full resolution,
:func:`~skintumor.data.check.check_manifest` finds the near-duplicates,
:func:`~skintumor.data.dedup.apply_duplicate_groups` joins them, ``label_conflicts=keep``), the
outer folds are drawn as training draws them (:class:`~skintumor.data.folds.PatientGroupedFolds`,
``data.n_folds`` 5, ``data.val_fraction`` 0.2, for each ``data.seed`` given), and the benchmark
counts the *same-lesion* pairs whose two images land in different outer folds (a leak: one lesion
in training and in the test fold). The other side of the trade-off is reported beside it: how many
groups there are, the largest one, and how many joined pairs the masks do not call one lesion.

"Same lesion", read off the radiologists' outlines (the reference; the masks are not used by the
grouping itself): two images of one class whose summed pHash + dHash distance is at most 40 (the
candidates; beyond 40 pairs are different scans), both with a non-empty mask, whose lesion masks,
each scaled with its image to a 256 px longer side,

- overlap with IoU >= 0.6 once their centroids are laid on each other (same size and shape), and
- have centroids at most 0.1 of the longer side (25.6 px) apart (same place in the frame).

Both parts matter: BUSI's oval benign lesions match in shape across patients, and frames of one
sweep keep the lesion where it was. Checked by eye (2026-12-05, ``pairs.csv``): of the 18 pairs
flagged at distances 25-32, 15 are clearly one lesion (frames of one sweep), 2 probably, 1 unclear;
of 24 flagged pairs drawn at 33-40 about half are different malignant lesions of similar shape. So
the table counts split pairs up to the largest threshold tried (pairs a threshold can join directly)
and up to 40 separately. The reference misses one lesion seen at two zoom levels (its IoU drops),
and ``normal`` images have empty masks: their pairs are left out of it.

Writes ``OUT/dedup_threshold.json`` and, under ``OUT/dedup_threshold/``, ``table.md`` (the
table) and ``pairs.csv`` (every candidate pair with its distance, IoU, centroid offset and verdict,
for a visual check). ``--quick``: a tiny synthetic BUSI-layout set (two lesion classes with
outlined lesions seen in two or three shifted frames, and empty-mask normals) in a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from rich.table import Table

from benchmarks import common
from skintumor.data.check import Decoded, check_manifest, decode_manifest
from skintumor.data.dedup import DEFAULT_MAX_DISTANCE, apply_duplicate_groups, hash_distances
from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.manifest import Manifest
from skintumor.data.sources import busi_manifest
from skintumor.errors import DataError

CANDIDATE_DISTANCE = 40  # candidate pairs: one class, image hash distance <= this
MASK_SIDE = 256  # masks are compared at their image's longer side scaled to this
IOU_CUT = 0.6  # centroid-aligned lesion IoU of one lesion
OFFSET_CUT = 0.1  # centroid distance of one lesion, as a share of the longer side
VAL_FRACTION = 0.2  # data.val_fraction's default (the outer folds do not depend on it)


# ---------------------------------------------------------------- the reference


def _scaled_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` resized (nearest) so that its longer side is MASK_SIDE px."""
    scale = MASK_SIDE / max(mask.shape)
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def _aligned_iou(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(IoU with the centroids laid on each other, centroid distance in px) of two non-empty masks."""
    points = [np.argwhere(m) for m in (a, b)]
    centres = [p.mean(axis=0) for p in points]
    side = 2 * MASK_SIDE + 2
    canvases = []
    for p, c in zip(points, centres):
        canvas = np.zeros((side, side), dtype=bool)
        shifted = np.rint(p - c + MASK_SIDE).astype(int)
        canvas[shifted[:, 0], shifted[:, 1]] = True
        canvases.append(canvas)
    inter = np.count_nonzero(canvases[0] & canvases[1])
    union = np.count_nonzero(canvases[0] | canvases[1])
    return inter / union, float(np.linalg.norm(centres[0] - centres[1]))


def reference_pairs(manifest: Manifest, decoded: Decoded) -> pd.DataFrame:
    """Every candidate pair (one class, hash distance <= CANDIDATE_DISTANCE) as a DataFrame
    ``i, j, distance, path_i, path_j, iou, offset, same`` (iou / offset NaN without two masks)."""
    dist = hash_distances(decoded.hashes)
    labels = np.asarray(manifest.labels)
    readable = np.array([s is not None for s in decoded.sizes])
    close = np.triu(dist <= CANDIDATE_DISTANCE, k=1) & (labels[:, None] == labels[None, :])
    close &= readable[:, None] & readable[None, :]
    i, j = np.nonzero(close)
    masks = [
        _scaled_mask(m) if m is not None and m.any() and s is not None else None
        for m, s in zip(decoded.masks, decoded.sizes)
    ]
    iou, offset = np.full(len(i), np.nan), np.full(len(i), np.nan)
    for k, (a, b) in enumerate(zip(i, j)):
        if masks[a] is not None and masks[b] is not None:
            iou[k], offset[k] = _aligned_iou(masks[a], masks[b])
    paths = manifest.table["path"].to_numpy()
    pairs = pd.DataFrame(
        {
            "i": i,
            "j": j,
            "distance": dist[i, j].astype(int),
            "path_i": paths[i],
            "path_j": paths[j],
            "iou": iou.round(3),
            "offset": (offset / MASK_SIDE).round(3),
        }
    )
    pairs["same"] = (pairs["iou"] >= IOU_CUT) & (pairs["offset"] <= OFFSET_CUT)
    return pairs.sort_values(["distance", "i", "j"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- grouping and folds as training does


def grouped_at(manifest: Manifest, decoded: Decoded, max_distance: int) -> tuple[Manifest, int, int]:
    """(manifest with training's duplicate groups at ``max_distance``, near-duplicate pairs, label
    conflicts): the data check's path (prepare_manifest), on images decoded once."""
    report = check_manifest(manifest, decoded, dedup=True, max_distance=max_distance)
    with warnings.catch_warnings():  # label conflicts are counted, not warned about
        warnings.simplefilter("ignore")
        grouped = apply_duplicate_groups(manifest, report.duplicates, "keep")
    return grouped, len(report.duplicates.pairs), len(report.duplicates.conflicts)


def outer_folds(manifest: Manifest, n_folds: int, seed: int) -> np.ndarray:
    """The outer test fold of every row, as training draws the folds for ``data.seed=seed``."""
    folds = PatientGroupedFolds(manifest.labels, manifest.groups, n_folds, VAL_FRACTION, seed, classes=manifest.classes)
    fold_of = np.full(len(manifest), -1)
    for k in range(n_folds):
        fold_of[folds.test_indices(k)] = k
    return fold_of


def measure(
    manifest: Manifest, decoded: Decoded, pairs: pd.DataFrame, thresholds: Sequence[int], seeds: Sequence[int], n_folds
) -> list[dict]:
    """One row per threshold: groups, the largest, joined pairs the masks disagree with, and per seed
    the same-lesion pairs split across outer folds (up to the largest threshold, and all)."""
    same = pairs[pairs["same"]]
    near = same["distance"] <= max(thresholds)
    judged = pairs[pairs["iou"].notna()]
    rows = []
    for t in thresholds:
        grouped, n_pairs, n_conflicts = grouped_at(manifest, decoded, t)
        groups = grouped.table["group_id"].to_numpy()
        sizes = pd.Series(groups).value_counts()
        apart = groups[same["i"]] != groups[same["j"]]
        joined = judged[judged["distance"] <= t]
        row = {
            "max_distance": t,
            "near_duplicate_pairs": n_pairs,
            "label_conflicts": n_conflicts,
            "groups": int(len(sizes)),
            "largest_group": int(sizes.iloc[0]),
            "images_in_shared_groups": int(sizes[sizes > 1].sum()),
            "same_lesion_in_two_groups": int(apart[near.to_numpy()].sum()),
            "same_lesion_in_two_groups_all": int(apart.sum()),
            "joined_not_same_lesion": int((~joined["same"]).sum()),
            "split": {},
        }
        for seed in seeds:
            try:
                fold = outer_folds(grouped, n_folds, seed)
            except DataError as err:  # too few groups left for the folds: training would stop too
                row["split"][str(seed)] = {"upto_max_threshold": None, "all": None, "pairs": [], "error": str(err)}
                continue
            split = fold[same["i"]] != fold[same["j"]]
            row["split"][str(seed)] = {
                "upto_max_threshold": int(split[near.to_numpy()].sum()),
                "all": int(split.sum()),
                "pairs": [
                    f"{a} | {b} ({d})"
                    for a, b, d in same.loc[split & near.to_numpy(), ["path_i", "path_j", "distance"]].itertuples(
                        index=False
                    )
                ],
            }
        rows.append(row)
    return rows


# ---------------------------------------------------------------- output


def _split_cell(row: dict, seed: int) -> str:
    split = row["split"][str(seed)]
    return "no folds" if split["all"] is None else f"{split['upto_max_threshold']} / {split['all']}"


def markdown(rows: list[dict], seeds: Sequence[int], reference: dict) -> str:
    top = max(r["max_distance"] for r in rows)
    head = [
        "max_distance",
        "pairs",
        "groups",
        "largest group",
        "images in shared groups",
        f"same-lesion pairs (<= {top}) in two groups",
        *[f"split, seed {s} (<= {top} / all)" for s in seeds],
        "joined pairs not same-lesion",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["max_distance"],
            r["near_duplicate_pairs"],
            r["groups"],
            r["largest_group"],
            r["images_in_shared_groups"],
            f"{r['same_lesion_in_two_groups']} ({r['same_lesion_in_two_groups_all']} of all)",
            *[_split_cell(r, s) for s in seeds],
            r["joined_not_same_lesion"],
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("")
    lines.append(
        f"Reference: {reference['same_lesion_pairs']} same-lesion pairs among {reference['candidate_pairs']} "
        f"candidate pairs ({reference['judged_pairs']} with two masks), {reference['same_lesion_upto_max_threshold']} "
        f"of them at distance <= {top}."
    )
    return "\n".join(lines) + "\n"


def rich_table(rows: list[dict], seeds: Sequence[int]) -> Table:
    table = Table(title="near-duplicate threshold: same-lesion pairs split across outer folds")
    for name in ("max_distance", "pairs", "groups", "largest", "same lesion, 2 groups"):
        table.add_column(name, justify="right")
    for s in seeds:
        table.add_column(f"split seed {s}", justify="right")
    table.add_column("joined, not same", justify="right")
    for r in rows:
        table.add_row(
            str(r["max_distance"]),
            str(r["near_duplicate_pairs"]),
            str(r["groups"]),
            str(r["largest_group"]),
            f"{r['same_lesion_in_two_groups']} ({r['same_lesion_in_two_groups_all']})",
            *[_split_cell(r, s) for s in seeds],
            str(r["joined_not_same_lesion"]),
        )
    return table


# ---------------------------------------------------------------- the quick set


def synthetic_busi(root: Path, seed: int = 0) -> Path:
    """A tiny BUSI-layout folder: per lesion class 8 lesions, each in 2-3 frames shifted by a few px
    (with fresh noise), one mask per frame; 6 normal images with empty masks. About 50 PNGs of 96 x 128."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:128]

    def tissue() -> np.ndarray:
        base = cv2.GaussianBlur(rng.random((96, 128)).astype(np.float32), (0, 0), 6)
        return (base - base.min()) / (np.ptp(base) + 1e-6)

    def save(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        Image.fromarray((mask * 255).astype(np.uint8)).save(path.with_name(path.stem + "_mask.png"))

    for cls in ("benign", "malignant"):
        n = 0
        for _ in range(8):
            base = tissue()
            cy, cx, ry, rx = rng.uniform(30, 60), rng.uniform(40, 90), rng.uniform(8, 20), rng.uniform(10, 25)
            for _ in range(int(rng.integers(2, 4))):
                dy, dx = rng.integers(-3, 4, size=2)
                mask = ((yy - cy - dy) / ry) ** 2 + ((xx - cx - dx) / rx) ** 2 < 1
                noise = rng.normal(0, 0.03, base.shape)
                image = np.clip(255 * (base * np.where(mask, 0.3, 1.0) + noise), 0, 255).astype(np.uint8)
                n += 1
                save(root / cls / f"{cls} ({n}).png", image, mask)
    for n in range(1, 7):
        save(root / "normal" / f"normal ({n}).png", (255 * tissue()).astype(np.uint8), np.zeros((96, 128), bool))
    return root


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("dedup_threshold", __doc__)
    p.add_argument("--data", type=Path, default=Path("../shared/data/busi"), help="the BUSI folder")
    p.add_argument(
        "--thresholds",
        type=int,
        nargs=3,
        default=(16, 32, 1),
        metavar=("FIRST", "LAST", "STEP"),
        help="data.max_distance values tried: FIRST..LAST (inclusive) by STEP",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1000, 0], help="data.seed values of the folds")
    p.add_argument("--n-folds", type=int, default=5, help="data.n_folds")
    run = common.begin("dedup_threshold", p, argv)
    args = run.args
    first, last, step = args.thresholds
    thresholds = list(range(first, last + 1, step))
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.data = synthetic_busi(Path(tmp) / "busi")
        elif not args.data.is_dir():
            common.console.print(f"dedup_threshold: BUSI not found at {args.data} (pass --data DIR)")
            return 1
        manifest = busi_manifest(args.data)
        decoded = decode_manifest(manifest, hashes=True, progress=not args.quick)
        pairs = reference_pairs(manifest, decoded)
        rows = measure(manifest, decoded, pairs, thresholds, args.seeds, args.n_folds)
    same = pairs[pairs["same"]]
    reference = {
        "definition": (
            f"one class, pHash+dHash distance <= {CANDIDATE_DISTANCE}, both masks non-empty, masks scaled to a "
            f"{MASK_SIDE} px longer side: centroid-aligned IoU >= {IOU_CUT} and centroids <= {OFFSET_CUT} of the "
            "longer side apart"
        ),
        "candidate_pairs": len(pairs),
        "judged_pairs": int(pairs["iou"].notna().sum()),
        "same_lesion_pairs": len(same),
        "same_lesion_upto_max_threshold": int((same["distance"] <= max(thresholds)).sum()),
        "same_lesion_by_distance": {int(d): int(n) for d, n in same["distance"].value_counts().sort_index().items()},
    }
    clean = [r["max_distance"] for r in rows if all(v["upto_max_threshold"] == 0 for v in r["split"].values())]
    # (a threshold whose folds cannot be drawn has None there, so it never counts as clean)
    result = {
        "data": "(synthetic)" if args.quick else str(args.data),
        "images": len(manifest),
        "classes": list(manifest.classes),
        "n_folds": args.n_folds,
        "seeds": list(args.seeds),
        "default_max_distance": DEFAULT_MAX_DISTANCE,
        "reference": reference,
        "thresholds": rows,
        "lowest_threshold_without_split_pairs": min(clean) if clean else None,
    }
    table = markdown(rows, args.seeds, reference)
    run.work_dir.mkdir(parents=True, exist_ok=True)
    (run.work_dir / "table.md").write_text(
        f"# dedup_threshold\n\nCommand: `{run.command}`  \nDate: {run.started.isoformat(timespec='seconds')}  \n"
        f"Machine: {common.cpu_model()}, {common.machine()['cores']} cores  \nData: {result['data']}, "
        f"{len(manifest)} images; folds: data.n_folds={args.n_folds}, data.seed in {list(args.seeds)}\n\n"
        f"Same lesion: {reference['definition']}.\n\n{table}"
    )
    pairs.to_csv(run.work_dir / "pairs.csv", index=False)
    common.console.print(rich_table(rows, args.seeds))
    common.console.print(table.splitlines()[-1])
    common.console.print(f"wrote {run.save(result)} and {run.work_dir / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
