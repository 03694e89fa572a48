"""Fold ensembles: average the test probabilities of several sweeps trained on the same outer folds.

Members differ in their inner validation split (``data.inner_fold=0,1,2``) or seed; within an outer
fold they share the test fold, so averaging their probabilities per test image is honest: the
ensemble never sees the test fold either. The result is a sweep directory like any other, so
``python -m skintumor.report`` reports and compares it.

    python -m skintumor.report --ensemble OUT SWEEP_A SWEEP_B SWEEP_C
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from skintumor.errors import DataError
from skintumor.evaluate.sweep import PREDICTIONS, VALIDATION, load_sweep

CARRIED = ("split.json", "manifest.csv", ".hydra")  # from the first member: folds, manifest, n_folds


def ensemble_sweeps(sweep_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Write ``out_dir/fold_<k>/predictions_test.csv``: the members' mean probabilities per test image.

    ``p_`` (the decision) is the mean of the members' ``p_``, so each member decides with its own
    class offsets; ``score_`` (the ranking) the mean of their ``score_`` (``p_`` for a member
    without offsets), written when it differs from ``p_``.

    Where every member has the fold's inner validation predictions for the same images (members that
    differ by seed only), their mean is written too (``predictions_val.csv``), so the ensemble's
    report fits its temperature and calibrates its conformal sets on validation as a single model's
    does; members validated on different images leave it out.

    Only folds present in every member are written. Raises :class:`DataError` if the members'
    classes or test images differ, or ``out_dir`` already exists (nothing is overwritten).
    """
    if len(sweep_dirs) < 2:
        raise DataError("an ensemble needs at least two sweep directories")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir}: already exists; an ensemble is never written over anything")
    members = [load_sweep(d) for d in sweep_dirs]
    classes = members[0].classes
    for m in members[1:]:
        if m.classes != classes:
            raise DataError(f"{m.directory}: classes {m.classes} differ from {members[0].directory}'s {classes}")
    folds = sorted(set.intersection(*(set(m.folds) for m in members)))
    if not folds:
        raise DataError("the members share no fold with predictions")
    for k in folds:
        tables = [_by_path(m.folds[k], classes) for m in members]
        for m, table in zip(members[1:], tables[1:]):
            if set(table.index) != set(tables[0].index):
                raise DataError(
                    f"{m.directory}/fold_{k}: test images differ from {members[0].directory}/fold_{k}; "
                    "ensemble members must share the outer folds (same data.seed and n_folds)"
                )
        fold_dir = out_dir / f"fold_{k}"
        fold_dir.mkdir(parents=True)
        _write_mean(tables, classes, fold_dir / PREDICTIONS)
        validation = [_by_path(m.validation[k], classes) for m in members if k in m.validation]
        if len(validation) == len(members) and all(set(v.index) == set(validation[0].index) for v in validation):
            _write_mean(validation, classes, fold_dir / VALIDATION)
        source = members[0].directory / f"fold_{k}"
        for name in CARRIED:
            if (source / name).is_dir():
                shutil.copytree(source / name, fold_dir / name)
            elif (source / name).is_file():
                shutil.copy2(source / name, fold_dir / name)
    (out_dir / "ensemble.json").write_text(
        json.dumps(
            {
                "members": [str(Path(d).resolve()) for d in sweep_dirs],
                "folds": folds,
                "combine": "mean probability (p_: each member's decision probabilities; score_: before offsets)",
            },
            indent=2,
        )
    )
    return out_dir


def _write_mean(tables: list, classes: list[str], path: Path) -> None:
    """The mean of the members' ``p_`` and of their ``score_`` per image (rows of the first), ``pred``
    from the mean ``p_``; ``score_`` columns only where they differ from ``p_``."""
    columns, score_columns = [f"p_{c}" for c in classes], [f"score_{c}" for c in classes]
    base = tables[0].copy()
    for cols in (columns, score_columns):
        base[cols] = np.mean([t.loc[base.index, cols].to_numpy(float) for t in tables], axis=0)
    base["pred"] = np.asarray(classes)[base[columns].to_numpy().argmax(1)]
    scored = not np.allclose(base[columns].to_numpy(float), base[score_columns].to_numpy(float), atol=1e-6)
    base.reset_index()[
        ["path", "patient_id", "group_id", "label", *columns, "pred", *(score_columns if scored else [])]
    ].to_csv(path, index=False, float_format="%.6f")


def _by_path(table, classes: list[str]):
    """A fold's predictions (test or validation) indexed by path, the columns an ensemble averages."""
    columns = [f"{kind}_{c}" for kind in ("p", "score") for c in classes]
    return table.set_index("path")[["patient_id", "group_id", "label", *columns]]
