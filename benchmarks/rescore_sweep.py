"""Add the ``score_`` columns to a sweep trained before they existed, written to a new directory.

    python benchmarks/rescore_sweep.py outputs/cv/<sweep> outputs/rescored/<sweep>

Runs trained with ``model.decision=balanced`` before the prediction file kept the probabilities
before the class offsets wrote only the shifted ``p_``, so their reports ranked shifted, per-fold
different probabilities for AUROC. The offsets are in each fold's ``metrics_val.json``
(``decision_offset_<class>``) and the shift is invertible: ``score = softmax(log p - offsets)``
(:func:`~skintumor.models.decision.shift_probabilities` with the negated offsets), up to the file's
6 decimals (probabilities that rounded to 0 tie), and bf16 runs keep their own numbers (re-running
the checkpoint in fp32 would not). ``p_`` and ``pred`` are kept as saved; ``metrics_test.json``'s
``test/auroc_*`` are recomputed on the scores. A fold trained with ``model.decision=balanced`` whose
offsets are missing, and an ensemble directory (its mean of shifted probabilities cannot be undone),
are refused. Each fold goes to ``OUT/fold_<k>`` with its
``.hydra``, ``split.json``, ``manifest.csv`` and metrics files, so ``python -m skintumor.report OUT``
reads it like the original. Nothing is written into the original sweep; ``OUT`` must not exist.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from skintumor.evaluate.metrics import classification_metrics  # noqa: E402
from skintumor.evaluate.report import PREDICTIONS, read_predictions  # noqa: E402
from skintumor.models.decision import shift_probabilities  # noqa: E402

CARRIED = (".hydra", "split.json", "manifest.csv", "metrics_val.json", "metrics_test.json")


def fold_offsets(fold_dir: Path, classes: list[str]) -> np.ndarray:
    """The class offsets the fold decided with (zeros for ``model.decision=argmax``); SystemExit
    when the fold used ``balanced`` but ``metrics_val.json`` does not hold them."""
    config = fold_dir / ".hydra" / "config.yaml"
    decision = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("decision") if config.is_file() else None
    metrics = fold_dir / "metrics_val.json"
    chosen = json.loads(metrics.read_text()) if metrics.is_file() else {}
    keys = [f"decision_offset_{c}" for c in classes]
    if all(k in chosen for k in keys):
        return np.array([chosen[k] for k in keys], dtype=float)
    if decision != "balanced":  # argmax, or a run from before model.decision existed
        return np.zeros(len(classes))
    raise SystemExit(f"{metrics}: no decision_offset_<class> for every class (model.decision: {decision}); "
                     "the shift cannot be undone")


def rescore_fold(fold_dir: Path, out_dir: Path) -> list[float]:
    """Write ``out_dir/predictions_test.csv`` with ``score_`` columns (none when the fold chose
    no offsets) and ``metrics_test.json`` with its AUROC values ranked on them; returns the offsets."""
    table = pd.read_csv(fold_dir / PREDICTIONS, dtype={"path": str, "patient_id": str, "group_id": str, "label": str})
    read, classes, _ = read_predictions(fold_dir / PREDICTIONS)  # the same checks as the report's
    if any(c.startswith("score_") for c in table.columns):
        raise SystemExit(f"{fold_dir / PREDICTIONS}: already has score_ columns")
    offsets = fold_offsets(fold_dir, classes)
    out_dir.mkdir(parents=True)
    for name in CARRIED:
        source = fold_dir / name
        if source.is_dir():
            shutil.copytree(source, out_dir / name)
        elif source.is_file():
            shutil.copy2(source, out_dir / name)
    if offsets.any():
        probs = read[[f"p_{c}" for c in classes]].to_numpy(float)
        scores = shift_probabilities(probs, -offsets)
        for i, c in enumerate(classes):
            table[f"score_{c}"] = scores[:, i]
        if (out_dir / "metrics_test.json").is_file():  # its AUROC, too, ranked the shifted probabilities
            tested = json.loads((out_dir / "metrics_test.json").read_text())
            ranked = classification_metrics(read["y"].to_numpy(), probs, classes, scores=scores)
            tested |= {f"test/{k}": v for k, v in ranked.items() if k.startswith("auroc_") and f"test/{k}" in tested}
            (out_dir / "metrics_test.json").write_text(json.dumps(tested, indent=2))
    table.to_csv(out_dir / PREDICTIONS, index=False, float_format="%.6f")
    return offsets.tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.out.exists():
        sys.exit(f"{args.out}: already exists; nothing is written over")
    if (args.sweep / "ensemble.json").is_file():
        sys.exit(f"{args.sweep}: an ensemble (mean of shifted probabilities cannot be undone); "
                 "rescore its members and ensemble them again")
    folds = sorted(d for d in args.sweep.glob("fold_*") if (d / PREDICTIONS).is_file())
    if not folds:
        sys.exit(f"{args.sweep}: no fold_<k>/{PREDICTIONS}")
    for fold_dir in folds:
        offsets = rescore_fold(fold_dir, args.out / fold_dir.name)
        print(f"{fold_dir.name}: offsets {np.round(offsets, 2).tolist()}", file=sys.stderr)
    if (args.sweep / "multirun.yaml").is_file():
        shutil.copy2(args.sweep / "multirun.yaml", args.out / "multirun.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
