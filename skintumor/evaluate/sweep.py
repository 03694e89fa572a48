"""Collecting a cross-validation sweep from disk: every fold's test predictions -> a :class:`Sweep`.

A sweep directory holds one run directory per outer fold, ``fold_0 ... fold_{k-1}``, each with
``predictions_test.csv`` (columns ``path, patient_id, group_id, label, p_<class>..., pred``; the
class order is the order of the ``p_`` columns; optional ``score_<class>...``, the probabilities
before class offsets, are what AUROC ranks) and, when written by Hydra, ``.hydra/config.yaml``
(``data.n_folds`` says how many folds there should be).

:func:`load_sweep` reads and checks every fold (:func:`read_predictions`); a missing or failed
fold goes to ``Sweep.missing``, not into the numbers. It also gathers what a reader should know
about the runs: their Hydra overrides and configuration, an ensemble's members, folds with fewer
predictions than test images and folds that overlap. Numbers: :mod:`skintumor.evaluate.summary`;
the written report: :mod:`skintumor.evaluate.report`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from skintumor.data.manifest import read_user_csv
from skintumor.errors import DataError

PREDICTIONS = "predictions_test.csv"
VALIDATION = "predictions_val.csv"  # the inner validation split's predictions (conformal calibration)


@dataclass
class Sweep:
    """The predictions of one cross-validation sweep.

    Attributes:
        directory: the sweep directory.
        classes: class names in probability-column order.
        folds: fold -> predictions with columns ``path, patient_id, group_id, label, y`` and
            ``p_<class>`` (``y`` is the class index).
        missing: fold -> why it has no usable predictions (folds expected but absent or failed).
        expected: the folds a complete sweep has (from ``data.n_folds`` or the directory names).
        notes: things the reader should know (a disagreeing ``pred`` column, rows without patient).
        warnings: things that make the numbers doubtful (folds that overlap or split patients).
        explain: fold -> link (relative to the sweep directory) to the fold's explanation overlays.
        overrides: the Hydra command-line overrides of the runs (from ``.hydra/overrides.yaml``,
            without ``data.fold``), so a reader knows what was trained.
        members: for an ensemble (``ensemble.json``), each member sweep's directory name -> its
            overrides; ``overrides`` is then empty (the copied ``.hydra`` is the first member's).
        validation: fold -> its inner validation split's predictions (``predictions_val.csv``, the
            columns of ``folds``), for the folds whose run wrote them (runs since conformal sets).
        temperatures: fold -> the temperature its run fitted on validation (``metrics_val.json``),
            for the folds trained with ``model.calibration=temperature``.
        config: the first used fold's configuration as a plain dict (:func:`read_config`); empty when
            the fold has neither ``.hydra/config.yaml`` nor ``run.yaml``.
    """

    directory: Path
    classes: list[str]
    folds: dict[int, pd.DataFrame]
    missing: dict[int, str] = field(default_factory=dict)
    expected: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    explain: dict[int, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    validation: dict[int, pd.DataFrame] = field(default_factory=dict)
    temperatures: dict[int, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.directory.name

    def pooled(self) -> pd.DataFrame:
        """All out-of-fold predictions in one table with a ``fold`` column, in fold order."""
        return pd.concat([df.assign(fold=k) for k, df in sorted(self.folds.items())], ignore_index=True)

    def coverage(self) -> str:
        """One line saying which folds the numbers cover, e.g. ``folds 0, 1, 3 of 5 (missing: 2, 4)``."""
        used = ", ".join(map(str, sorted(self.folds)))
        text = f"folds {used} of {len(self.expected)}"
        if self.missing:
            text += f" (missing: {', '.join(map(str, sorted(self.missing)))})"
        return text


def _fold_dirs(sweep_dir: Path) -> dict[int, Path]:
    found = {}
    for d in sweep_dir.glob("fold_*"):
        suffix = d.name[len("fold_") :]
        if d.is_dir() and suffix.isdigit():
            found[int(suffix)] = d
    return found


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _n_folds(sweep_dir: Path, fold_dirs: dict[int, Path]) -> int | None:
    """``data.n_folds`` from a fold's ``.hydra/config.yaml`` or the sweep's ``multirun.yaml``."""
    candidates = [d / ".hydra" / "config.yaml" for _, d in sorted(fold_dirs.items())] + [sweep_dir / "multirun.yaml"]
    for path in candidates:
        value = (_read_yaml(path).get("data") or {}).get("n_folds") if path.is_file() else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def read_predictions(csv_path: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Read and check one ``predictions_test.csv``.

    Returns (table with an added ``y`` column, class names from the ``p_`` columns, notes).
    Raises :class:`DataError` naming the file when it cannot be used.
    """
    table = read_user_csv(
        csv_path, "predictions file", dtype={"path": str, "patient_id": str, "group_id": str, "label": str}
    )
    classes = [c[2:] for c in table.columns if c.startswith("p_")]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing or len(classes) < 2:
        raise DataError(
            f"{csv_path}: needs columns path, label and at least two p_<class> columns "
            f"(has: {', '.join(map(str, table.columns))})"
        )
    if table.empty:
        raise DataError(f"{csv_path}: no rows")
    notes = []
    for col in ("patient_id", "group_id"):
        if col not in table.columns:
            table[col] = ""
    no_patient = table["patient_id"] == ""
    if no_patient.any():
        notes.append(f"{csv_path}: {int(no_patient.sum())} row(s) without patient_id count as their own patient")
        table.loc[no_patient, "patient_id"] = "img:" + table.loc[no_patient, "path"]
    table["group_id"] = table["group_id"].where(table["group_id"] != "", table["patient_id"])
    table["y"] = _label_index(table["label"], classes, csv_path)
    probs = _probabilities(table, "p_", classes, csv_path)
    table[[f"p_{c}" for c in classes]] = probs
    scores = [c[6:] for c in table.columns if c.startswith("score_")]
    if scores and scores != classes:
        raise DataError(
            f"{csv_path}: score_ columns ({', '.join(scores)}) must name the p_ classes "
            f"({', '.join(classes)}) in the same order"
        )
    # score_: the probabilities before class offsets, which AUROC ranks; without them, p_
    table[[f"score_{c}" for c in classes]] = _probabilities(table, "score_", classes, csv_path) if scores else probs
    if "pred" in table.columns:
        argmax = np.asarray(classes)[probs.argmax(1)]
        given = [classes[int(v)] if v.isdigit() and int(v) < len(classes) else v for v in table["pred"].astype(str)]
        disagree = int((np.asarray(given) != argmax).sum())
        if disagree:
            notes.append(
                f"{csv_path}: the pred column disagrees with argmax(p_) in {disagree} row(s); "
                "the report uses argmax(p_)"
            )
    return table, classes, notes


def _probabilities(table: pd.DataFrame, prefix: str, classes: list[str], csv_path: Path) -> np.ndarray:
    """The ``<prefix><class>`` columns as (N, C) probabilities, checked, rows rescaled to sum to 1
    (undoing CSV rounding); DataError naming the file otherwise."""
    probs = table[[f"{prefix}{c}" for c in classes]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise DataError(f"{csv_path}: {prefix} columns must be finite probabilities >= 0")
    sums = probs.sum(1)
    if np.abs(sums - 1).max() > 0.01:
        raise DataError(
            f"{csv_path}: {prefix} columns must sum to 1 per row (row {int(np.abs(sums - 1).argmax()) + 2} "
            f"sums to {sums[np.abs(sums - 1).argmax()]:.3f}); logits instead of probabilities?"
        )
    return probs / sums[:, None]


def _label_index(labels: pd.Series, classes: list[str], csv_path: Path) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    if labels.isin(classes).all():
        return labels.map(index).to_numpy(int)
    if labels.str.fullmatch(r"\d+").all() and labels.astype(int).lt(len(classes)).all():
        return labels.astype(int).to_numpy()
    bad = labels[~labels.isin(classes)].iloc[0]
    raise DataError(f"{csv_path}: label {bad!r} is not one of the p_ classes ({', '.join(classes)})")


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read every fold of a sweep; folds that are absent or unusable go to ``Sweep.missing``.

    Raises :class:`DataError` if no fold at all has usable predictions or folds disagree on classes.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: sweep directory not found")
    fold_dirs = _fold_dirs(sweep_dir)
    n_folds = _n_folds(sweep_dir, fold_dirs)
    notes = []
    if n_folds is None:
        if not fold_dirs:
            raise DataError(f"{sweep_dir}: no fold_<k> directories (is this a cross-validation sweep directory?)")
        n_folds = max(fold_dirs) + 1
        notes.append(
            "data.n_folds not found in .hydra/config.yaml or multirun.yaml; "
            f"expecting folds 0..{n_folds - 1} from the directory names"
        )
    expected = list(range(n_folds))
    extra = sorted(set(fold_dirs) - set(expected))
    if extra:
        notes.append(
            f"fold directories {', '.join(map(str, extra))} lie outside data.n_folds={n_folds} and are ignored"
        )
    folds, missing, classes, warnings = {}, {}, None, []
    for k in expected:
        if k not in fold_dirs:
            missing[k] = f"directory fold_{k} is absent"
            continue
        csv_path = fold_dirs[k] / PREDICTIONS
        if not csv_path.is_file():
            error = fold_dirs[k] / "error.txt"  # written by a fold that failed (skintumor.train)
            why = f"failed: {error.read_text().splitlines()[0]}" if error.is_file() else "run failed or unfinished"
            missing[k] = f"fold_{k} has no {PREDICTIONS} ({why})"
            continue
        try:
            table, fold_classes, fold_notes = read_predictions(csv_path)
        except DataError as err:
            missing[k] = f"fold_{k}: unusable predictions ({err})"
            continue
        if classes is None:
            classes = fold_classes
        elif fold_classes != classes:
            raise DataError(f"{csv_path}: classes {fold_classes} differ from the other folds' {classes}")
        folds[k] = table
        notes += fold_notes
        incomplete = _incomplete_warning(fold_dirs[k], len(table))
        if incomplete:
            warnings.append(incomplete)
    if not folds:
        raise DataError(f"{sweep_dir}: no fold has usable predictions (" + "; ".join(missing.values()) + ")")
    sweep = Sweep(sweep_dir, classes, folds, missing, expected, notes)
    sweep.warnings = warnings + _overlap_warnings(sweep)
    sweep.explain = {k: f"{fold_dirs[k].name}/explain/" for k in sorted(folds) if (fold_dirs[k] / "explain").is_dir()}
    sweep.members = _ensemble_members(sweep_dir, min(folds))
    sweep.overrides = [] if sweep.members else _overrides(fold_dirs[min(folds)])
    sweep.config = read_config(fold_dirs[min(folds)])
    _read_validation(sweep, fold_dirs)
    return sweep


def read_config(run_dir: Path) -> dict:
    """A run's configuration as a plain dict: Hydra's ``.hydra/config.yaml`` (every group, but with
    ``${...}`` interpolations unresolved) with ``run.yaml`` laid over it (the resolved settings the run
    started with: data, augment, model, seed, test_checkpoint); either alone when the other is absent,
    empty when both are."""
    return _merged(_read_yaml(run_dir / ".hydra" / "config.yaml"), _read_yaml(run_dir / "run.yaml"))


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_validation(sweep: Sweep, fold_dirs: dict[int, Path]) -> None:
    """Each used fold's ``predictions_val.csv`` and fitted temperature, where its run wrote them."""
    for k in sorted(sweep.folds):
        csv_path = fold_dirs[k] / VALIDATION
        if csv_path.is_file():
            try:
                table, classes, _ = read_predictions(csv_path)
            except DataError as err:
                sweep.notes.append(f"fold_{k}: validation predictions not used ({err})")
                continue
            if classes == sweep.classes:
                sweep.validation[k] = table
        try:
            temperature = json.loads((fold_dirs[k] / "metrics_val.json").read_text(encoding="utf-8"))["temperature"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        sweep.temperatures[k] = float(temperature)


def _incomplete_warning(run_dir: Path, n_predictions: int) -> str | None:
    """Compare with the fold's test split (``split.json``): fast_dev_run or limit_test_batches
    leave test images without a prediction, and such a fold must not pass for a full one."""
    try:
        n_test = len(json.loads((run_dir / "split.json").read_text(encoding="utf-8"))["test"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if n_test != n_predictions:
        return (
            f"{run_dir.name}: predictions for {n_predictions} of its {n_test} test images "
            "(fast_dev_run or limit_test_batches?); its numbers are not the full fold's"
        )
    return None


def _overrides(run_dir: Path) -> list[str]:
    try:
        listed = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in (listed or []) if not str(o).startswith("data.fold=")]


def _ensemble_members(sweep_dir: Path, fold: int) -> dict[str, list[str]]:
    """Member directory name -> its overrides (read from the member's fold), for a sweep that
    ``ensemble_sweeps`` wrote; empty for any other sweep or an unreadable ``ensemble.json``."""
    try:
        listed = json.loads((sweep_dir / "ensemble.json").read_text(encoding="utf-8"))["members"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    members = {}
    for member in map(Path, listed):
        name = member.name if member.name not in members else str(member)  # member_1 under two sweeps
        members[name] = _overrides(member / f"fold_{fold}")
    return members


def _overlap_warnings(sweep: Sweep) -> list[str]:
    """Out-of-fold pooling assumes each image and patient is tested once; say so when it is not."""
    pooled = sweep.pooled()
    notes = []
    repeated = pooled.groupby("path")["fold"].nunique()
    if (repeated > 1).any():
        notes.append(
            f"{int((repeated > 1).sum())} image(s) appear in the test set of more than one fold "
            f"(e.g. {repeated[repeated > 1].index[0]}); the folds do not partition the data"
        )
    patients = pooled.groupby("group_id")["fold"].nunique()
    if (patients > 1).any():
        notes.append(
            f"{int((patients > 1).sum())} patient group(s) are tested in more than one fold "
            f"(e.g. {patients[patients > 1].index[0]}): folds were not patient-grouped"
        )
    return notes


__all__ = ["PREDICTIONS", "VALIDATION", "Sweep", "load_sweep", "read_config", "read_predictions"]
