"""How hard is the phantom? A global-intensity baseline must stay below 80 % balanced accuracy.

    python -m benchmarks.phantom_difficulty [--root outputs/phantom] [--bins 32] [--morphology]

Logistic regression on each whole image's normalised grey-level histogram, patient-grouped
5-fold CV (PatientGroupedFolds, the framework's folds); the test fold of each split is predicted
once by a model fitted on the rest. Prints balanced accuracy per fold and pooled, for a few C.
``--morphology`` adds the opposite check: a few lesion numbers read with the true mask must suffice.
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.images import read_greyscale, read_mask
from skintumor.data.phantom import phantom_manifest


def histograms(manifest, bins: int) -> np.ndarray:
    """(n_images, bins) grey-level histograms, each summing to 1."""
    feats = [np.histogram(read_greyscale(manifest.image_path(i)), bins=bins, range=(0, 256))[0]
             for i in range(len(manifest))]
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
        rows.append([np.ptp(c) + 1, np.ptp(r) + 1, mask.mean(), image[core].mean() - image[ring].mean(),
                     image[core].std(), image[mask].std()])
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
        per_fold.append(balanced_accuracy_score(y[test], pred[test]))
    return balanced_accuracy_score(y, pred), per_fold


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="outputs/phantom")
    parser.add_argument("--bins", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--morphology", action="store_true",
                        help="also: gradient boosting on lesion shape/contrast measured with the true mask")
    args = parser.parse_args()
    manifest = phantom_manifest(args.root, seed=args.seed)
    x = histograms(manifest, args.bins)
    y = np.asarray(manifest.labels)
    groups = np.asarray(manifest.groups)
    print(f"{len(manifest)} images, {len(set(groups))} patients, classes {manifest.classes}, {args.bins} bins")
    for c in (0.01, 0.1, 1.0, 10.0):
        pooled, per_fold = cross_validate(x, y, groups, c)
        print(f"histogram, C={c:<5}: balanced accuracy pooled {pooled:.3f}; per fold "
              + " ".join(f"{v:.3f}" for v in per_fold) + f" (mean {np.mean(per_fold):.3f})")
    if args.morphology:
        pooled, per_fold = cross_validate(morphology(manifest), y, groups, None)
        print(f"mask morphology, gradient boosting: balanced accuracy pooled {pooled:.3f}; per fold "
              + " ".join(f"{v:.3f}" for v in per_fold))


if __name__ == "__main__":
    main()
