"""How hard is the phantom? A global-intensity baseline must stay below 80 % balanced accuracy.

    python -m benchmarks.phantom_difficulty [--root outputs/phantom] [--bins 32]

Logistic regression on each whole image's normalised grey-level histogram, patient-grouped
5-fold CV (PatientGroupedFolds, the framework's folds); the test fold of each split is predicted
once by a model fitted on the rest. Prints balanced accuracy per fold and pooled, for a few C.
"""
from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.images import read_greyscale
from skintumor.data.phantom import phantom_manifest


def histograms(manifest, bins: int) -> np.ndarray:
    """(n_images, bins) grey-level histograms, each summing to 1."""
    feats = [np.histogram(read_greyscale(manifest.image_path(i)), bins=bins, range=(0, 256))[0]
             for i in range(len(manifest))]
    feats = np.asarray(feats, dtype=float)
    return feats / feats.sum(axis=1, keepdims=True)


def cross_validate(x, y, groups, c: float, n_splits: int = 5) -> tuple[float, list[float]]:
    folds = PatientGroupedFolds(y, groups, n_splits=n_splits)
    pred = np.empty_like(y)
    per_fold = []
    for k in range(n_splits):
        test = folds.test_indices(k)
        train = folds.train_part(k)
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
    args = parser.parse_args()
    manifest = phantom_manifest(args.root, seed=args.seed)
    x = histograms(manifest, args.bins)
    y = np.asarray(manifest.labels)
    groups = np.asarray(manifest.groups)
    print(f"{len(manifest)} images, {len(set(groups))} patients, classes {manifest.classes}, {args.bins} bins")
    for c in (0.01, 0.1, 1.0, 10.0):
        pooled, per_fold = cross_validate(x, y, groups, c)
        print(f"C={c:<5}: balanced accuracy pooled {pooled:.3f}; per fold "
              + " ".join(f"{v:.3f}" for v in per_fold) + f" (mean {np.mean(per_fold):.3f})")


if __name__ == "__main__":
    main()
