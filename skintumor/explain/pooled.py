"""A sweep's explanations pooled over its folds, for the cross-validation report.

Each fold explained by :func:`skintumor.explain.run.explain_run` (``explain.enabled=true`` in training,
or ``python -m skintumor.explain <sweep>/fold_<k>``) has ``fold_<k>/explain/agreement.csv``: one row
per (test image, map). The folds' test sets are disjoint, so their rows are concatenated (a ``fold``
column added, images keyed by fold) and tested as one fold would be, with the same functions
(:func:`~skintumor.explain.agreement.compare_to_baselines`, ROAD against the random map, findings):
the pooled tests have the power of every test image of the sweep. Each fold's map comes from its own
model, as the pooled out-of-fold predictions do.

:func:`pool_explanations` writes into the sweep directory

    explain/agreement.csv            the folds' rows, with their fold
    explain/agreement.json / .md     the pooled statistics (as one fold's, see skintumor.explain.run)
    figures/explain_gallery_<class>.png   correct and wrong cases of each class, taken in turn from
                                     every fold's gallery (``gallery_cases.npz``)

and returns a report section (a :class:`~skintumor.evaluate.document.Document`) that
:func:`skintumor.evaluate.report.build_report` renders after the figures: the evaluate package
never imports explain (tests/test_structure.py), the Hydra callback hands the section over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from skintumor.evaluate.document import Document
from skintumor.explain import agreement as agr
from skintumor.explain.figures import TITLES, gallery_figure
from skintumor.explain.run import (
    GALLERY_CASES,
    _records,
    _safe,
    faithfulness_tests,
    load_gallery_cases,
    markdown_report,
)

TITLE = "Explanations pooled over folds"


def explained_folds(sweep_dir: str | Path) -> dict[int, Path]:
    """fold -> its ``explain`` folder, for the folds of ``sweep_dir`` with ``explain/agreement.csv`` and ``.json``."""
    found = {}
    for d in Path(sweep_dir).glob("fold_*"):
        suffix = d.name[len("fold_") :]
        if suffix.isdigit() and all((d / "explain" / f).is_file() for f in ("agreement.csv", "agreement.json")):
            found[int(suffix)] = d / "explain"
    return dict(sorted(found.items()))


def pooled_rows(folds: dict[int, Path]) -> pd.DataFrame:
    """Every fold's agreement.csv in one table, a ``fold`` column first (``fold`` and ``image`` name a test image)."""
    return pd.concat(
        [pd.read_csv(folder / "agreement.csv").assign(fold=k) for k, folder in folds.items()], ignore_index=True
    ).pipe(lambda t: t[["fold", *[c for c in t.columns if c != "fold"]]])


def pool_explanations(sweep_dir: str | Path) -> Document | None:
    """Pool the explained folds of ``sweep_dir`` (files in the module docstring); the report's section,
    or None when no fold has explanations."""
    sweep_dir = Path(sweep_dir)
    folds = explained_folds(sweep_dir)
    if not folds:
        return None
    per_image = pooled_rows(folds)
    keyed = per_image.assign(image=per_image["fold"].astype(str) + ":" + per_image["image"].astype(str))
    settings = [json.loads((f / "agreement.json").read_text()) for f in folds.values()]
    first = settings[0]
    shown = [m for m in dict.fromkeys(keyed["method"]) if m not in agr.BASELINES]
    masked = keyed[keyed["has_mask"].astype(bool)]  # the paired tests pair an image's maps within its fold
    tests = agr.compare_to_baselines(masked, shown)
    tests = tests[tests["n"] > 0].reset_index(drop=True)
    faith = faithfulness_tests(keyed, shown)
    images = keyed.drop_duplicates("image")
    result = {
        "run_dir": f"{sweep_dir} (folds {', '.join(map(str, folds))}, pooled)",
        "folds": list(folds),
        "image_size": first.get("image_size"),
        "classes": first.get("classes") or sorted(per_image["label"].unique()),
        "n_test": len(images),
        "n_with_mask": int(images["has_mask"].astype(bool).sum()),
        "settings": (first.get("settings") or {})
        | {
            "road_images": int(keyed.loc[keyed["road"].notna(), "image"].nunique()),
            "road_seconds": round(sum(s["settings"].get("road_seconds") or 0 for s in settings), 2),
        },
        "accuracy": float((images["pred"] == images["label"]).mean()),
        "test_metrics": {},
        "agreement": _records(tests),
        "faithfulness": _records(faith),
        "findings": _records(agr.findings_tests(masked, shown)),
    }
    road = result["settings"]["road_images"]
    result["settings"]["road_seconds_per_image"] = round(result["settings"]["road_seconds"] / road, 3) if road else None
    out = sweep_dir / "explain"
    out.mkdir(exist_ok=True)
    per_image.to_csv(out / "agreement.csv", index=False, float_format="%.6f")
    (out / "agreement.json").write_text(json.dumps(result, indent=2, allow_nan=True))
    (out / "agreement.md").write_text(markdown_report(result).replace("Test fold:", "Test folds, pooled:", 1))
    galleries = pooled_galleries(folds, result["classes"], sweep_dir / "figures")
    return report_section(result, tests, faith, {c: p.relative_to(sweep_dir).as_posix() for c, p in galleries.items()})


def pooled_galleries(folds: dict[int, Path], classes: list[str], fig_dir: Path) -> dict[str, Path]:
    """One gallery per class, its cases taken in turn from each fold's ``gallery_cases.npz`` (folds
    without one are skipped); class -> PNG."""
    by_fold, method = [], None
    for folder in folds.values():
        if (folder / "gallery_cases.npz").is_file():
            method, cases = load_gallery_cases(folder / "gallery_cases.npz")
            by_fold.append(cases)
    if not by_fold:
        return {}
    longest = max(map(len, by_fold))
    interleaved = [cases[i] for i in range(longest) for cases in by_fold if i < len(cases)]
    return {
        cls: gallery_figure(interleaved, cls, fig_dir / f"explain_gallery_{_safe(cls)}.png", method, GALLERY_CASES)
        for cls in classes
    }


def _r(frame: pd.DataFrame, baseline: str, metric: str) -> str:
    row = frame[(frame["baseline"] == baseline) & (frame["metric"] == metric)]
    if row.empty or row["r"].isna().all():
        return "n/a"
    r, q = float(row["r"].iloc[0]), float(row["q"].iloc[0])
    return f"{r:.2f}" + ("*" if q < 0.05 else "")


def _v(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def report_section(result: dict, tests: pd.DataFrame, faith: pd.DataFrame, galleries: dict[str, str]) -> Document:
    """The report's section: coverage, the pooled agreement table (all images), ROAD, the galleries."""
    s = result["settings"]
    doc = Document(TITLE)
    doc.text(
        f"Folds {', '.join(map(str, result['folds']))}: {result['n_test']} test images, {result['n_with_mask']} with "
        f"a lesion mask; each fold's maps come from its own model (`fold_<k>/explain/`). Pooled rows: "
        "[explain/agreement.csv](explain/agreement.csv); every table (per class, findings, p and q): "
        "[explain/agreement.md](explain/agreement.md)."
    )
    all_images = tests[tests["subset"] == "all"] if len(tests) else tests
    if len(all_images):
        doc.text(
            "Agreement with the lesion, all images with a mask: medians of energy (share of the map inside the "
            "lesion) and IoU, mean hit (peak in the lesion); r: rank-biserial effect size against each baseline "
            "on the same images (> 0: the map wins; * q < 0.05, Benjamini-Hochberg over the pooled table)."
        )
        rows, values = [], {}
        for method, frame in all_images.groupby("method", sort=False):
            rnd = frame[frame["baseline"] == "random"].set_index("metric")
            ctr = frame[frame["baseline"] == "centre"].set_index("metric")
            for name, part in (("random", rnd), ("centre", ctr)):
                values[name] = {m: part["baseline_value"].get(m) for m in agr.METRICS}
            rows.append(
                [TITLES.get(method, method), str(int(frame["n"].max()))]
                + [_v(rnd["method_value"].get(m)) for m in agr.METRICS]
                + [" / ".join(_r(frame, b, m) for m in agr.METRICS) for b in ("random", "centre")]
            )
        for name, vals in values.items():
            rows.append([name, ""] + [_v(vals.get(m)) for m in agr.METRICS] + ["", ""])
        doc.table(["map", "n", "energy", "hit", "IoU", "r vs random (e / h / IoU)", "r vs centre (e / h / IoU)"], rows)
    all_faith = faith[faith["subset"] == "all"] if len(faith) else faith
    if len(all_faith):
        doc.text(
            f"Faithfulness (ROAD) on {s['road_images']} test images ({s.get('road_seconds', 0):.0f} s in all): "
            "road = (LeRF - MoRF) / 2 of the target probability, median; higher: removing what the map marks "
            "hurts the prediction more. r, q against the random map on the same images."
        )
        rows = []
        for method, frame in all_faith.groupby("method", sort=False):
            road = frame[frame["metric"] == "road"].iloc[0]
            rows.append(
                [
                    TITLES.get(method, method),
                    str(int(road["n"])),
                    _v(road["method_value"]),
                    _v(road["baseline_value"]),
                    _r(frame[frame["metric"] == "road"], "random", "road"),
                ]
            )
        doc.table(["map", "n", "road", "random", "r vs random"], rows)
    for cls, path in galleries.items():
        doc.figure(path, f"True class {cls}: correct (top) and wrong (bottom) cases from the folds in turn")
    return doc


__all__ = ["TITLE", "explained_folds", "pooled_rows", "pool_explanations", "pooled_galleries", "report_section"]
