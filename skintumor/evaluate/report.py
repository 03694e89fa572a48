"""Cross-validation report: a sweep's numbers -> tables, figures, ``report.md``/``.html``, ``metrics_cv.json``.

Writing only: the sweep is read by :mod:`skintumor.evaluate.sweep` and its numbers computed by
:mod:`skintumor.evaluate.summary`; here they become text (:func:`fmt`, :func:`metric_label`,
:func:`summary_rows`, also used by :mod:`skintumor.evaluate.compare`), figures, the report
document, the terminal table and ``metrics_cv.json``.

A missing or failed fold is named at the top of the report and in the terminal, and every number
says which folds it covers. The page opens with the cohort and ends with a model card
(:mod:`skintumor.evaluate.model_card`) before the methods. Nothing here imports Hydra;
:func:`build_report` is notebook-friendly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skintumor.evaluate import figures
from skintumor.evaluate.document import Document
from skintumor.evaluate.formatting import ci_text, fmt, json_safe, mean_sd_text, metric_label
from skintumor.evaluate.metrics import ECE_BINS, HEADLINE, PER_CLASS
from skintumor.evaluate.model_card import model_card_section, setting
from skintumor.evaluate.summary import LEVELS, REPORT_FITTED, evaluate_sweep, level_arrays
from skintumor.evaluate.sweep import Sweep, load_sweep


def summary_rows(result: dict, names: list[str]) -> list[list[str]]:
    """Rows: metric | image mean±SD | image pooled [CI] | patient mean±SD | patient pooled [CI]."""
    rows = []
    for name in names:
        row = [metric_label(name, result["classes"])]
        for level in LEVELS:
            row += [mean_sd_text(result[level]["mean_sd"][name]), ci_text(result[level]["pooled"][name])]
        rows.append(row)
    return rows


SUMMARY_HEADER = [
    "metric",
    "images: folds mean ± SD",
    "images: pooled OOF [95% CI]",
    "patients: folds mean ± SD",
    "patients: pooled [95% CI]",
]


def write_figures(sweep: Sweep, result: dict, out_dir: Path) -> dict[str, str]:
    """Confusion matrices, ROC curves and reliability diagram as PNGs under ``out_dir/figures``."""
    fig_dir = out_dir / "figures"
    made = {}
    for level in LEVELS:
        made[f"confusion_{level}"] = figures.save(
            figures.confusion_figure(
                np.array(result[level]["confusion"]),
                sweep.classes,
                f"Pooled out-of-fold confusion, {level} level ({sweep.coverage()})",
            ),
            fig_dir / f"confusion_{level}.png",
        )
    per_fold = {}
    for k, table in sweep.folds.items():
        arrays = level_arrays(table, sweep.classes, "image")
        per_fold[k] = (arrays["y"], arrays["scores"])
    made["roc"] = figures.save(figures.roc_figure(per_fold, sweep.classes), fig_dir / "roc_curves.png")
    bins = {k: np.array(v, dtype=float) for k, v in result["image"]["calibration"].items()}
    made["reliability"] = figures.save(
        figures.reliability_figure(bins, result["image"]["pooled"]["ece"]["value"], "Pooled out-of-fold, image level"),
        fig_dir / "reliability.png",
    )
    if result.get("temperature"):
        for when in ("before", "after"):
            bins = {k: np.array(v, dtype=float) for k, v in result["temperature"][f"bins_{when}"].items()}
            made[f"reliability_{when}_temperature"] = figures.save(
                figures.reliability_figure(
                    bins,
                    result["temperature"][when]["ece"]["value"],
                    f"Raw probabilities {when} temperature scaling"
                    + (" (post hoc)" if result["temperature"].get("source") == REPORT_FITTED else ""),
                ),
                fig_dir / f"reliability_{when}_temperature.png",
            )
    return {k: v.relative_to(out_dir).as_posix() for k, v in made.items()}


def cohort_section(doc: Document, sweep: Sweep, result: dict) -> None:
    """Images, patients and groups per class (:func:`~skintumor.evaluate.summary.cohort_table`) and, from
    the first fold's configuration, where the images come from."""
    doc.heading("Cohort")
    cohort = result["cohort"]
    if sweep.missing:
        doc.text(
            f"The test sets of the tested folds only ({sweep.coverage()}): the missing folds' images are not counted."
        )
    else:
        doc.text("Every image is tested once across the folds, so the pooled test sets are the whole cohort.")
    source, root, size = (setting(sweep.config, f"data.{k}") for k in ("source", "root", "image_size"))
    if source or root or size:
        where = ", ".join(([f"source `{source}`"] if source else []) + ([f"root `{root}`"] if root is not None else []))
        doc.text(
            ("Data: " + where if where else "Images")
            + (f"; images resized to {size} x {size} px" if size else "")
            + " (first fold's configuration)."
        )
    rows = [
        [name, str(c["images"]), str(c["patients"]), str(c["groups"]), f"{100 * c['share']:.1f} %"]
        for name, c in [*cohort["per_class"].items(), ("total", cohort["total"])]
    ]
    doc.table(["class", "images", "patients", "duplicate-aware groups", "share of images"], rows)
    doc.text(
        "Groups (`group_id`): a patient merged with near-duplicate images of other patients; folds never split "
        "one. A patient or group with images of two classes counts in both rows, once in the total."
    )


def calibration_section(doc: Document, result: dict) -> None:
    """Brier score and ECEs of the raw and decided probabilities, the temperatures, and the conformal sets."""
    doc.heading("Calibration", 3)
    doc.text(
        "Raw: the network's probabilities (`score_` columns: softmax, with the temperature where one was "
        "fitted, before the class offsets). Decided: the probabilities after the decision rule (`p_`). "
        "Pooled out-of-fold, with 95 % group-bootstrap intervals; lower is better."
    )
    header = ["metric"] + [f"{level}s: {kind} [95% CI]" for level in LEVELS for kind in ("raw", "decided")]
    rows = []
    for name in ("brier", "ece", "ece_classwise"):
        row = [metric_label(name, result["classes"])]
        for level in LEVELS:
            row += [ci_text(result[level]["calibration_metrics"][kind][name]) for kind in ("raw", "decided")]
        rows.append(row)
    doc.table(header, rows)
    temperature = result.get("temperature")
    if temperature:
        per_fold = ", ".join(f"fold {k}: {fmt(t, 2)}" for k, t in temperature["per_fold"].items())
        if temperature["source"] == REPORT_FITTED:
            how = (
                "The runs used no temperature; one temperature T per fold, "
                f"{temperature['source']} (`predictions_val.csv`, never the test fold: lowest negative "
                f"log-likelihood of softmax(log(p) / T)), applied to that fold's test probabilities ({per_fold}). "
                "Post hoc: the runs' own probabilities are the ones before, and the rest of the report uses them."
            )
        else:
            how = f"Temperature {temperature['source']} ({per_fold})."
        doc.text(how + " T > 1: the network was overconfident; T < 1: underconfident. Raw probabilities, images:")
        doc.table(
            ["metric", "before temperature [95% CI]", "after [95% CI]"],
            [
                [metric_label(name, result["classes"])] + [ci_text(temperature[w][name]) for w in ("before", "after")]
                for name in ("brier", "ece", "ece_classwise")
            ],
        )
    conformal = result["conformal"]
    doc.heading("Conformal prediction sets", 3)
    if conformal["folds_without_validation"]:
        folds = conformal["folds_without_validation"]
        which = f"Folds {', '.join(map(str, folds))} have" if len(folds) > 1 else f"Fold {folds[0]} has"
        doc.text(f"{which} no validation predictions (`predictions_val.csv`; older runs): left out here.")
    if not conformal["methods"]:
        return
    doc.text(
        f"Calibrated {conformal['calibration']} (folds {', '.join(map(str, conformal['folds_used']))}); "
        "coverage = share of test images whose true class is in their set, size = mean number of classes in "
        "it. LAC is the method a model stores and `skintumor predict` shows; APS adapts the sets to each image "
        "but is conservative with few classes."
    )
    classes = result["classes"]
    header = ["method", "target", "coverage [95% CI]", "mean size [95% CI]"] + [
        f"{c}: coverage / size" for c in classes
    ]
    rows = []
    for method, targets in conformal["methods"].items():
        for target, entry in targets.items():
            per_class = [
                f"{fmt(entry['per_class'][c]['coverage'])} / {fmt(entry['per_class'][c]['mean_size'], 2)}"
                for c in classes
            ]
            coverage = f"{fmt(entry['coverage'])} [{', '.join(fmt(x) for x in entry['coverage_ci'])}]"
            size = f"{fmt(entry['mean_size'], 2)} [{', '.join(fmt(x, 2) for x in entry['mean_size_ci'])}]"
            rows.append([method.upper(), target, coverage, size] + per_class)
    doc.table(header, rows)


def report_document(
    sweep: Sweep, result: dict, figure_paths: dict[str, str], sections: Sequence[Document] = ()
) -> Document:
    """The report; ``sections``: finished parts from elsewhere (e.g. the explanations pooled over the
    folds, :mod:`skintumor.explain.pooled`), each under its title after the figures."""
    classes = sweep.classes
    doc = Document(f"Cross-validation report: {sweep.name}")
    doc.text(
        f"Sweep directory `{sweep.directory}`. Numbers cover **{sweep.coverage()}**: "
        f"{result['n_images']} test images from {result['n_patients']} patients "
        f"({result['n_groups']} duplicate-aware groups), classes {', '.join(classes)}."
    )
    if sweep.overrides:
        doc.text("Run with: `" + " ".join(sweep.overrides) + "`")
    if sweep.members:
        doc.text(f"Ensemble of {len(sweep.members)} sweeps (mean of their probabilities per test image):")
        doc.bullets([f"`{name}`" + (": `" + " ".join(o) + "`" if o else "") for name, o in sweep.members.items()])
    if result["n_patients"] == result["n_images"]:
        doc.text(
            "Note: every patient has a single image here (no patient ids?), so the patient level "
            "repeats the image level."
        )
    for k, reason in sorted(sweep.missing.items()):
        doc.warning(f"fold {k} is missing: {reason}. No number below includes it.")
    for warning in sweep.warnings:
        doc.warning(warning)
    for note in sweep.notes:
        doc.text(f"Note: {note}")
    cohort_section(doc, sweep, result)

    doc.heading("Main results")
    doc.text(
        "Folds mean ± SD: each fold's test set scored alone, then averaged over folds (sample SD). "
        "Pooled: all out-of-fold predictions scored together, with a 95 % percentile interval from "
        f"{result['bootstrap']['replicates']} bootstrap replicates that resample patient groups "
        f"(seed {result['bootstrap']['seed']})."
    )
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
            rows.append(
                [str(k), str(size["n"])] + list(map(str, size["per_class"])) + [fmt(metrics[m]) for m in HEADLINE]
            )
        doc.table(header, rows)

    calibration_section(doc, result)

    doc.heading("Figures")
    doc.figure(
        figure_paths["confusion_image"], "Confusion matrix, pooled out-of-fold, image level (counts, row-normalised)"
    )
    doc.figure(figure_paths["confusion_patient"], "Confusion matrix, pooled out-of-fold, patient level")
    doc.figure(figure_paths["roc"], "ROC curves per class (one-vs-rest): each fold, the vertical mean and ±1 SD band")
    doc.figure(
        figure_paths["reliability"],
        f"Reliability diagram, pooled out-of-fold, image level ({result['ece_bins']} equal-width bins)",
    )
    for when in ("before", "after"):
        if f"reliability_{when}_temperature" in figure_paths:
            doc.figure(
                figure_paths[f"reliability_{when}_temperature"],
                f"Reliability diagram of the raw probabilities {when} temperature scaling, image level "
                f"(temperature {result['temperature']['source']})",
            )

    if sweep.explain:
        doc.heading("Explanations")
        doc.bullets([f"fold {k}: [{link}]({link})" for k, link in sorted(sweep.explain.items())])
    for section in sections:
        doc.heading(section.title, 3 if sweep.explain else 2)
        doc.blocks += section.blocks

    card = model_card_section(sweep.config, result, classes)
    doc.heading(card.title)
    doc.blocks += card.blocks

    doc.heading("How the numbers are computed")
    mixed = result["patient"]["mixed_label_patients"]
    doc.bullets(
        [
            "Predicted class = argmax of the probabilities (`p_` columns). Per-class metrics are one-vs-rest; macro = "
            "unweighted mean over classes; balanced accuracy = macro sensitivity. AUROC (sklearn `roc_auc_score`) "
            "and the ROC curves rank the `score_` columns where a run wrote them: the probabilities before the class "
            "offsets chosen on validation (`model.decision=balanced`), which move the decision, not the ranking.",
            f"ECE: top-label, {result['ece_bins']} equal-width confidence bins on [0, 1], weighted by bin size; "
            "class-wise ECE: the mean over classes of the ECE of each class's probability (its own bins). "
            "Brier score: mean over images of the squared distance between the probabilities and the one-hot label.",
            *(
                [
                    "Temperature fitted by the report (the runs fitted none): per fold, the T in [0.05, 20] that "
                    "minimises the negative log-likelihood of softmax(log(p) / T) on the fold's validation "
                    "predictions (bounded search on log T), then applied to its test probabilities."
                ]
                if (result.get("temperature") or {}).get("source") == REPORT_FITTED
                else []
            ),
            "Conformal sets: for each fold, the threshold is the conformal quantile of the true classes' "
            "nonconformity scores on its validation split (LAC: 1 - p; APS: mass of the classes at least as likely); "
            "the guarantee is marginal (over images), not per class or patient.",
            "Patient level: a patient's image probabilities are averaged and scored against the patient's label. "
            "A patient with images of different classes counts once per class (each averaging only that class's "
            f"images); {len(mixed)} such patient(s) here.",
            "Bootstrap: resamples groups (`group_id`: a patient merged with near-duplicate images of other "
            "patients) with replacement, so correlated images never count as independent evidence. ECE intervals "
            "are shifted down by the replicates' mean excess over the estimate: repeating images in a resample "
            "inflates a binned calibration error by itself.",
            "Pooled numbers mix the probabilities of k different fold models; the fold mean ± SD shows how much "
            "the models differ. A metric undefined in a fold (e.g. no positives) is left out of that fold's mean "
            "and the count of folds used is in `metrics_cv.json`.",
        ]
    )
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
            table.add_row(row[0], *row[1 + 2 * i : 3 + 2 * i])
        console.print(table)


def build_report(
    sweep_dir: str | Path,
    n_boot: int = 2000,
    seed: int = 0,
    n_bins: int = ECE_BINS,
    console=None,
    sections: Sequence[Document] = (),
) -> dict:
    """Load a sweep, compute everything, write ``report.md``, ``report.html``, ``figures/`` and
    ``metrics_cv.json`` into the sweep directory, print the main table; returns the numbers.
    ``sections``: parts written elsewhere, rendered as they are (see :func:`report_document`)."""
    sweep = load_sweep(sweep_dir)
    result = evaluate_sweep(sweep, n_boot=n_boot, seed=seed, n_bins=n_bins)
    figure_paths = write_figures(sweep, result, sweep.directory)
    result["figures"] = figure_paths
    report_document(sweep, result, figure_paths, sections).write(sweep.directory, "report")
    (sweep.directory / "metrics_cv.json").write_text(json.dumps(json_safe(result), indent=2), encoding="utf-8")
    print_summary(result, console)
    return result


__all__ = [
    "write_figures",
    "cohort_section",
    "calibration_section",
    "report_document",
    "print_summary",
    "build_report",
    "summary_rows",
]
