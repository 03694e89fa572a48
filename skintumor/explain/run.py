"""Explain a trained run's test fold: maps, overlays, galleries, agreement and faithfulness statistics.

``explain_run(run_dir)`` reads the checkpoint the run tested (``checkpoints/best.ckpt``, or ``last.ckpt``
after ``test_checkpoint=last``; tensors and plain data only), ``manifest.csv`` and ``split.json``,
decodes the test images exactly as training did (same size, same normalisation, the scan-area crop
if the run used it),
and writes into ``run_dir/explain/``:

    overlays/<k>_<name>.png   one figure per test image (image, every map, lesion outline, classes)
    gallery_<class>.png       correct and wrong cases of each true class
    gallery_cases.npz         those cases' images, gallery maps and masks (pooled galleries of a sweep:
                              :mod:`skintumor.explain.pooled`)
    agreement.csv             one row per (test image, map): energy, hit, iou, finding-region energies,
                              ROAD scores, the image's class, prediction, probabilities and findings
    agreement.json / .md      the statistics (see :mod:`skintumor.explain.agreement`), the settings and
                              the seconds spent (ROAD's: ``settings.road_seconds``, ``road_seconds_per_image``)

It never trains and never reads the training or validation images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy import ndimage

from skintumor.errors import ConfigError, DataError
from skintumor.evaluate.finished_run import FinishedRun
from skintumor.explain import agreement as agr
from skintumor.explain.cam import METHODS, explain_batch
from skintumor.explain.faithfulness import PERCENTILES, road_scores
from skintumor.explain.figures import TITLES, Case, gallery_figure
from skintumor.explain.overlay import overlay_panels

# ROAD's default number of images: ROAD then adds about the time of the maps themselves on a
# 140-image fold at 128 px. `python -m benchmarks.explain_speed --threads 1` (140 images, 128 px, the
# recipe network, one CPU thread, 2 shared cores) measured the maps of the fold at 18.9 s and 23.3 s,
# ROAD at 2.56 s and 2.79 s per image (8 maps x 2 orders x 4 percentiles: 64 sparse solves and 72
# forwards), so maps / ROAD per image = 7.4 and 8.3 images. Extrapolation: the maps grow linearly
# with the fold and ROAD with these images only, so on a larger fold ROAD's share falls; both grow
# with the pixels (the solves a little faster) and both use the threads there are, so the ratio
# holds roughly at other sizes and machines. The library's way cost 7.3 s per image (40 images:
# about 5 minutes).
ROAD_IMAGES = 8
GALLERY_CASES = 6  # per class: up to this many correct and as many wrong cases


@dataclass
class ExplainSettings:
    """methods: maps to compute (:data:`METHODS`); target: explain the "pred"icted or the "true" class;
    target_layer: layer of the gradient CAMs; tolerance: pointing-game px (None: 15 px at 224);
    threshold: IoU threshold as a share of the map's maximum; road_images: ROAD on N test images
    spread evenly over the fold (0: none; ROAD costs a sparse solve per image, map, order and removal
    share, see :data:`ROAD_IMAGES`); gallery_method: map shown in galleries; road_workers: threads for
    ROAD's sparse solves (None: torch's thread count)."""

    methods: tuple[str, ...] = METHODS
    target: str = "pred"
    target_layer: str = "layer4"
    tolerance: int | None = None
    threshold: float = 0.5
    road_images: int = ROAD_IMAGES
    road_percentiles: tuple[int, ...] = PERCENTILES
    gallery_method: str = "gradcam"
    overlays: int | None = None  # None: every test image
    batch_size: int = 16
    seed: int = 0
    road_workers: int | None = None

    @classmethod
    def from_options(cls, options: dict) -> ExplainSettings:
        """Settings from plain data (a config's ``explain`` keys; lists become tuples, None keeps a
        default); ConfigError naming an unknown key, method or target, before any work."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"explain.{unknown[0]}: not a setting (known: {', '.join(sorted(known))})")
        given = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in options.items() if v is not None}
        settings = cls(**given)
        bad = [m for m in settings.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"explain.methods: unknown map(s) {', '.join(bad)} (known: {', '.join(METHODS)})")
        if settings.target not in ("pred", "true"):
            raise ConfigError(f"explain.target={settings.target}: must be pred or true")
        if settings.gallery_method not in settings.methods:
            raise ConfigError(
                f"explain.gallery_method={settings.gallery_method}: not among the maps computed "
                f"({', '.join(settings.methods)})"
            )
        return settings


def explain_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: ExplainSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Explain ``run_dir``'s test fold into ``out_dir`` (default ``run_dir/explain``);
    returns agreement.json's content."""
    started = time.perf_counter()
    settings = settings or ExplainSettings()
    if settings.target not in ("pred", "true"):
        raise ValueError(f"target must be 'pred' or 'true', got {settings.target!r}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "explain"
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder (the explanations go into a folder; name a new one)")
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
    seconds = {"maps": 0.0, "road": 0.0}
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
            clock = time.perf_counter()
            maps = explain_batch(classifier, x, targets, methods, settings.target_layer, rng)
            seconds["maps"] += time.perf_counter() - clock
            maps["centre"] = np.repeat(centre[None], len(idx), axis=0)
            road = {}
            chosen = [j for j, i in enumerate(idx) if i in road_set]
            if chosen:
                bar.update(task, description="test images (ROAD)")
                clock = time.perf_counter()
                for method in [m for m in maps if m != "centre"]:
                    scores = road_scores(
                        classifier,
                        x[chosen],
                        maps[method][chosen],
                        [targets[j] for j in chosen],
                        settings.road_percentiles,
                        seed=settings.seed + start,
                        workers=settings.road_workers,
                    )
                    road[method] = {j: {k: float(v[n]) for k, v in scores.items()} for n, j in enumerate(chosen)}
                seconds["road"] += time.perf_counter() - clock
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
                image_maps = {m: v[j] for m, v in maps.items()}
                scores = maps_metrics(image_maps, masks[i], settings.tolerance, settings.threshold)
                for method, metrics in scores.items():
                    records.append(base | {"method": method} | metrics | road.get(method, {}).get(j, {}))
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
                        out / "overlays" / f"{i:04d}_{_safe(case.name)}.png", compress_level=1
                    )  # PNG level 1: half the encoding time of level 6, files about as large
            bar.update(task, advance=len(idx), description="test images")

    per_image = pd.DataFrame(records)
    for col in ("morf", "lerf", "road"):
        if col not in per_image:
            per_image[col] = np.nan
    per_image.to_csv(out / "agreement.csv", index=False, float_format="%.6f")
    for cls in classes:
        gallery_figure(cases, cls, out / f"gallery_{_safe(cls)}.png", settings.gallery_method, GALLERY_CASES)
    save_gallery_cases(cases, classes, settings.gallery_method, out / "gallery_cases.npz")

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
            "road_seconds": round(seconds["road"], 2),
            "road_seconds_per_image": round(seconds["road"] / len(road_set), 3) if road_set else None,
            "gallery_method": settings.gallery_method,
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
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()} | {
        "total": round(time.perf_counter() - started, 2)
    }
    (out / "agreement.json").write_text(json.dumps(result, indent=2, allow_nan=True))
    (out / "agreement.md").write_text(markdown_report(result))
    return result


def road_cost(result: dict) -> str:
    """One line: what ROAD cost (seconds, per image) next to the maps, from explain's result."""
    s, seconds = result["settings"], result["seconds"]
    if not s["road_images"]:
        return f"ROAD: off (maps {seconds['maps']:.1f} s)"
    return (
        f"ROAD: {s['road_seconds']:.1f} s for {s['road_images']} images ({s['road_seconds_per_image']:.2f} s per "
        f"image, all maps); the maps took {seconds['maps']:.1f} s for {result['n_test']} images"
    )


def faithfulness_tests(per_image: pd.DataFrame, methods) -> pd.DataFrame:
    """ROAD score of each method against the random map on the same images (Wilcoxon), all and per class."""
    scored = per_image[per_image["road"].notna()]
    if scored.empty:
        return pd.DataFrame(columns=["subset", "method", "baseline", "metric", "n", "method_value", "r", "p", "q"])
    table = agr.compare_to_baselines(scored, methods, baselines=("random",), metrics=("road", "morf", "lerf"))
    return table[table["n"] > 0].reset_index(drop=True)


def maps_metrics(
    maps: dict[str, np.ndarray], mask: np.ndarray | None, tolerance: int | None = None, threshold: float = 0.5
) -> dict[str, dict[str, float]]:
    """:func:`~skintumor.explain.agreement.image_metrics` of every map of one image, with the lesion's
    grown outline and finding regions computed once instead of once per map (same numbers)."""
    if mask is None or not mask.any():
        return {method: agr.image_metrics(cam, mask, tolerance, threshold) for method, cam in maps.items()}
    tolerance = agr.default_tolerance(mask.shape[0]) if tolerance is None else tolerance
    grown = mask
    if tolerance > 0:  # as pointing_hit grows it
        yy, xx = np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]
        grown = ndimage.binary_dilation(mask, structure=yy**2 + xx**2 <= tolerance**2)
    regions = agr.finding_regions(mask)
    return {
        method: {
            "energy": agr.energy_share(cam, mask),
            "hit": agr.pointing_hit(cam, grown, tolerance=0),
            "iou": agr.thresholded_iou(cam, mask, threshold),
        }
        | {f"energy_{name}": agr.energy_share(cam, region) for name, region in regions.items()}
        for method, cam in maps.items()
    }


def save_gallery_cases(cases: list[Case], classes: list[str], method: str, path: Path) -> Path:
    """The cases the galleries show (per class the first :data:`GALLERY_CASES` correct and wrong ones)
    with ``method``'s map, so that a sweep can draw galleries pooled over its folds without its models."""
    shown = [
        c
        for cls in classes
        for correct in (True, False)
        for c in [c for c in cases if c.label == cls and c.correct == correct][:GALLERY_CASES]
    ]
    blank = np.zeros(shown[0].image.shape) if shown else None
    np.savez_compressed(
        path,
        method=np.array(method),
        names=np.array([c.name for c in shown], dtype=str),
        labels=np.array([c.label for c in shown], dtype=str),
        preds=np.array([c.pred for c in shown], dtype=str),
        probs=np.array([c.probs.get(c.pred, np.nan) for c in shown], dtype=np.float32),
        images=np.array([c.image for c in shown], dtype=np.uint8),
        has_map=np.array([method in c.maps for c in shown], dtype=bool),
        maps=np.array([c.maps.get(method, blank) for c in shown], dtype=np.float16),
        masks=np.array([blank if c.mask is None else c.mask for c in shown], dtype=bool),
    )
    return path


def load_gallery_cases(path: str | Path) -> tuple[str, list[Case]]:
    """(map name, cases) written by :func:`save_gallery_cases`."""
    with np.load(path) as data:
        cases = [
            Case(
                str(name),
                data["images"][k],
                {str(data["method"]): data["maps"][k].astype(np.float32)} if data["has_map"][k] else {},
                data["masks"][k] if data["masks"][k].any() else None,
                str(label),
                str(pred),
                {str(pred): float(data["probs"][k])},
            )
            for k, (name, label, pred) in enumerate(zip(data["names"], data["labels"], data["preds"]))
        ]
        return str(data["method"]), cases


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
            "hurts the prediction more than removing what it leaves out. Medians; r, p: vs the random map."
            + (
                f" ROAD took {s['road_seconds']:.1f} s ({s['road_seconds_per_image']:.2f} s per image, all maps)."
                if s.get("road_seconds_per_image")
                else ""
            ),
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
