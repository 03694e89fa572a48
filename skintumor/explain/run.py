"""Explain a trained run's test fold: maps, overlays, galleries, agreement and faithfulness statistics.

``explain_run(run_dir)`` reads the checkpoint the run tested (``checkpoints/best.ckpt``, or ``last.ckpt``
after ``test_checkpoint=last``; tensors and plain data only), ``manifest.csv`` and ``split.json``,
decodes the test images exactly as training did (same size, same normalisation, the scan-area crop
if the run used it),
and writes into ``run_dir/explain/``:

    overlays/<k>_<name>.png   one figure per test image (image, every map, lesion outline, classes)
    gallery_<class>.png       correct and wrong cases of each true class
    agreement.csv             one row per (test image, map): energy, hit, iou, finding-region energies,
                              ROAD scores, the image's class, prediction, probabilities and findings
    agreement.json / .md      the statistics (see :mod:`skintumor.explain.agreement`)

It never trains and never reads the training or validation images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from skintumor.errors import DataError
from skintumor.evaluate.finished_run import FinishedRun
from skintumor.explain import agreement as agr
from skintumor.explain.cam import METHODS, explain_batch
from skintumor.explain.faithfulness import PERCENTILES, road_scores
from skintumor.explain.figures import TITLES, Case, gallery_figure
from skintumor.explain.overlay import overlay_panels


@dataclass
class ExplainSettings:
    """methods: maps to compute (:data:`METHODS`); target: explain the "pred"icted or the "true" class;
    target_layer: layer of the gradient CAMs; tolerance: pointing-game px (None: 15 px at 224);
    threshold: IoU threshold as a share of the map's maximum; road_images: ROAD on N test images
    spread evenly over the fold (0: none; ROAD costs a sparse solve per image, map and removal share);
    gallery_method: map shown in galleries."""

    methods: tuple[str, ...] = METHODS
    target: str = "pred"
    target_layer: str = "layer4"
    tolerance: int | None = None
    threshold: float = 0.5
    road_images: int = 40
    road_percentiles: tuple[int, ...] = PERCENTILES
    gallery_method: str = "gradcam"
    overlays: int | None = None  # None: every test image
    batch_size: int = 16
    seed: int = 0


def explain_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: ExplainSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Explain ``run_dir``'s test fold into ``out_dir`` (default ``run_dir/explain``);
    returns agreement.json's content."""
    settings = settings or ExplainSettings()
    if settings.target not in ("pred", "true"):
        raise ValueError(f"target must be 'pred' or 'true', got {settings.target!r}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "explain"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: already holds explanations (pass --overwrite to replace them)")
    run = FinishedRun.open(run_dir)
    if not run.rows["test"]:
        raise DataError(f"{run_dir / 'split.json'}: the test fold is empty")
    classifier, test_rows = run.classifier, run.rows["test"]
    hp = classifier.hparams
    classes = list(hp.classes)
    test = run.manifest.subset(test_rows)
    images, masks = run.decode("test")
    methods = tuple(settings.methods)
    if "random" not in methods:  # every agreement and faithfulness test is against the random map
        methods += ("random",)
    rng = np.random.default_rng(settings.seed)
    centre = agr.centre_map((int(hp.image_size),) * 2)

    records, cases = [], []
    # ROAD on images spread evenly over the test fold (it is sorted by class), not its first rows
    road_set = set(
        np.unique(np.linspace(0, len(test) - 1, min(settings.road_images, len(test))).round().astype(int))
        if settings.road_images > 0
        else []
    )
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    columns = [
        TextColumn("[bold]explain[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("test images", total=len(test))
        for start in range(0, len(test), settings.batch_size):
            idx = list(range(start, min(start + settings.batch_size, len(test))))
            x = torch.from_numpy(np.stack([images[i] for i in idx])).float().div(255.0)
            x = ((x - float(hp.mean)) / float(hp.std))[:, None]
            with torch.no_grad():  # as the test predictions were made (TTA, decision offsets)
                probs = classifier.predict_proba(x.contiguous(memory_format=torch.channels_last)).numpy()
            labels = [test.labels[i] for i in idx]
            targets = [int(p.argmax()) for p in probs] if settings.target == "pred" else labels
            maps = explain_batch(classifier, x, targets, methods, settings.target_layer, rng)
            maps["centre"] = np.repeat(centre[None], len(idx), axis=0)
            road = {}
            chosen = [j for j, i in enumerate(idx) if i in road_set]
            if chosen:
                bar.update(task, description="test images (ROAD)")
                for method in [m for m in maps if m != "centre"]:
                    scores = road_scores(
                        classifier,
                        x[chosen],
                        maps[method][chosen],
                        [targets[j] for j in chosen],
                        settings.road_percentiles,
                        seed=settings.seed + start,
                    )
                    road[method] = {j: {k: float(v[n]) for k, v in scores.items()} for n, j in enumerate(chosen)}
            for j, i in enumerate(idx):
                row = test.table.iloc[i]
                base = {
                    "image": i,
                    "row": test_rows[i],
                    "path": row["path"],
                    "label": row["label"],
                    "pred": classes[int(probs[j].argmax())],
                    "target": classes[targets[j]],
                    "has_mask": masks[i] is not None and bool(masks[i].any()),
                }
                base |= {f"p_{c}": float(probs[j, k]) for k, c in enumerate(classes)}
                base |= {f: row[f] for f in agr.FINDING_REGIONS if f in test.table.columns}
                for method, m in maps.items():
                    rec = (
                        base
                        | {"method": method}
                        | agr.image_metrics(m[j], masks[i], settings.tolerance, settings.threshold)
                    )
                    rec |= road.get(method, {}).get(j, {})
                    records.append(rec)
                case = Case(
                    Path(row["path"]).stem,
                    images[i],
                    {m: maps[m][j] for m in methods if m in maps},
                    masks[i],
                    row["label"],
                    base["pred"],
                    {c: base[f"p_{c}"] for c in classes},
                )
                cases.append(case)
                if settings.overlays is None or i < settings.overlays:
                    panel_maps = {m: case.maps[m] for m in methods if m != "random" and m in case.maps}
                    listed = ", ".join(f"{k} {v:.2f}" for k, v in case.probs.items())
                    caption = f"{case.name}  true: {case.label}  predicted: {case.pred}\n[{listed}]"
                    overlay_panels(case.image, panel_maps, case.mask, caption, TITLES).save(
                        out / "overlays" / f"{i:04d}_{_safe(case.name)}.png"
                    )
            bar.update(task, advance=len(idx), description="test images")

    per_image = pd.DataFrame(records)
    for col in ("morf", "lerf", "road"):
        if col not in per_image:
            per_image[col] = np.nan
    per_image.to_csv(out / "agreement.csv", index=False, float_format="%.6f")
    for cls in classes:
        gallery_figure(cases, cls, out / f"gallery_{_safe(cls)}.png", settings.gallery_method)

    shown = [m for m in methods if m != "random"]
    tests = agr.compare_to_baselines(per_image[per_image["has_mask"]], shown)
    tests = tests[tests["n"] > 0].reset_index(drop=True)
    faith = faithfulness_tests(per_image, shown)
    findings = agr.findings_tests(per_image[per_image["has_mask"]], shown)
    metrics_file = run_dir / "metrics_test.json"
    result = {
        "run_dir": str(run_dir),
        "checkpoint": f"checkpoints/{run.checkpoint}",
        "image_size": int(hp.image_size),
        "classes": classes,
        "n_test": len(test),
        "n_with_mask": int(sum(m is not None and m.any() for m in masks)),
        "settings": {
            "methods": list(methods),
            "target": settings.target,
            "target_layer": settings.target_layer,
            "tolerance_px": settings.tolerance
            if settings.tolerance is not None
            else agr.default_tolerance(int(hp.image_size)),
            "iou_threshold": settings.threshold,
            "centre_sigma": 0.25,
            "road_images": len(road_set),
            "road_percentiles": list(settings.road_percentiles),
            "seed": settings.seed,
        },
        "accuracy": float(
            (per_image.drop_duplicates("image")["pred"] == per_image.drop_duplicates("image")["label"]).mean()
        ),
        "test_metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else {},
        "agreement": _records(tests),
        "faithfulness": _records(faith),
        "findings": _records(findings),
    }
    result["test_metrics"] = {k: v for k, v in result["test_metrics"].items() if isinstance(v, (int, float))}
    (out / "agreement.json").write_text(json.dumps(result, indent=2, allow_nan=True))
    (out / "agreement.md").write_text(markdown_report(result))
    return result


def faithfulness_tests(per_image: pd.DataFrame, methods) -> pd.DataFrame:
    """ROAD score of each method against the random map on the same images (Wilcoxon), all and per class."""
    scored = per_image[per_image["road"].notna()]
    if scored.empty:
        return pd.DataFrame(columns=["subset", "method", "baseline", "metric", "n", "method_value", "r", "p", "q"])
    table = agr.compare_to_baselines(scored, methods, baselines=("random",), metrics=("road", "morf", "lerf"))
    return table[table["n"] > 0].reset_index(drop=True)


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records")) if len(table) else []


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _p(p: float) -> str:
    if p is None or p != p:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _v(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def markdown_report(result: dict) -> str:
    """agreement.md: settings, agreement with lesions vs baselines, faithfulness, findings."""
    s = result["settings"]
    lines = [
        f"# Explanations of {result['run_dir']}",
        "",
        f"Test fold: {result['n_test']} images ({result['n_with_mask']} with a lesion mask), "
        f"{result['image_size']} px, accuracy {result['accuracy']:.3f}. Maps explain the "
        f"{'predicted' if s['target'] == 'pred' else 'true'} class; gradient CAMs on `{s['target_layer']}`. "
        f"Pointing-game tolerance {s['tolerance_px']} px; IoU threshold {s['iou_threshold']} x the map's maximum; "
        f"centre baseline: Gaussian, sigma {s['centre_sigma']} x side.",
        "",
        "energy: share of the map inside the lesion (median); hit: share of images whose map peak is in the "
        "lesion; iou: thresholded map vs lesion (median). r: rank-biserial effect size (> 0: the map beats the "
        "baseline; 1: on every image). p: two-sided (Wilcoxon signed-rank; hit: exact McNemar); "
        "q: Benjamini-Hochberg over the table.",
        "",
    ]
    tests = pd.DataFrame(result["agreement"])
    if len(tests):
        for subset, frame in tests.groupby("subset", sort=False):
            lines += [
                f"## Agreement with the lesion: {subset} (n = {int(frame['n'].max())})",
                "",
                "| map | metric | n | map value | random | r vs random | p | centre | r vs centre | p |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for (method, metric), pair in frame.groupby(["method", "metric"], sort=False):
                rnd = pair[pair["baseline"] == "random"].iloc[0]
                ctr = pair[pair["baseline"] == "centre"].iloc[0]
                lines.append(
                    f"| {method} | {metric} | {int(rnd['n'])} | {_v(rnd['method_value'])} | "
                    f"{_v(rnd['baseline_value'])} | {_v(rnd['r'], 2)} | {_p(rnd['p'])} | "
                    f"{_v(ctr['baseline_value'])} | {_v(ctr['r'], 2)} | {_p(ctr['p'])} |"
                )
            lines.append("")
    faith = pd.DataFrame(result["faithfulness"])
    if len(faith):
        lines += [
            f"## Faithfulness (ROAD, {s['road_images']} test images spread over the fold, removal shares "
            f"{', '.join(str(100 - p) for p in s['road_percentiles'])} %)",
            "",
            "road = (LeRF - MoRF) / 2 of the target probability: higher means removing what the map marks "
            "hurts the prediction more than removing what it leaves out. Medians; r, p: vs the random map.",
            "",
            "| subset | map | n | road | random road | r | p | MoRF | LeRF |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (subset, method), frame in faith.groupby(["subset", "method"], sort=False):
            road = frame[frame["metric"] == "road"].iloc[0]
            morf = frame[frame["metric"] == "morf"].iloc[0]
            lerf = frame[frame["metric"] == "lerf"].iloc[0]
            lines.append(
                f"| {subset} | {method} | {int(road['n'])} | {_v(road['method_value'])} | "
                f"{_v(road['baseline_value'])} | {_v(road['r'], 2)} | {_p(road['p'])} | "
                f"{_v(morf['method_value'])} | {_v(lerf['method_value'])} |"
            )
        lines.append("")
    findings = pd.DataFrame(result["findings"])
    if len(findings):
        lines += [
            "## Findings: map energy in the finding's region, images with vs without it",
            "",
            "Mann-Whitney U, two-sided; r = 2U/(n1 n2) - 1 (> 0: more energy there when the physician "
            "reports the finding).",
            "",
            "| finding | region | subset | map | n with / without | median with | median without | r | p | q |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, t in findings.iterrows():
            lines.append(
                f"| {t['finding']} | {t['region']} | {t['subset']} | {t['method']} | {t['n_with']} / "
                f"{t['n_without']} | {_v(t['median_with'])} | {_v(t['median_without'])} | {_v(t['r'], 2)} | "
                f"{_p(t['p'])} | {_p(t['q'])} |"
            )
        lines.append("")
    return "\n".join(lines)
