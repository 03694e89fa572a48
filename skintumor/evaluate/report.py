"""Cross-validation report: every fold's test predictions -> tables, figures, ``metrics_cv.json``.

A sweep directory holds one run directory per outer fold, ``fold_0 ... fold_{k-1}``, each with
``predictions_test.csv`` (columns ``path, patient_id, group_id, label, p_<class>..., pred``; the
class order is the order of the ``p_`` columns; optional ``score_<class>...``, the probabilities
before class offsets, are what AUROC ranks) and, when written by Hydra, ``.hydra/config.yaml``
(``data.n_folds`` says how many folds there should be).

Numbers reported, at image level and at patient level (a patient's images averaged, see
:func:`skintumor.evaluate.metrics.patient_level`):

- per fold, and mean +- SD over the folds that have predictions;
- pooled over all out-of-fold predictions, with 95 % percentile intervals from a bootstrap that
  resamples duplicate groups (patients merged with their near-duplicates) with replacement.

A missing or failed fold is named at the top of the report and in the terminal, and every number
says which folds it covers. Nothing here imports Hydra; :func:`build_report` is notebook-friendly.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from skintumor.data.manifest import DataError, read_user_csv
from skintumor.evaluate import figures
from skintumor.evaluate.document import Document
from skintumor.evaluate.metrics import (
    ECE_BINS, HEADLINE, PER_CLASS, calibration_bins, classification_metrics, confidence_intervals,
    metric_names, patient_level,
)

PREDICTIONS = "predictions_test.csv"
LEVELS = ("image", "patient")
LABELS = {"acc": "accuracy", "bal_acc": "balanced accuracy", "auroc_macro": "AUROC (macro)",
          "f1_macro": "F1 (macro)", "sens_macro": "sensitivity (macro)", "spec_macro": "specificity (macro)",
          "prec_macro": "precision (macro)", "ece": "ECE (top-label)", "sens": "sensitivity",
          "spec": "specificity", "prec": "precision", "f1": "F1", "auroc": "AUROC", "acc_ovr": "accuracy (one-vs-rest)"}


def metric_label(name: str, classes: list[str]) -> str:
    """Readable name of a metric key, e.g. ``sens_lipoma`` -> ``lipoma: sensitivity``."""
    if name in LABELS:
        return LABELS[name]
    for c in classes:
        for m in PER_CLASS:
            if name == f"{m}_{c}":
                return f"{c}: {LABELS['acc_ovr' if m == 'acc' else m]}"
    return name


# --- loading ---------------------------------------------------------------------------------

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
        suffix = d.name[len("fold_"):]
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
    table = read_user_csv(csv_path, "predictions file",
                          dtype={"path": str, "patient_id": str, "group_id": str, "label": str})
    classes = [c[2:] for c in table.columns if c.startswith("p_")]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing or len(classes) < 2:
        raise DataError(f"{csv_path}: needs columns path, label and at least two p_<class> columns "
                        f"(has: {', '.join(map(str, table.columns))})")
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
        raise DataError(f"{csv_path}: score_ columns ({', '.join(scores)}) must name the p_ classes "
                        f"({', '.join(classes)}) in the same order")
    # score_: the probabilities before class offsets, which AUROC ranks; without them, p_
    table[[f"score_{c}" for c in classes]] = _probabilities(table, "score_", classes, csv_path) if scores else probs
    if "pred" in table.columns:
        argmax = np.asarray(classes)[probs.argmax(1)]
        given = [classes[int(v)] if v.isdigit() and int(v) < len(classes) else v for v in table["pred"].astype(str)]
        disagree = int((np.asarray(given) != argmax).sum())
        if disagree:
            notes.append(f"{csv_path}: the pred column disagrees with argmax(p_) in {disagree} row(s); "
                         "the report uses argmax(p_)")
    return table, classes, notes


def _probabilities(table: pd.DataFrame, prefix: str, classes: list[str], csv_path: Path) -> np.ndarray:
    """The ``<prefix><class>`` columns as (N, C) probabilities, checked, rows rescaled to sum to 1
    (undoing CSV rounding); DataError naming the file otherwise."""
    probs = table[[f"{prefix}{c}" for c in classes]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise DataError(f"{csv_path}: {prefix} columns must be finite probabilities >= 0")
    sums = probs.sum(1)
    if np.abs(sums - 1).max() > 0.01:
        raise DataError(f"{csv_path}: {prefix} columns must sum to 1 per row (row {int(np.abs(sums - 1).argmax()) + 2} "
                        f"sums to {sums[np.abs(sums - 1).argmax()]:.3f}); logits instead of probabilities?")
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
        notes.append("data.n_folds not found in .hydra/config.yaml or multirun.yaml; "
                     f"expecting folds 0..{n_folds - 1} from the directory names")
    expected = list(range(n_folds))
    extra = sorted(set(fold_dirs) - set(expected))
    if extra:
        notes.append(f"fold directories {', '.join(map(str, extra))} lie outside data.n_folds={n_folds} and are ignored")
    folds, missing, classes, warnings = {}, {}, None, []
    for k in expected:
        if k not in fold_dirs:
            missing[k] = f"directory fold_{k} is absent"
            continue
        csv_path = fold_dirs[k] / PREDICTIONS
        if not csv_path.is_file():
            missing[k] = f"fold_{k} has no {PREDICTIONS} (run failed or unfinished)"
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
        raise DataError(f"{sweep_dir}: no fold has usable predictions ("
                        + "; ".join(missing.values()) + ")")
    sweep = Sweep(sweep_dir, classes, folds, missing, expected, notes)
    sweep.warnings = warnings + _overlap_warnings(sweep)
    sweep.explain = {k: f"{fold_dirs[k].name}/explain/" for k in sorted(folds)
                     if (fold_dirs[k] / "explain").is_dir()}
    sweep.members = _ensemble_members(sweep_dir, min(folds))
    sweep.overrides = [] if sweep.members else _overrides(fold_dirs[min(folds)])
    return sweep


def _incomplete_warning(run_dir: Path, n_predictions: int) -> str | None:
    """Compare with the fold's test split (``split.json``): fast_dev_run or limit_test_batches
    leave test images without a prediction, and such a fold must not pass for a full one."""
    try:
        n_test = len(json.loads((run_dir / "split.json").read_text(encoding="utf-8"))["test"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if n_test != n_predictions:
        return (f"{run_dir.name}: predictions for {n_predictions} of its {n_test} test images "
                "(fast_dev_run or limit_test_batches?); its numbers are not the full fold's")
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
        notes.append(f"{int((repeated > 1).sum())} image(s) appear in the test set of more than one fold "
                     f"(e.g. {repeated[repeated > 1].index[0]}); the folds do not partition the data")
    patients = pooled.groupby("group_id")["fold"].nunique()
    if (patients > 1).any():
        notes.append(f"{int((patients > 1).sum())} patient group(s) are tested in more than one fold "
                     f"(e.g. {patients[patients > 1].index[0]}): folds were not patient-grouped")
    return notes


# --- numbers ---------------------------------------------------------------------------------

def level_arrays(table: pd.DataFrame, classes: list[str], level: str) -> dict[str, np.ndarray]:
    """``y`` (N,), ``probs`` (N, C) (decision), ``scores`` (N, C) (ranking), ``cluster`` (N,)
    (bootstrap unit = group_id) for one level."""
    y = table["y"].to_numpy(int)
    probs = table[[f"p_{c}" for c in classes]].to_numpy(float)
    scores = table[[f"score_{c}" for c in classes]].to_numpy(float)
    if level == "image":
        return {"y": y, "probs": probs, "scores": scores, "cluster": table["group_id"].to_numpy(str),
                "patient_id": table["patient_id"].to_numpy(str), "mixed": []}
    if level == "patient":
        return patient_level(y, probs, table["patient_id"].to_numpy(str), table["group_id"].to_numpy(str), scores)
    raise ValueError(f"level must be one of {LEVELS}")


def mean_sd(per_fold: dict[int, dict[str, float]], names: list[str]) -> dict[str, dict[str, float]]:
    """Mean and sample SD over folds of each metric, skipping folds where it is undefined (NaN)."""
    out = {}
    for name in names:
        values = np.array([m[name] for m in per_fold.values()], dtype=float)
        values = values[~np.isnan(values)]
        out[name] = {"mean": float(values.mean()) if len(values) else math.nan,
                     "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "n_folds": int(len(values))}
    return out


def evaluate_sweep(sweep: Sweep, n_boot: int = 2000, seed: int = 0, level_ci: float = 0.95,
                   n_bins: int = ECE_BINS) -> dict:
    """All numbers of the report as a JSON-ready dict (see ``metrics_cv.json``)."""
    names = metric_names(sweep.classes)
    pooled = sweep.pooled()
    result = {
        "sweep_dir": str(sweep.directory), "classes": sweep.classes, "folds_expected": sweep.expected,
        "folds_used": sorted(sweep.folds), "folds_missing": {str(k): v for k, v in sorted(sweep.missing.items())},
        "coverage": sweep.coverage(), "overrides": sweep.overrides, "members": sweep.members, "notes": sweep.notes, "warnings": sweep.warnings, "explain": {str(k): v for k, v in sweep.explain.items()},
        "bootstrap": {"replicates": n_boot, "seed": seed, "level": level_ci, "unit": "group_id (patient merged "
                      "with its near-duplicates)", "interval": "percentile"},
        "ece_bins": n_bins,
        "n_images": int(len(pooled)), "n_patients": int(pooled["patient_id"].nunique()),
        "n_groups": int(pooled["group_id"].nunique()),
    }
    for level in LEVELS:
        per_fold, sizes = {}, {}
        for k, table in sorted(sweep.folds.items()):
            arrays = level_arrays(table, sweep.classes, level)
            per_fold[k] = classification_metrics(arrays["y"], arrays["probs"], sweep.classes, n_bins, arrays["scores"])
            sizes[k] = {"n": int(len(arrays["y"])), "per_class": np.bincount(arrays["y"], minlength=len(sweep.classes)).tolist()}
        arrays = level_arrays(pooled, sweep.classes, level)
        y, probs = arrays["y"], arrays["probs"]
        conf = np.zeros((len(sweep.classes),) * 2, dtype=int)
        np.add.at(conf, (y, probs.argmax(1)), 1)
        result[level] = {
            "per_fold": {str(k): v for k, v in per_fold.items()},
            "fold_sizes": {str(k): v for k, v in sizes.items()},
            "mean_sd": mean_sd(per_fold, names),
            "pooled": confidence_intervals(y, probs, arrays["cluster"], sweep.classes, n_boot, seed, level_ci, n_bins,
                                           arrays["scores"]),
            "confusion": conf.tolist(),
            "calibration": {k: v.tolist() for k, v in calibration_bins(y, probs, n_bins).items()},
            "n": int(len(y)),
            "mixed_label_patients": list(arrays["mixed"]),
        }
    return result


# --- writing ---------------------------------------------------------------------------------

def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean_sd_text(entry: dict) -> str:
    text = fmt(entry["mean"])
    if not math.isnan(entry["sd"]):
        text += f" ± {fmt(entry['sd'])}"
    return text


def _ci_text(entry: dict) -> str:
    return f"{fmt(entry['value'])} [{fmt(entry['ci_low'])}, {fmt(entry['ci_high'])}]"


def summary_rows(result: dict, names: list[str]) -> list[list[str]]:
    """Rows: metric | image mean±SD | image pooled [CI] | patient mean±SD | patient pooled [CI]."""
    rows = []
    for name in names:
        row = [metric_label(name, result["classes"])]
        for level in LEVELS:
            row += [_mean_sd_text(result[level]["mean_sd"][name]), _ci_text(result[level]["pooled"][name])]
        rows.append(row)
    return rows


SUMMARY_HEADER = ["metric", "images: folds mean ± SD", "images: pooled OOF [95% CI]",
                  "patients: folds mean ± SD", "patients: pooled [95% CI]"]


def write_figures(sweep: Sweep, result: dict, out_dir: Path) -> dict[str, str]:
    """Confusion matrices, ROC curves and reliability diagram as PNGs under ``out_dir/figures``."""
    fig_dir = out_dir / "figures"
    made = {}
    for level in LEVELS:
        made[f"confusion_{level}"] = figures.save(figures.confusion_figure(
            np.array(result[level]["confusion"]), sweep.classes,
            f"Pooled out-of-fold confusion, {level} level ({sweep.coverage()})"), fig_dir / f"confusion_{level}.png")
    per_fold = {}
    for k, table in sweep.folds.items():
        arrays = level_arrays(table, sweep.classes, "image")
        per_fold[k] = (arrays["y"], arrays["scores"])
    made["roc"] = figures.save(figures.roc_figure(per_fold, sweep.classes), fig_dir / "roc_curves.png")
    bins = {k: np.array(v, dtype=float) for k, v in result["image"]["calibration"].items()}
    made["reliability"] = figures.save(figures.reliability_figure(
        bins, result["image"]["pooled"]["ece"]["value"], "Pooled out-of-fold, image level"), fig_dir / "reliability.png")
    return {k: v.relative_to(out_dir).as_posix() for k, v in made.items()}


def report_document(sweep: Sweep, result: dict, figure_paths: dict[str, str]) -> Document:
    classes = sweep.classes
    doc = Document(f"Cross-validation report: {sweep.name}")
    doc.text(f"Sweep directory `{sweep.directory}`. Numbers cover **{sweep.coverage()}**: "
             f"{result['n_images']} test images from {result['n_patients']} patients "
             f"({result['n_groups']} duplicate-aware groups), classes {', '.join(classes)}.")
    if sweep.overrides:
        doc.text("Run with: `" + " ".join(sweep.overrides) + "`")
    if sweep.members:
        doc.text(f"Ensemble of {len(sweep.members)} sweeps (mean of their probabilities per test image):")
        doc.bullets([f"`{name}`" + (": `" + " ".join(o) + "`" if o else "") for name, o in sweep.members.items()])
    if result["n_patients"] == result["n_images"]:
        doc.text("Note: every patient has a single image here (no patient ids?), so the patient level "
                 "repeats the image level.")
    for k, reason in sorted(sweep.missing.items()):
        doc.warning(f"fold {k} is missing: {reason}. No number below includes it.")
    for warning in sweep.warnings:
        doc.warning(warning)
    for note in sweep.notes:
        doc.text(f"Note: {note}")

    doc.heading("Main results")
    doc.text("Folds mean ± SD: each fold's test set scored alone, then averaged over folds (sample SD). "
             "Pooled: all out-of-fold predictions scored together, with a 95 % percentile interval from "
             f"{result['bootstrap']['replicates']} bootstrap replicates that resample patient groups "
             f"(seed {result['bootstrap']['seed']}).")
    doc.table(SUMMARY_HEADER, summary_rows(result, list(HEADLINE)))
    doc.heading("Per class (one-vs-rest)", 3)
    doc.table(SUMMARY_HEADER, summary_rows(result, [f"{m}_{c}" for c in classes for m in PER_CLASS]))

    for level in LEVELS:
        doc.heading(f"Per fold, {level} level", 3)
        header = ["fold", "n"] + [f"n {c}" for c in classes] + [metric_label(m, classes) for m in HEADLINE]
        rows = []
        for k in sweep.expected:
            if k in sweep.missing:
                rows.append([str(k), "missing"] + [""] * (len(classes) + len(HEADLINE)))
                continue
            size, metrics = result[level]["fold_sizes"][str(k)], result[level]["per_fold"][str(k)]
            rows.append([str(k), str(size["n"])] + list(map(str, size["per_class"])) + [fmt(metrics[m]) for m in HEADLINE])
        doc.table(header, rows)

    doc.heading("Figures")
    doc.figure(figure_paths["confusion_image"], "Confusion matrix, pooled out-of-fold, image level (counts, row-normalised)")
    doc.figure(figure_paths["confusion_patient"], "Confusion matrix, pooled out-of-fold, patient level")
    doc.figure(figure_paths["roc"], "ROC curves per class (one-vs-rest): each fold, the vertical mean and ±1 SD band")
    doc.figure(figure_paths["reliability"], f"Reliability diagram, pooled out-of-fold, image level ({result['ece_bins']} equal-width bins)")

    if sweep.explain:
        doc.heading("Explanations")
        doc.bullets([f"fold {k}: [{link}]({link})" for k, link in sorted(sweep.explain.items())])

    doc.heading("How the numbers are computed")
    mixed = result["patient"]["mixed_label_patients"]
    doc.bullets([
        "Predicted class = argmax of the probabilities (`p_` columns). Per-class metrics are one-vs-rest; macro = "
        "unweighted mean over classes; balanced accuracy = macro sensitivity. AUROC (sklearn `roc_auc_score`) "
        "and the ROC curves rank the `score_` columns where a run wrote them: the probabilities before the class "
        "offsets chosen on validation (`model.decision=balanced`), which move the decision, not the ranking.",
        f"ECE: top-label, {result['ece_bins']} equal-width confidence bins on [0, 1], weighted by bin size.",
        "Patient level: a patient's image probabilities are averaged and scored against the patient's label. "
        "A patient with images of different classes counts once per class (each averaging only that class's "
        f"images); {len(mixed)} such patient(s) here.",
        "Bootstrap: resamples groups (`group_id`: a patient merged with near-duplicate images of other "
        "patients) with replacement, so correlated images never count as independent evidence.",
        "Pooled numbers mix the probabilities of k different fold models; the fold mean ± SD shows how much "
        "the models differ. A metric undefined in a fold (e.g. no positives) is left out of that fold's mean "
        "and the count of folds used is in `metrics_cv.json`.",
    ])
    return doc


def print_summary(result: dict, console=None, title: str | None = None) -> None:
    """The main table in the terminal (rich), preceded by plain warnings about missing folds."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for k, reason in sorted(result["folds_missing"].items(), key=lambda kv: int(kv[0])):
        console.print(f"[bold red]MISSING fold {k}:[/] {reason} (not averaged)", soft_wrap=True)
    for warning in result["warnings"]:
        console.print(f"[bold red]WARNING:[/] {warning}", soft_wrap=True)
    rows = summary_rows(result, list(HEADLINE))
    for i, level in enumerate(LEVELS):  # one table per level keeps it readable in 80 columns
        table = Table(title=f"{title or 'Cross-validation'}, {level} level, {result['coverage']}")
        table.add_column("metric")
        table.add_column("folds mean ± SD", justify="right", no_wrap=True)
        table.add_column("pooled [95% CI]", justify="right", no_wrap=True)
        for row in rows:
            table.add_row(row[0], *row[1 + 2 * i: 3 + 2 * i])
        console.print(table)


def json_safe(value):
    """NaN -> None (JSON has no NaN), tuple -> list, keys -> str; recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def build_report(sweep_dir: str | Path, n_boot: int = 2000, seed: int = 0, n_bins: int = ECE_BINS,
                 console=None) -> dict:
    """Load a sweep, compute everything, write ``report.md``, ``report.html``, ``figures/`` and
    ``metrics_cv.json`` into the sweep directory, print the main table; returns the numbers."""
    sweep = load_sweep(sweep_dir)
    result = evaluate_sweep(sweep, n_boot=n_boot, seed=seed, n_bins=n_bins)
    figure_paths = write_figures(sweep, result, sweep.directory)
    result["figures"] = figure_paths
    report_document(sweep, result, figure_paths).write(sweep.directory, "report")
    (sweep.directory / "metrics_cv.json").write_text(json.dumps(json_safe(result), indent=2), encoding="utf-8")
    print_summary(result, console)
    return result


__all__ = ["Sweep", "json_safe", "load_sweep", "read_predictions", "level_arrays", "mean_sd", "evaluate_sweep",
           "write_figures", "report_document", "print_summary", "build_report", "metric_label", "fmt"]
