"""Compare two cross-validation sweeps run on the same folds (e.g. attention-gated vs plain ResNet18).

The two sweeps must have tested exactly the same images in each fold they share; otherwise the
comparison is refused. Differences (A - B) are tested as paired:

- every metric: paired bootstrap that resamples patient groups once per replicate and scores both
  models on the same resample; 95 % percentile interval of the difference and a two-sided
  bootstrap p value; Holm correction over the headline metrics of a level (image or patient), macro
  sensitivity counted once (it is balanced accuracy for single-label data); per-class differences
  are shown with unadjusted p values, as exploratory;
- accuracy: exact McNemar test (``scipy.stats.binomtest`` on the discordant pairs; statsmodels'
  McNemar is the same test and is not a dependency). It treats units as independent, so the
  patient-level one is the one to trust; the image-level one is shown for completeness.

A headline difference is called significant when its Holm-adjusted bootstrap p value is below
0.05 (the smallest bootstrap p is 2 / (replicates + 1), so use at least 1000 replicates).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from skintumor.errors import DataError
from skintumor.evaluate.document import Document
from skintumor.evaluate.formatting import fmt, interval_text, json_safe, mean_sd_text, metric_label
from skintumor.evaluate.metrics import (
    ECE_BINS,
    HEADLINE,
    bootstrap_weights,
    metric_names,
    percentile_interval,
    weighted_metrics,
)
from skintumor.evaluate.summary import LEVELS, level_arrays, mean_sd, point_metrics
from skintumor.evaluate.sweep import Sweep, load_sweep

ALPHA = 0.05
# the headline metrics Holm corrects over: macro sensitivity is balanced accuracy (single-label data), so it
# is counted once; its row shows balanced accuracy's adjusted p
HOLM_FAMILY = [m for m in HEADLINE if m != "sens_macro"]


def aligned_predictions(a: Sweep, b: Sweep) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Both sweeps' out-of-fold predictions on the folds they share, row i = the same image.

    Returns (table A, table B, notes). Raises :class:`DataError` when the classes differ, no fold
    is shared, or a shared fold's test images (or their labels) differ between the sweeps.
    """
    if a.classes != b.classes:
        raise DataError(f"{b.directory}: classes {b.classes} differ from {a.directory}'s {a.classes}")
    shared = sorted(set(a.folds) & set(b.folds))
    notes = []
    for name, sweep, other in ((a.name, a, b), (b.name, b, a)):
        only = sorted(set(sweep.folds) - set(other.folds))
        if only:
            notes.append(
                f"fold(s) {', '.join(map(str, only))} have predictions only in {name}; the comparison leaves them out"
            )
    if not shared:
        raise DataError(f"{a.directory} and {b.directory} share no fold with predictions")
    tables_a, tables_b = [], []
    for k in shared:
        ta = a.folds[k].assign(fold=k).sort_values("path", kind="mergesort").reset_index(drop=True)
        tb = b.folds[k].assign(fold=k).sort_values("path", kind="mergesort").reset_index(drop=True)
        paths_a, paths_b = set(ta["path"]), set(tb["path"])
        if paths_a != paths_b or len(ta) != len(tb):
            only_a, only_b = sorted(paths_a - paths_b), sorted(paths_b - paths_a)
            example = (only_a or only_b or ["(same paths, different counts)"])[0]
            raise DataError(
                f"fold {k}: the test images of {a.directory} and {b.directory} differ "
                f"({len(only_a)} only in A, {len(only_b)} only in B, e.g. {example}); "
                "the sweeps did not use the same folds"
            )
        if not (ta["y"].to_numpy() == tb["y"].to_numpy()).all():
            bad = ta["path"][ta["y"].to_numpy() != tb["y"].to_numpy()].iloc[0]
            raise DataError(f"fold {k}: {bad} has different labels in {a.directory} and {b.directory}")
        tables_a.append(ta)
        tables_b.append(tb.assign(patient_id=ta["patient_id"], group_id=ta["group_id"]))
    return pd.concat(tables_a, ignore_index=True), pd.concat(tables_b, ignore_index=True), notes


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p values (NaN stays NaN); scipy only offers Benjamini-Hochberg."""
    p = np.asarray(p_values, dtype=float)
    defined = np.flatnonzero(~np.isnan(p))
    adjusted = np.full_like(p, np.nan)
    order = defined[np.argsort(p[defined])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided p value of "no difference" from bootstrap differences (share on the far side of 0)."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if not len(d):
        return math.nan
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test on paired correctness: binomial test of the discordant pairs."""
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    n = a_only + b_only
    p = binomtest(a_only, n, 0.5).pvalue if n else 1.0
    return {"a_right_b_wrong": a_only, "a_wrong_b_right": b_only, "p": float(p)}


def compare_level(
    ta: pd.DataFrame,
    tb: pd.DataFrame,
    classes: list[str],
    level: str,
    n_boot: int,
    seed: int,
    level_ci: float = 0.95,
    n_bins: int = ECE_BINS,
) -> dict:
    """Paired differences A - B of every metric at one level, on aligned tables."""
    arr_a, arr_b = level_arrays(ta, classes, level), level_arrays(tb, classes, level)
    assert (arr_a["y"] == arr_b["y"]).all() and (arr_a["cluster"] == arr_b["cluster"]).all()
    y, cluster = arr_a["y"], arr_a["cluster"]
    weights = bootstrap_weights(cluster, n_boot, seed)  # one resample, both models
    boot_a = weighted_metrics(y, arr_a["probs"], weights, classes, n_bins, arr_a["scores"])
    boot_b = weighted_metrics(y, arr_b["probs"], weights, classes, n_bins, arr_b["scores"])
    point_a, point_b = point_metrics(arr_a, classes, n_bins), point_metrics(arr_b, classes, n_bins)
    rows = {}
    for name in metric_names(classes):
        diff = boot_a[name] - boot_b[name]
        low, high = percentile_interval(diff, level_ci)
        rows[name] = {
            "a": point_a[name],
            "b": point_b[name],
            "diff": point_a[name] - point_b[name],
            "ci_low": low,
            "ci_high": high,
            "p": bootstrap_p(diff),
        }
    adjusted = holm([rows[name]["p"] for name in HOLM_FAMILY])
    for name, r in rows.items():
        r["p_holm"] = float(adjusted[HOLM_FAMILY.index(name)]) if name in HOLM_FAMILY else math.nan
        if name == "sens_macro" and "bal_acc" in rows:
            r["p_holm"] = rows["bal_acc"]["p_holm"]  # the same metric (HOLM_FAMILY)
        r["significant"] = bool(r["p_holm"] < ALPHA)  # per-class rows are exploratory: never "significant"
    correct_a = arr_a["probs"].argmax(1) == y
    correct_b = arr_b["probs"].argmax(1) == y
    return {"n": int(len(y)), "metrics": rows, "mcnemar_accuracy": mcnemar(correct_a, correct_b)}


def compare_sweeps(
    a: Sweep, b: Sweep, n_boot: int = 2000, seed: int = 0, level_ci: float = 0.95, n_bins: int = ECE_BINS
) -> dict:
    """All comparison numbers as a JSON-ready dict (see ``comparison.json``)."""
    ta, tb, notes = aligned_predictions(a, b)
    shared = sorted(set(ta["fold"]))
    result = {
        "a": str(a.directory),
        "b": str(b.directory),
        "name_a": a.name,
        "name_b": b.name,
        "overrides_a": a.overrides,
        "overrides_b": b.overrides,
        "members_a": a.members,
        "members_b": b.members,
        "classes": a.classes,
        "folds": shared,
        "notes": notes,
        "missing_a": {str(k): v for k, v in a.missing.items()},
        "missing_b": {str(k): v for k, v in b.missing.items()},
        "bootstrap": {"replicates": n_boot, "seed": seed, "level": level_ci, "unit": "group_id", "paired": True},
        "alpha": ALPHA,
        "correction": "Holm over the headline metrics of a level, macro sensitivity (= balanced accuracy) "
        "counted once; per-class p unadjusted",
    }
    names = metric_names(a.classes)
    for level in LEVELS:
        entry = compare_level(ta, tb, a.classes, level, n_boot, seed, level_ci, n_bins)
        for tag, table in (("a", ta), ("b", tb)):
            per_fold = {
                k: point_metrics(level_arrays(table[table["fold"] == k], a.classes, level), a.classes, n_bins)
                for k in shared
            }
            entry[f"per_fold_{tag}"] = {str(k): v for k, v in per_fold.items()}
            entry[f"mean_sd_{tag}"] = mean_sd(per_fold, names)
        result[level] = entry
    return result


def _diff_text(row: dict) -> str:
    sign = "+" if row["diff"] >= 0 else ""
    return f"{sign}{fmt(row['diff'])} {interval_text(row)}"


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


COMPARISON_HEADER = [
    "metric",
    "A folds mean ± SD",
    "B folds mean ± SD",
    "A pooled",
    "B pooled",
    "A - B [95% CI]",
    "p",
    "p (Holm)",
    "significant",
]


def comparison_rows(level_result: dict, names: list[str], classes: list[str]) -> list[list[str]]:
    rows = []
    for name in names:
        r = level_result["metrics"][name]
        ma, mb = level_result["mean_sd_a"][name], level_result["mean_sd_b"][name]
        verdict = ("**yes**" if r["significant"] else "no") if name in HEADLINE else "(exploratory)"
        rows.append(
            [
                metric_label(name, classes),
                mean_sd_text(ma, always_sd=True),
                mean_sd_text(mb, always_sd=True),
                fmt(r["a"]),
                fmt(r["b"]),
                _diff_text(r),
                _p_text(r["p"]),
                _p_text(r["p_holm"]),
                verdict,
            ]
        )
    return rows


def comparison_document(result: dict) -> Document:
    classes = result["classes"]
    doc = Document(f"Comparison: {result['name_a']} (A) vs {result['name_b']} (B)")
    doc.text(
        f"A = `{result['a']}`, B = `{result['b']}`. Same test images in folds "
        f"{', '.join(map(str, result['folds']))} (checked image by image)."
    )
    for tag in ("a", "b"):
        if result[f"overrides_{tag}"]:
            doc.text(f"{tag.upper()} run with: `" + " ".join(result[f"overrides_{tag}"]) + "`")
        members = result.get(f"members_{tag}") or {}
        if members:
            doc.text(
                f"{tag.upper()} is an ensemble of: "
                + "; ".join(
                    f"`{name}`" + (" run with `" + " ".join(o) + "`" if o else "") for name, o in members.items()
                )
            )
    for tag in ("a", "b"):
        for k, reason in sorted(result[f"missing_{tag}"].items()):
            doc.warning(f"fold {k} is missing in {result['name_' + tag]}: {reason}. It is left out of the comparison.")
    for note in result["notes"]:
        doc.warning(note)
    significant = [
        (level, name) for level in LEVELS for name, r in result[level]["metrics"].items() if r["significant"]
    ]
    if significant:
        doc.text(
            "**Significant differences** (Holm-adjusted paired bootstrap p < 0.05): "
            + "; ".join(
                f"{metric_label(n, classes)} at {lvl} level ({_diff_text(result[lvl]['metrics'][n])})"
                for lvl, n in significant
            )
        )
    else:
        doc.text("**No difference is significant** (Holm-adjusted paired bootstrap p < 0.05) at either level.")
    for level in LEVELS:
        entry = result[level]
        doc.heading(f"{level.capitalize()} level ({entry['n']} {level}s)")
        doc.table(COMPARISON_HEADER, comparison_rows(entry, list(HEADLINE), classes))
        mc = entry["mcnemar_accuracy"]
        doc.text(
            f"McNemar (exact) on {level}-level accuracy: A right & B wrong {mc['a_right_b_wrong']}, "
            f"A wrong & B right {mc['a_wrong_b_right']}, p = {_p_text(mc['p'])}"
            + (" (images of one patient are not independent: trust the patient level)." if level == "image" else ".")
        )
        doc.heading("Per class", 3)
        doc.table(
            COMPARISON_HEADER, comparison_rows(entry, [n for n in metric_names(classes) if n not in HEADLINE], classes)
        )
    doc.heading("Per fold (image level)", 3)
    header = ["fold"] + [f"{metric_label(m, classes)} A / B" for m in ("acc", "bal_acc", "auroc_macro", "ece")]
    doc.table(
        header,
        [
            [k]
            + [
                f"{fmt(result['image']['per_fold_a'][k][m])} / {fmt(result['image']['per_fold_b'][k][m])}"
                for m in ("acc", "bal_acc", "auroc_macro", "ece")
            ]
            for k in result["image"]["per_fold_a"]
        ],
    )
    doc.heading("How the test works", 3)
    doc.bullets(
        [
            f"Paired bootstrap: {result['bootstrap']['replicates']} replicates (seed {result['bootstrap']['seed']}) "
            "resample patient groups with replacement; both models are scored on the same resample and the "
            "difference A - B is recorded. Interval: 95 % percentile, not adjusted for the number of metrics (it "
            "can exclude 0 while the Holm-adjusted p is above 0.05); p: twice the share of replicates beyond 0.",
            "Holm correction over the headline metrics of a level, so looking at several metrics does not "
            "manufacture a significant one; per-class p values are unadjusted and only exploratory.",
            "Pooled = all shared out-of-fold predictions; fold mean ± SD = per-fold scores (not paired).",
        ]
    )
    return doc


def print_comparison(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for note in result["notes"]:
        console.print(f"[bold red]NOTE:[/] {note}", soft_wrap=True)
    for level in LEVELS:
        table = Table(
            title=f"{result['name_a']} (A) vs {result['name_b']} (B), {level} level, "
            f"folds {', '.join(map(str, result['folds']))}"
        )
        table.add_column("metric")
        for col in ("A", "B", "A - B [95% CI]", "p (Holm)", "sig."):
            table.add_column(col, justify="right", no_wrap=True)
        for row in comparison_rows(result[level], list(HEADLINE), result["classes"]):
            table.add_row(row[0], row[3], row[4], row[5], row[7], row[8].replace("**", ""))
        console.print(table)


def build_comparison(
    sweep_a: str | Path,
    sweep_b: str | Path,
    out_dir: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    n_bins: int = ECE_BINS,
    console=None,
) -> dict:
    """Compare two sweeps; write ``comparison.md``, ``comparison.html`` and ``comparison.json`` into
    ``out_dir`` (default ``SWEEP_A/compare_<name of B>``); print the headline tables."""
    a, b = load_sweep(sweep_a), load_sweep(sweep_b)
    result = compare_sweeps(a, b, n_boot=n_boot, seed=seed, n_bins=n_bins)
    out_dir = Path(out_dir) if out_dir is not None else a.directory / f"compare_{b.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    comparison_document(result).write(out_dir, "comparison")
    (out_dir / "comparison.json").write_text(json.dumps(json_safe(result), indent=2), encoding="utf-8")
    print_comparison(result, console)
    result["out_dir"] = str(out_dir)
    return result


__all__ = [
    "aligned_predictions",
    "holm",
    "bootstrap_p",
    "mcnemar",
    "compare_level",
    "compare_sweeps",
    "comparison_document",
    "print_comparison",
    "build_comparison",
]
