"""Class offsets for the decision, chosen on each fold's inner validation split (no retraining).

What ``model.decision=balanced`` does at the end of training, applied afterwards to the checkpoints
of a finished sweep (``skintumor.models.decision``), with an honest validation estimate of its use.

    python benchmarks/decision_bias.py outputs/cv/recipe_busi_cpu_<time> [--step 0.1 --limit 1.5]

Balanced accuracy takes the argmax, so it depends on where the decision falls between classes,
which AUROC does not. For each fold, offsets ``b`` (one per class, the first fixed at 0) are added to
the log-probabilities of the chosen checkpoint; the grid point with the best validation balanced
accuracy is kept (ties: the smallest offsets) and applied to the test fold. Prints the pooled test
metrics with and without the offsets as a markdown table; the test folds choose nothing.

Whether to use offsets at all is judged on validation too, without the optimism of scoring offsets
on the images that chose them: each fold's validation split is halved (stratified), offsets chosen
on one half score the other, against plain argmax on the same images. The val score is the recipe
ablation's: (validation macro AUROC + validation balanced accuracy) / 2, mean over the folds.
AUROC ranks the probabilities before the offsets (as the report does), so only balanced accuracy moves.
One halving of about 60 images per half moves a run's score by up to 0.02; ``--halvings N`` averages
the cross-fitted score over N random halvings (seeds 0..N-1; 1, the default, is the recipe ablation's).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
from ensemble_val import pooled_cells, pooled_columns  # noqa: E402

from skintumor.evaluate.finished_run import FinishedRun  # noqa: E402
from skintumor.evaluate.metrics import classification_metrics  # noqa: E402
from skintumor.models.decision import balanced_offsets, cross_fitted, shift_probabilities  # noqa: E402


def validation_scores(yv: np.ndarray, pv: np.ndarray, classes: list[str], step: float = 0.1, limit: float = 1.5,
                      halvings: int = 1) -> dict[str, tuple[float, float]]:
    """One fold's (val score, val balanced accuracy) with plain argmax ("plain") and with offsets
    cross-fitted on halves of the split ("cross", averaged over ``halvings`` random halvings)."""
    def score(q):
        m = classification_metrics(yv, q, classes, scores=pv)  # offsets move the decision, not the ranking
        return (m["auroc_macro"] + m["bal_acc"]) / 2, m["bal_acc"]
    cross = [score(cross_fitted(yv, pv, step, limit, seed=s)) for s in range(halvings)]
    return {"plain": score(pv), "cross": tuple(np.mean(cross, axis=0))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--limit", type=float, default=1.5)
    parser.add_argument("--halvings", type=int, default=1,
                        help="random halvings of each validation split the cross-fitted score averages (default 1)")
    args = parser.parse_args()
    ys, plain, shifted, classes = [], [], [], None
    val = {"plain": [], "cross": []}
    for fold_dir in sorted(args.sweep.glob("fold_*")):
        run = FinishedRun.open(fold_dir)
        model, loaders = run.classifier, {part: run.loader(part) for part in ("val", "test")}
        model.decision_offsets.zero_()  # start from plain argmax, also for runs trained with offsets
        classes = model.hparams.classes
        yv, pv = model.predict_loader(loaders["val"])
        b = balanced_offsets(yv, pv, args.step, args.limit)
        for name, v in validation_scores(yv, pv, classes, args.step, args.limit, args.halvings).items():
            val[name].append(v)
        y, p = model.predict_loader(loaders["test"])
        ys.append(y), plain.append(p), shifted.append(shift_probabilities(p, b))
        print(f"{fold_dir.name}: offsets {np.round(b, 2).tolist()}, val bal. acc {val['plain'][-1][1]:.3f} -> "
              f"{val['cross'][-1][1]:.3f} (cross-fitted)", file=sys.stderr)
    y = np.concatenate(ys)
    print(f"| decision | val score (cross-fitted offsets) | val bal. acc (same) | {pooled_columns(classes)} |")
    print("|---|---|---|---|---|" + "---|" * len(classes))
    rows = (("argmax", plain, val["plain"]), ("argmax + offsets chosen on validation", shifted, val["cross"]))
    for name, p, v in rows:
        score, bal = np.mean(v, axis=0)
        print(f"| {name} | {score:.4f} | {bal:.4f} | {pooled_cells(y, np.concatenate(p), np.concatenate(plain), classes)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
