"""How hard is the phantom? A global-intensity baseline must stay below 80 % balanced accuracy.

    python -m benchmarks.phantom_difficulty [--root outputs/phantom] [--bins 32] [--morphology] [--jobs 2]
                                            [--quick] [--out DIR]

Logistic regression on each whole image's normalised grey-level histogram, patient-grouped
5-fold CV (PatientGroupedFolds, the framework's folds); the test fold of each split is predicted
once by a model fitted on the rest. Reports balanced accuracy per fold and pooled, for a few C.
``--morphology`` adds the opposite check: a few lesion numbers read with the true mask must suffice.

The phantom is generated into ``--root`` (with ``--jobs`` processes) unless that folder already holds
it; the result records the generation's wall time then, so a fresh ``--root`` times the generator.
``--quick``: a 30-image phantom in a temporary folder, with ``--morphology``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks import common
from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.images import read_greyscale, read_mask
from skintumor.data.phantom import phantom_manifest

C_VALUES = (0.01, 0.1, 1.0, 10.0)


def histograms(manifest, bins: int) -> np.ndarray:
    """(n_images, bins) grey-level histograms, each summing to 1."""
    feats = [
        np.histogram(read_greyscale(manifest.image_path(i)), bins=bins, range=(0, 256))[0] for i in range(len(manifest))
    ]
    feats = np.asarray(feats, dtype=float)
    return feats / feats.sum(axis=1, keepdims=True)


def morphology(manifest) -> np.ndarray:
    """(n_images, 6) numbers read off each image with its true mask: lesion width, height, area,
    core-minus-surrounding grey level, and grey-level spread of core and lesion. An upper-bound
    check that the class signal is local (the CNN does not get the mask)."""
    rows = []
    for i in range(len(manifest)):
        image = read_greyscale(manifest.image_path(i)).astype(float)
        mask = read_mask(manifest.mask_path(i))
        r, c = np.nonzero(mask)
        ring = ndimage.binary_dilation(mask, iterations=8) & ~ndimage.binary_dilation(mask, iterations=2)
        depth = ndimage.distance_transform_edt(mask)
        core = depth > 0.4 * depth.max()
        rows.append(
            [
                np.ptp(c) + 1,
                np.ptp(r) + 1,
                mask.mean(),
                image[core].mean() - image[ring].mean(),
                image[core].std(),
                image[mask].std(),
            ]
        )
    return np.asarray(rows)


def cross_validate(x, y, groups, c: float | None, n_splits: int = 5) -> tuple[float, list[float]]:
    """Pooled and per-fold balanced accuracy; ``c`` = logistic regression's C, None = gradient boosting."""
    folds = PatientGroupedFolds(y, groups, n_splits=n_splits)
    pred = np.empty_like(y)
    per_fold = []
    for k in range(n_splits):
        test = folds.test_indices(k)
        train = folds.train_part(k)
        if c is None:
            model = HistGradientBoostingClassifier(class_weight="balanced", random_state=0)
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
        model.fit(x[train], y[train])
        pred[test] = model.predict(x[test])
        per_fold.append(float(balanced_accuracy_score(y[test], pred[test])))
    return float(balanced_accuracy_score(y, pred)), per_fold


def load_phantom(root: Path, seed: int, jobs: int, quick: bool) -> tuple[object, dict]:
    """The phantom's manifest, generated into ``root`` if needed, and how long that took."""
    before = set(root.glob("*/manifest.csv"))
    start = time.perf_counter()
    size = dict(n_patients=(8, 6, 6), n_images=30) if quick else {}  # common.tiny_phantom's
    manifest = phantom_manifest(root, seed=seed, n_jobs=jobs, progress=False, **size)
    generated = set(root.glob("*/manifest.csv")) != before
    return manifest, {
        "generated": generated,
        "jobs": jobs,
        "seconds": round(time.perf_counter() - start, 1) if generated else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("phantom_difficulty", __doc__)
    p.add_argument("--root", type=Path, default=Path("outputs/phantom"), help="the phantom's cache folder")
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="processes generating the phantom (if not cached)")
    p.add_argument(
        "--morphology",
        action="store_true",
        help="also: gradient boosting on lesion shape/contrast measured with the true mask",
    )
    run = common.begin("phantom_difficulty", p, argv)
    args = run.args
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.root, args.jobs, args.morphology = Path(tmp), 1, True
        manifest, generation = load_phantom(args.root, args.seed, args.jobs, args.quick)
        y, groups = np.asarray(manifest.labels), np.asarray(manifest.groups)
        common.console.print(
            f"{len(manifest)} images, {len(set(groups))} patients, classes {manifest.classes}, {args.bins} bins"
        )
        result = {
            "root": "(temporary)" if args.quick else str(args.root),
            "images": len(manifest),
            "patients": len(set(groups)),
            "classes": list(manifest.classes),
            "bins": args.bins,
            "generation": generation,
            "histogram": {},
        }
        x = histograms(manifest, args.bins)
        for c in C_VALUES:
            pooled, per_fold = cross_validate(x, y, groups, c)
            result["histogram"][f"C={c}"] = {"pooled": round(pooled, 4), "per_fold": [round(v, 4) for v in per_fold]}
            common.console.print(
                f"histogram, C={c:<5}: balanced accuracy pooled {pooled:.3f}; per fold "
                + " ".join(f"{v:.3f}" for v in per_fold)
                + f" (mean {np.mean(per_fold):.3f})"
            )
        result["histogram_best_pooled"] = max(v["pooled"] for v in result["histogram"].values())
        if args.morphology:
            pooled, per_fold = cross_validate(morphology(manifest), y, groups, None)
            result["morphology"] = {"pooled": round(pooled, 4), "per_fold": [round(v, 4) for v in per_fold]}
            common.console.print(
                f"mask morphology, gradient boosting: balanced accuracy pooled {pooled:.3f}; per fold "
                + " ".join(f"{v:.3f}" for v in per_fold)
            )
    common.console.print(f"wrote {run.save(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
