"""Test-time flip on vs off for the selected checkpoints of a cross-validation sweep (no retraining).

    python benchmarks/tta_effect.py outputs/cv/recipe_busi_cpu_<time>

For each fold, the run directory's own ``manifest.csv`` and ``split.json`` give its validation and
test rows (no config is re-composed, no data check re-run); the checkpoint scores them with ``tta`` =
hflip and = none. The validation score (what would choose) and the pooled test metrics are printed
as a markdown table. The checkpoints were chosen with the run's own ``tta`` setting, so the other
setting is evaluated at the same epoch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skintumor.evaluate.finished_run import FinishedRun  # noqa: E402
from skintumor.evaluate.metrics import classification_metrics  # noqa: E402
from skintumor.models.decision import shift_probabilities  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    results = {tta: {"val": [], "test_y": [], "test_p": [], "test_s": []} for tta in (None, "hflip")}
    classes = None
    for fold_dir in sorted(args.sweep.glob("fold_*")):
        run = FinishedRun.open(fold_dir)
        model, loaders = run.classifier, {part: run.loader(part) for part in ("val", "test")}
        classes, offsets = model.hparams.classes, model.decision_offsets.numpy()
        for tta in results:
            model.hparams.tta = tta
            # AUROC ranks the probabilities before any class offsets, as the report does
            y, s = model.predict_loader(loaders["val"], decide=False)
            m = classification_metrics(y, shift_probabilities(s, offsets), classes, scores=s)
            results[tta]["val"].append((m["auroc_macro"] + m["bal_acc"]) / 2)
            y, s = model.predict_loader(loaders["test"], decide=False)
            p = shift_probabilities(s, offsets)
            results[tta]["test_y"].append(y)
            results[tta]["test_p"].append(p)
            results[tta]["test_s"].append(s)
        print(f"{fold_dir.name} done", file=sys.stderr)
    print("| test-time flip | val score (mean over folds) | pooled test AUROC | pooled test bal. acc |")
    print("|---|---|---|---|")
    for tta, r in results.items():
        m = classification_metrics(np.concatenate(r["test_y"]), np.concatenate(r["test_p"]), classes,
                                   scores=np.concatenate(r["test_s"]))
        print(f"| {tta or 'none'} | {np.mean(r['val']):.3f} | {m['auroc_macro']:.3f} | {m['bal_acc']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
