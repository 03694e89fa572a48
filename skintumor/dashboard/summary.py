"""The W&B runs after the folds, each in the training runs' project and group: the sweep's ``summary``
(the cross-validation report), a ``compare`` run (a comparison of two sweeps) and an ``export`` run
(a model bundle traced to its folds' model artifacts). Each never raises."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from skintumor.dashboard.fold import FOLD_RECORD, artifact_name, model_artifact, read_json, use_new_artifact
from skintumor.loggers import finish_stale_runs, never_raises, wandb_mode

log = logging.getLogger(__name__)


def fold_records(directory: str | Path) -> list[dict]:
    """The W&B records of the training runs in ``directory`` (a run, a sweep, an ensemble sweep), sorted."""
    found = []
    for path in sorted(Path(directory).glob(f"**/wandb/{FOLD_RECORD}")):
        record = read_json(path)
        if isinstance(record, dict) and record.get("project"):
            found.append(record | {"run_dir": str(path.parent.parent.resolve())})
    return found


def start_run(records: list[dict], directory: Path, **init):
    """A new W&B run in the project, entity, group and mode of the training runs ``records``, with its
    files in ``directory/wandb``; the training runs' tags too."""
    import wandb

    first = records[0]
    directory.mkdir(parents=True, exist_ok=True)
    finish_stale_runs()
    return wandb.init(
        project=first["project"],
        entity=first.get("entity"),
        group=first.get("group"),
        mode=first.get("mode") or wandb_mode(),
        tags=first.get("tags") or None,
        dir=str(directory),
        **init,
    )


@never_raises("the sweep's summary run")
def log_sweep_summary(sweep_dir: str | Path) -> None:
    """One ``summary`` run (job type ``cv-report``) in the sweep's group, when its folds were logged to
    W&B: for each report of the sweep (an ensemble sweep: each member's and the ensemble's, keys
    prefixed ``member_<s>/``, ``ensemble/``):

    - ``report/pooled``: every metric at image and patient level, pooled with its 95 % CI, and the
      folds' mean and SD; the headline metrics also in the summary (``image/auroc_macro``, ``..._ci``);
    - ``report/per_fold``: each fold's size and headline metrics;
    - ``figures/<name>``: every figure of the report (``figures/*.png``: confusion matrices, ROC curves,
      reliability diagram, explanation galleries);
    - the report files (report.md, report.html, metrics_cv.json, figures/) as a ``cv-report`` artifact.

    Files in ``<sweep>/wandb``. Never raises."""
    sweep_dir = Path(sweep_dir)
    records = fold_records(sweep_dir)
    reports = _reports(sweep_dir)
    if not records or not reports:
        return
    config = {"sweep_dir": str(sweep_dir.resolve()), "reports": list(reports), "runs": [r["name"] for r in records]}
    run = start_run(records, sweep_dir, name="summary", job_type="cv-report", config=config)
    try:
        for prefix, directory in reports.items():
            never_raises(f"the report of {directory}")(_log_report)(run, directory, prefix, records[0].get("group"))
    finally:
        run.finish()


def _reports(sweep_dir: Path) -> dict[str, Path]:
    """Key prefix -> directory of each report of a sweep: ``{"": sweep}``, or for an ensemble sweep
    ``{"member_1/": ..., "member_2/": ..., "ensemble/": ...}``."""
    if (sweep_dir / "metrics_cv.json").is_file():
        return {"": sweep_dir}
    return {
        f"{d.name}/": d
        for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir())
        if (d / "metrics_cv.json").is_file()
    }


def _log_report(run, directory: Path, prefix: str, group: str | None) -> None:
    import wandb

    from skintumor.evaluate.formatting import metric_label
    from skintumor.evaluate.metrics import HEADLINE
    from skintumor.evaluate.summary import LEVELS

    result = json.loads((directory / "metrics_cv.json").read_text())
    classes = result["classes"]
    pooled, per_fold, summary = [], [], {}
    for level in LEVELS:
        numbers = result[level]
        for name, entry in numbers["pooled"].items():
            spread = numbers["mean_sd"].get(name) or {}
            pooled.append(
                [
                    level,
                    name,
                    metric_label(name, classes),
                    entry.get("value"),
                    entry.get("ci_low"),
                    entry.get("ci_high"),
                ]
                + [spread.get("mean"), spread.get("sd")]
            )
            if name in HEADLINE:
                summary[f"{prefix}{level}/{name}"] = entry.get("value")
                summary[f"{prefix}{level}/{name}_ci"] = [entry.get("ci_low"), entry.get("ci_high")]
        for fold, metrics in sorted(numbers["per_fold"].items(), key=lambda kv: int(kv[0])):
            size = numbers["fold_sizes"].get(fold, {})
            per_fold.append([level, int(fold), size.get("n"), *(metrics.get(m) for m in HEADLINE)])
    media: dict[str, Any] = {
        f"{prefix}report/pooled": wandb.Table(
            columns=["level", "metric", "label", "pooled", "ci_low", "ci_high", "folds_mean", "folds_sd"], data=pooled
        ),
        f"{prefix}report/per_fold": wandb.Table(columns=["level", "fold", "n", *HEADLINE], data=per_fold),
    }
    figures = sorted((directory / "figures").glob("*.png"))
    media |= {f"{prefix}figures/{p.stem}": wandb.Image(str(p), caption=p.stem) for p in figures}
    run.log(media)
    run.summary.update(
        summary | {f"{prefix}coverage": result.get("coverage"), f"{prefix}n_images": result.get("n_images")}
    )
    artifact = wandb.Artifact(
        artifact_name("report", group, prefix.strip("/")),
        type="cv-report",
        description=f"Cross-validation report of {directory.name}: {result.get('coverage')}",
        metadata={"coverage": result.get("coverage"), "folds_used": result.get("folds_used"), "classes": classes}
        | {"pooled": {k: v for k, v in summary.items() if k.startswith(prefix)}},
    )
    for name in ("report.md", "report.html", "metrics_cv.json"):
        if (directory / name).is_file():
            artifact.add_file(str(directory / name), name=name)
    if figures:
        artifact.add_dir(str(directory / "figures"), name="figures")
    run.log_artifact(artifact)


@never_raises("the comparison run")
def log_comparison(out_dir: str | Path, sweep_a: str | Path, sweep_b: str | Path) -> None:
    """A ``compare`` run (named ``compare <A> vs <B>``) in sweep A's group, when A's (or B's) folds were
    logged to W&B: ``compare/<level>`` tables (every metric: A, B, A - B with its paired 95 % CI, p,
    Holm-adjusted p, significant), ``compare/per_fold`` (image level), the headline differences in the
    summary, and comparison.md/.html/.json as a ``comparison`` artifact. Files in ``out_dir/wandb``."""
    import wandb

    from skintumor.evaluate.formatting import metric_label
    from skintumor.evaluate.metrics import HEADLINE
    from skintumor.evaluate.summary import LEVELS

    out_dir = Path(out_dir)
    records = fold_records(sweep_a) or fold_records(sweep_b)
    if not records or not (out_dir / "comparison.json").is_file():
        return
    result = json.loads((out_dir / "comparison.json").read_text())
    name_a, name_b = result.get("name_a", Path(sweep_a).name), result.get("name_b", Path(sweep_b).name)
    config = {"a": str(Path(sweep_a).resolve()), "b": str(Path(sweep_b).resolve()), "folds": result.get("folds")}
    run = start_run(records, out_dir, name=f"compare {name_a} vs {name_b}", job_type="compare", config=config)
    try:
        columns = ["metric", "label", "a", "b", "diff", "ci_low", "ci_high", "p", "p_holm", "significant"]
        media, summary = {}, {}
        for level in LEVELS:
            rows = []
            for name, r in result[level]["metrics"].items():
                rows.append([name, metric_label(name, result["classes"])] + [r.get(k) for k in columns[2:]])
                if name in HEADLINE:
                    summary[f"compare/{level}/{name}_diff"] = r.get("diff")
                    summary[f"compare/{level}/{name}_ci"] = [r.get("ci_low"), r.get("ci_high")]
            media[f"compare/{level}"] = wandb.Table(columns=columns, data=rows)
        image = result["image"]
        media["compare/per_fold"] = wandb.Table(
            columns=["fold", "metric", "a", "b"],
            data=[
                [int(k), m, image["per_fold_a"][k].get(m), image["per_fold_b"][k].get(m)]
                for k in image["per_fold_a"]
                for m in HEADLINE
            ],
        )
        run.log(media)
        run.summary.update(summary)
        artifact = wandb.Artifact(
            artifact_name("comparison", records[0].get("group"), name_b),
            type="comparison",
            description=f"{name_a} (A) vs {name_b} (B): paired bootstrap on the same test folds",
            metadata={"a": config["a"], "b": config["b"], "folds": result.get("folds")},
        )
        for name in ("comparison.md", "comparison.html", "comparison.json"):
            if (out_dir / name).is_file():
                artifact.add_file(str(out_dir / name), name=name)
        run.log_artifact(artifact)
    finally:
        run.finish()


@never_raises("the bundle's export run")
def log_bundle(bundle_dir: str | Path, source: str | Path) -> None:
    """An ``export`` run in the sweep's group, when the bundle's members were logged to W&B with their
    model artifacts: it uses each member's ``model`` artifact (the same checkpoint files: the same
    versions) and logs the bundle folder as one ``model`` artifact (``bundle-<sweep>``) whose metadata
    names them. So the dashboard traces a bundle to its folds' models, and each of those to the
    ``dataset`` its fold used. Files in ``<source>/wandb``."""
    import wandb

    from skintumor.deploy.bundle import find_runs

    bundle_dir, source = Path(bundle_dir), Path(source)
    members = {str(run.resolve()): name for name, run in find_runs(source).items()}
    records = [r for r in fold_records(source) if r.get("model_artifact") and r["run_dir"] in members]
    if not records:
        return
    meta = read_json(bundle_dir / "model.json") or {}
    run = start_run(
        records,
        source,
        name=f"export {bundle_dir.name}",
        job_type="export",
        config={"bundle": str(bundle_dir.resolve()), "source": str(source.resolve())},
    )
    try:
        used = {}
        for record in records:
            entry = record["model_artifact"]
            artifact = model_artifact(entry)
            if artifact.digest != entry.get("digest"):
                log.warning("W&B: %s changed since its fold logged it; the export uses it as it is now", entry["file"])
            used[members[record["run_dir"]]] = use_new_artifact(run, artifact)
        cv = meta.get("cross_validation") or {}
        metadata = {k: meta.get(k) for k in ("classes", "preprocessing", "decision", "training_data", "software")} | {
            "members": {name: f"{a['name']}:{a['digest']}" for name, a in used.items()},
            "weights_sha256": {m.get("name"): m.get("sha256") for m in meta.get("members") or []},
            "cross_validation": {
                level: {m: (cv.get(level) or {}).get("pooled", {}).get(m) for m in ("auroc_macro", "bal_acc", "acc")}
                for level in ("image", "patient")
            },
        }
        bundle = wandb.Artifact(
            artifact_name("bundle", records[0].get("group")),
            type="model",
            description="The model bundle (skintumor export): model.json and one safetensors file per member",
            metadata=metadata,
        )
        bundle.add_dir(str(bundle_dir), policy="immutable")
        run.log_artifact(bundle, aliases=["bundle"])
    finally:
        run.finish()
