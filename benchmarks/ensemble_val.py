"""Does a seed ensemble help? Judged on the inner validation split, which its members share.

    python benchmarks/ensemble_val.py outputs/cv/member_a outputs/cv/member_b [...]
    python benchmarks/ensemble_val.py outputs/cv/member_a            # one model, no ensemble rows

The members must be sweeps over the same outer folds *and* the same inner validation split (same
``data.seed`` and ``data.inner_fold``; they differ in ``seed``), so every fold's validation images
are unseen by all members and the mean of their probabilities can be scored there. For each fold
the stored decision offsets are zeroed and chosen again; the val score is the recipe ablation's,
(validation macro AUROC + validation balanced accuracy) / 2, with offsets cross-fitted on
validation as in ``benchmarks/decision_bias.py``. Two ways to ensemble: average the members'
offset-shifted probabilities (each member's offsets chosen on its own validation probabilities,
what ``python -m skintumor.report --ensemble`` does with finished sweeps), or choose one set of
offsets on the members' mean. The test columns apply offsets chosen on the whole validation split;
the test folds choose nothing. ``--checkpoint last.ckpt`` scores the final epoch's weights instead
of the ones validation chose (their offsets are chosen the same way); ``SWEEP@last.ckpt`` does so for
one member, so ``A A@last.ckpt B B@last.ckpt`` averages both checkpoints of two seeds. One sweep
alone is scored the same way, without the ensemble rows (a single model's val score by the rule).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from skintumor.evaluate.finished_run import CHECKPOINTS, FinishedRun  # noqa: E402
from skintumor.evaluate.metrics import classification_metrics  # noqa: E402
from skintumor.models.decision import balanced_offsets, cross_fitted, shift_probabilities  # noqa: E402


def same_split(runs: list[FinishedRun]) -> None:
    """Refuse members whose validation or test rows differ in this fold."""
    for run in runs[1:]:
        if any(run.rows[part] != runs[0].rows[part] for part in ("val", "test")):
            sys.exit(f"{run.path}: its validation or test rows differ from {runs[0].path}'s (same data.seed and "
                     "data.inner_fold needed)")


def scored(yv: np.ndarray, pv: np.ndarray, pt: np.ndarray) -> tuple[np.ndarray, ...]:
    """One model on one fold, from its plain probabilities of the validation (pv) and test (pt) images:
    what it decides with (validation: offsets cross-fitted; test: offsets chosen on the whole
    validation split), then what AUROC ranks -> (val decided, test decided, pv, pt)."""
    return cross_fitted(yv, pv), shift_probabilities(pt, balanced_offsets(yv, pv)), pv, pt


def mean_of_members(rows: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The ensemble ``report --ensemble`` forms from the members' :func:`scored` rows: each part's mean
    (the members' offset-shifted probabilities, and their plain ones for AUROC)."""
    return tuple(np.mean(part, axis=0) for part in zip(*rows))


def val_score(y: np.ndarray, decided: np.ndarray, scores: np.ndarray, classes: list[str]) -> float:
    """The recipe ablation's score: (macro AUROC of ``scores`` + balanced accuracy of ``decided``) / 2."""
    m = classification_metrics(y, decided, classes, scores=scores)
    return (m["auroc_macro"] + m["bal_acc"]) / 2


def pooled_columns(classes: list[str]) -> str:
    """Header cells of :func:`pooled_cells`."""
    return "pooled test AUROC | pooled test bal. acc | " + " | ".join(f"{c} sens." for c in classes)


def pooled_cells(y: np.ndarray, decided: np.ndarray, scores: np.ndarray, classes: list[str]) -> str:
    """Markdown cells of the pooled test metrics: macro AUROC, balanced accuracy, each class's sensitivity."""
    m = classification_metrics(y, decided, classes, scores=scores)
    sens = " | ".join(f"{m[f'sens_{c}']:.3f}" for c in classes)
    return f"{m['auroc_macro']:.3f} | {m['bal_acc']:.3f} | {sens}"


def member(spec: str, checkpoint: str) -> tuple[Path, str, str]:
    """``SWEEP`` or ``SWEEP@last.ckpt`` -> (sweep directory, checkpoint file name, row name)."""
    path, _, chosen = spec.partition("@")
    chosen = chosen or checkpoint
    if chosen not in CHECKPOINTS:
        sys.exit(f"{spec}: the checkpoint after @ must be {' or '.join(CHECKPOINTS)}")
    return Path(path), chosen, Path(path).name + ("" if chosen == "best.ckpt" else f" ({chosen})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="+", help="sweep directories, each optionally @best.ckpt or @last.ckpt")
    parser.add_argument("--checkpoint", default="best.ckpt", choices=CHECKPOINTS,
                        help="for members without @: the weights validation chose (default) or the final epoch's")
    args = parser.parse_args()
    members = [member(spec, args.checkpoint) for spec in args.members]
    ensemble = len(members) > 1  # one sweep: just its own row
    names = [name for _, _, name in members] + (["ensemble: mean of the members' shifted probabilities (what "
                                                "`report --ensemble` averages)", "ensemble: offsets chosen on the mean"]
                                               if ensemble else [])
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a lent GPU predicts (same scores up to float rounding)
    val = {n: [] for n in names}
    test = {n: ([], [], []) for n in names}  # labels, probabilities with offsets, scores before them
    classes = None
    for fold_dir in sorted(members[0][0].glob("fold_*")):
        runs = [FinishedRun.open(sweep / fold_dir.name, checkpoint) for sweep, checkpoint, _ in members]
        same_split(runs)
        val_p, test_p = [], []  # per member: plain probabilities (offsets zeroed)
        for run in runs:
            model, loaders = run.classifier.to(device), {part: run.loader(part) for part in ("val", "test")}
            model.decision_offsets.zero_()  # plain probabilities; offsets are chosen below
            classes = model.hparams.classes
            yv, pv = model.predict_loader(loaders["val"])
            yt, pt = model.predict_loader(loaders["test"])
            val_p.append(pv), test_p.append(pt)
        rows = [scored(yv, pv, pt) for pv, pt in zip(val_p, test_p)]
        if ensemble:
            rows.append(mean_of_members(rows))
            rows.append(scored(yv, np.mean(val_p, axis=0), np.mean(test_p, axis=0)))
        for n, (pv, pt, sv, st) in zip(names, rows):
            val[n].append(val_score(yv, pv, sv, classes))
            test[n][0].append(yt), test[n][1].append(pt), test[n][2].append(st)
        print(f"{fold_dir.name}: " + ", ".join(f"{v[-1]:.3f}" for v in val.values()), file=sys.stderr)
    print(f"| model | val score (cross-fitted offsets, mean over folds) | {pooled_columns(classes)} |")
    print("|---|---|---|---|" + "---|" * len(classes))
    for n in names:
        y, p, scores = (np.concatenate(part) for part in test[n])
        print(f"| {n} | {np.mean(val[n]):.3f} | {pooled_cells(y, p, scores, classes)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
