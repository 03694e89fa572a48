"""What reaches the W&B dashboard: per fold plots, tables and artifacts, a summary run per sweep.

Every training run (a fold; in an ensemble sweep ``fold_<k>/seed_<s>``) is one W&B run, grouped by
its sweep; docs/wandb.md shows what appears where. The pieces, and who calls them:

- :func:`wandb_logger` (conf/logger/wandb.yaml): a :class:`SafeWandbLogger` for Lightning; it logs
  the resolved configuration once, every epoch's train/val curves, and never the re-validation of
  the chosen checkpoint a second time;
- :func:`log_fold` (train.py, after the test and the explanations): the run's summary (the tested
  checkpoint's numbers, the best validation value), the test fold's confusion matrix, ROC curves and
  predictions table, the CAM overlays, and the artifacts: the data manifest (a ``dataset`` the run
  uses), the augmentation policy file (when trained with one), the tested checkpoint (``model``);
- :func:`log_sweep_summary` (hydra_callbacks.CrossValidationReport, ``python -m skintumor.report``):
  one ``summary`` run per sweep: pooled metrics with CIs, the per-fold table, every report figure, the
  report files as an artifact;
- :func:`log_comparison` (``python -m skintumor.report A B``) and :func:`log_bundle` (``skintumor
  export``): a ``compare`` run with the comparison tables, an ``export`` run whose bundle artifact
  uses the folds' model artifacts;
- :func:`sync_sweep` (``make sync SWEEP=...``, ``python -m skintumor.dashboard SWEEP``): uploads a
  sweep's offline runs, the training runs first.

Nothing here stops a run: a W&B failure is a warning, and the CSV logger and every file on disk go
on. Offline runs work fully (``WANDB_MODE=offline``, the default without a login): each fold writes
``<run>/wandb/skintumor_fold.json`` (its project, group, mode and artifacts), from which the later
runs join the same project and group and name the folds' artifacts without a server.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from skintumor.deploy.bundle import sha256
from skintumor.loggers import (
    SafeWandbLogger,
    _write_text,
    finish_run,
    finish_stale_runs,
    never_raises,
    wandb_mode,
    warn,
)

log = logging.getLogger(__name__)

FOLD_RECORD = "skintumor_fold.json"  # <run>/wandb/<this>: what the fold's W&B run was, for the later runs
THUMBNAIL_PX = 128  # longest side of the misclassified images in the predictions table


def log_fold(trainer, run_dir: str | Path, cfg: Mapping | None = None) -> None:
    """Log a finished fold into each of the trainer's W&B runs and finish them (train.py's last step).

    What :func:`log_run_files` reads from ``run_dir``, with the best validation value of the
    checkpoint callback that selects (``callbacks.model_checkpoint``); the policy file of
    ``augment=policy`` and the data source come from ``cfg``. Never raises."""
    for logger in getattr(trainer, "loggers", None) or []:
        if not isinstance(logger, WandbLogger) or logger._experiment is None:
            continue
        try:
            if trainer.is_global_zero and isinstance(logger, SafeWandbLogger) and not logger.failed:
                log_run_files(
                    logger.experiment,
                    run_dir,
                    best=best_validation(trainer),
                    log_model=logger.log_tested_model,
                    max_images=logger.max_images,
                    policy=_cfg_get(cfg, "augment.path") if _cfg_get(cfg, "augment.name") == "policy" else None,
                    source=_cfg_get(cfg, "data.source"),
                )
        except Exception as err:  # noqa: BLE001 - the trained and tested fold stays valid
            warn("logging the fold", err)
        finally:
            finish_run(logger)


def best_validation(trainer) -> dict[str, float]:
    """``{monitor: best value}`` of the checkpoint callback that selects on validation; {} without one."""
    for callback in getattr(trainer, "checkpoint_callbacks", None) or []:
        score = getattr(callback, "best_model_score", None)
        if callback.monitor and score is not None:
            return {callback.monitor: float(score)}
    return {}


def log_run_files(
    run,
    run_dir: str | Path,
    *,
    best: Mapping[str, float] | None = None,
    log_model: bool = True,
    max_images: int = 32,
    policy: str | Path | None = None,
    source: str | None = None,
) -> dict:
    """Log a finished training run's files into the W&B ``run`` (open; not finished here):

    - summary: ``val/*`` of the tested checkpoint (``metrics_val.json``; the curves keep every
      epoch), ``test/*`` (``metrics_test.json``), ``tested_checkpoint``, ``decision/offset_<class>``,
      ``best/<monitor>`` (``best``);
    - ``test/confusion_matrix`` and ``test/roc`` (wandb.plot, from ``predictions_test.csv``; ROC ranks
      the ``score_`` columns where the run wrote them, as the report does);
    - ``test/predictions``: a table of path, patient, label, probabilities, prediction, correct, and a
      thumbnail of each misclassified image (at most ``max_images``; the images are read from the
      data folder named in ``split.json``);
    - ``explain/overlays`` (the first ``max_images`` CAM overlays) and ``explain/gallery_<class>``,
      when the run was explained;
    - artifacts: ``manifest.csv`` as a ``dataset`` the run uses (its SHA-256 and counts as metadata),
      the policy file as an ``augmentation-policy`` it uses, and with ``log_model`` the tested
      checkpoint as a ``model`` it produced (alias ``tested``).

    Each part that fails is one warning; the rest is still logged. Writes ``<run_dir>/wandb/
    skintumor_fold.json`` and returns it: the run's identity and its artifacts."""
    run_dir = Path(run_dir)
    split = _read_json(run_dir / "split.json") or {}
    classes = [str(c) for c in split.get("classes") or []]
    identity = never_raises("reading the run's name and project")(run_identity)(run) or {}
    record = {"kind": "fold", "run_dir": str(run_dir.resolve()), **identity}
    never_raises("the fold's summary")(_log_summary)(run, run_dir, best or {})
    predictions = never_raises("reading the test predictions")(_read_predictions)(
        run_dir / "predictions_test.csv", classes
    )
    if predictions is not None:
        never_raises("the test fold's confusion matrix and ROC")(_log_test_plots)(run, predictions, classes)
        never_raises("the predictions table")(_log_predictions_table)(
            run, predictions, classes, Path(split.get("root") or "."), max_images
        )
    never_raises("the explanation overlays")(_log_explanations)(run, run_dir / "explain", max_images)
    record["dataset_artifact"] = never_raises("the dataset artifact")(_use_dataset)(run, run_dir, split, source)
    if policy:
        record["policy_artifact"] = never_raises("the policy artifact")(_use_policy)(run, Path(policy))
    if log_model:
        record["model_artifact"] = never_raises("the model artifact")(_log_model_artifact)(run, run_dir, record)
    never_raises("writing the fold's W&B record")(_write_record)(run_dir / "wandb" / FOLD_RECORD, record)
    return record


def run_identity(run) -> dict:
    """What a later run needs to join this one: project, entity, group, mode (and id, name, job type, tags)."""
    mode = "disabled" if getattr(run, "disabled", False) else "offline" if getattr(run, "offline", False) else "online"
    return {
        "id": run.id,
        "name": run.name,
        "project": run.project,
        "entity": run.entity or None,
        "group": run.group or None,
        "job_type": run.job_type,
        "tags": list(run.tags or ()),
        "mode": mode,
    }


def _log_summary(run, run_dir: Path, best: Mapping[str, float]) -> None:
    summary: dict[str, Any] = {}
    for key, value in (_read_json(run_dir / "metrics_val.json") or {}).items():
        if key == "checkpoint":
            summary["tested_checkpoint"] = value
        elif key.startswith("decision_offset_"):
            summary[f"decision/offset_{key.removeprefix('decision_offset_')}"] = value
        else:
            summary[key] = value  # val/*: the tested checkpoint's validation numbers
    test = _read_json(run_dir / "metrics_test.json") or {}
    summary |= {k: v for k, v in test.items() if k != "checkpoint"}
    summary |= {f"best/{monitor}": value for monitor, value in best.items()}
    if summary:
        run.summary.update(summary)


def _read_predictions(path: Path, classes: list[str]):
    import pandas as pd

    if not path.is_file() or not classes:
        return None
    table = pd.read_csv(path)
    known = table["label"].astype(str).isin(classes) & table["pred"].astype(str).isin(classes)
    return table[known].reset_index(drop=True) if len(table) else None


def _log_test_plots(run, predictions, classes: list[str]) -> None:
    import wandb

    index = {c: i for i, c in enumerate(classes)}
    y = predictions["label"].astype(str).map(index).tolist()
    pred = predictions["pred"].astype(str).map(index).tolist()
    prefix = "score_" if all(f"score_{c}" in predictions for c in classes) else "p_"
    scores = predictions[[f"{prefix}{c}" for c in classes]].to_numpy(dtype=float)
    media = {
        "test/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y, preds=pred, class_names=classes, title="Test fold: confusion matrix"
        )
    }
    if len(set(y)) > 1:  # one-vs-rest ROC needs both kinds of case
        media["test/roc"] = wandb.plot.roc_curve(y, scores, labels=classes, title="Test fold: ROC (one-vs-rest)")
    run.log(media)


def _thumbnail(path: Path, caption: str):
    """A wandb.Image of the scan, longest side THUMBNAIL_PX; None when it cannot be read (moved data)."""
    import wandb
    from PIL import Image

    from skintumor.data.images import read_greyscale

    try:
        image = Image.fromarray(read_greyscale(path))
    except Exception:  # noqa: BLE001 - a missing image only leaves its cell empty
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return wandb.Image(image, caption=caption)


def _log_predictions_table(run, predictions, classes: list[str], root: Path, max_images: int) -> None:
    import wandb

    probabilities = [f"p_{c}" for c in classes]
    columns = ["path", "patient_id", "label", *probabilities, "pred", "correct", "image"]
    rows, shown = [], 0
    for row in predictions.to_dict("records"):
        correct = str(row["label"]) == str(row["pred"])
        image = None
        if not correct and shown < max_images:
            image = _thumbnail(root / str(row["path"]), f"{row['label']} predicted {row['pred']}")
            shown += image is not None
        rows.append(
            [
                str(row["path"]),
                str(row.get("patient_id", "")),
                str(row["label"]),
                *(float(row[p]) for p in probabilities),
                str(row["pred"]),
                correct,
                image,
            ]
        )
    run.log({"test/predictions": wandb.Table(columns=columns, data=rows)})


def _log_explanations(run, explain_dir: Path, max_images: int) -> None:
    import wandb

    overlays = sorted((explain_dir / "overlays").glob("*.png"))[:max_images]
    media: dict[str, Any] = {
        f"explain/{p.stem}": wandb.Image(str(p)) for p in sorted(explain_dir.glob("gallery_*.png"))
    }
    if overlays:
        media["explain/overlays"] = [wandb.Image(str(p), caption=p.stem) for p in overlays]
    if media:
        run.log(media)


def artifact_name(*parts) -> str:
    """A valid W&B artifact name from parts (``model``, the sweep, the run's name), joined by ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(p) for p in parts if p))[:128]


def use_new_artifact(run, artifact) -> dict:
    """Declare a new (draft) artifact an input of ``run``, online and offline.

    Online: ``run.use_artifact`` (an existing version with the same content is reused). Offline, W&B
    refuses ``use_artifact``; the artifact goes into the run's log marked to be used once committed
    (what ``use_artifact`` of a draft does online), so ``wandb sync`` uploads it as the run's input.
    -> ``{name, type, digest}``: the same files give the same digest, hence the same version."""
    if not getattr(run, "offline", False):
        run.use_artifact(artifact)
    elif hasattr(run, "_log_artifact"):
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:  # another wandb: at least the artifact is recorded
        run.log_artifact(artifact)
    return {"name": artifact.name.split(":")[0], "type": artifact.type, "digest": artifact.digest}


def _use_dataset(run, run_dir: Path, split: Mapping, source: str | None) -> dict | None:
    import pandas as pd
    import wandb

    manifest = run_dir / "manifest.csv"
    if not manifest.is_file():
        return None
    table = pd.read_csv(manifest)
    root = str(split.get("root") or "")
    metadata = {
        "manifest_sha256": sha256(manifest),
        "images": int(len(table)),
        "patients": int(table["patient_id"].nunique()) if "patient_id" in table else None,
        "images_per_class": {str(c): int(n) for c, n in table["label"].value_counts().sort_index().items()},
        "classes": list(split.get("classes") or []),
        "root": root,
        "source": source,
    }
    artifact = wandb.Artifact(
        artifact_name("data", source, Path(root).name),
        type="dataset",
        description="The training data's manifest (path, label, patient, group): every image the folds split",
        metadata=metadata,
    )
    artifact.add_file(str(manifest), name="manifest.csv", policy="immutable")
    return use_new_artifact(run, artifact) | {"metadata": metadata}


def _use_policy(run, path: Path) -> dict | None:
    import wandb

    if not path.is_file():
        return None
    try:
        search = json.loads(path.read_text()).get("search", {})
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        search = {}
    artifact = wandb.Artifact(
        artifact_name("policy", path.stem),
        type="augmentation-policy",
        description="The augmentation policy the fold trained with (python -m skintumor.search)",
        metadata={"path": str(path.resolve()), "search": search if isinstance(search, dict) else {}},
    )
    artifact.add_file(str(path), name=path.name, policy="immutable")
    return use_new_artifact(run, artifact)


def model_artifact(entry: Mapping):
    """The ``model`` artifact of a fold record's ``model_artifact`` entry (the same files, name and
    metadata give the same digest: re-creating it names the fold's version)."""
    import wandb

    artifact = wandb.Artifact(
        entry["name"],
        type="model",
        description="The checkpoint the fold validated, decided with (class offsets) and tested",
        metadata=dict(entry.get("metadata") or {}),
    )
    artifact.add_file(entry["file"], name=entry["entry"], policy="immutable")
    return artifact


def _log_model_artifact(run, run_dir: Path, record: Mapping) -> dict | None:
    val = _read_json(run_dir / "metrics_val.json") or {}
    checkpoint = run_dir / str(val.get("checkpoint") or "checkpoints/best.ckpt")
    if not checkpoint.is_file():
        return None
    split = _read_json(run_dir / "split.json") or {}
    test = _read_json(run_dir / "metrics_test.json") or {}
    entry = {
        "name": artifact_name("model", record.get("group"), record.get("name") or run_dir.name),
        "type": "model",
        "file": str(checkpoint.resolve()),
        "entry": checkpoint.name,
        "metadata": {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": str(checkpoint.relative_to(run_dir)),
            "fold": split.get("fold"),
            "n_folds": split.get("n_folds"),
            "data_seed": split.get("seed"),
            "classes": split.get("classes"),
            "val": {k: v for k, v in val.items() if isinstance(v, (int, float))},
            "test": {k: v for k, v in test.items() if isinstance(v, (int, float))},
        },
    }
    artifact = model_artifact(entry)
    run.log_artifact(artifact, aliases=["tested"])
    return entry | {"digest": artifact.digest}


# --- after the folds: the sweep's summary, a comparison, an exported bundle -------------------------------


def fold_records(directory: str | Path) -> list[dict]:
    """The W&B records of the training runs in ``directory`` (a run, a sweep, an ensemble sweep), sorted."""
    found = []
    for path in sorted(Path(directory).glob(f"**/wandb/{FOLD_RECORD}")):
        record = _read_json(path)
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
    meta = _read_json(bundle_dir / "model.json") or {}
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


# --- upload a sweep later ---------------------------------------------------------------------------


def offline_runs(sweep_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """A sweep's offline W&B runs in upload order: (the training runs, every other run: summary,
    comparisons, exports), each sorted by start time. The others use the training runs' artifacts,
    so they go second."""
    runs = sorted(Path(sweep_dir).glob("**/wandb/offline-run-*"), key=lambda p: p.name)
    training = [
        p for p in runs if (p.parent / FOLD_RECORD).is_file() or (p.parent.parent / "metrics_val.json").is_file()
    ]
    return training, [p for p in runs if p not in training]


def sync_sweep(sweep_dir: str | Path, dry_run: bool = False) -> int:
    """``wandb sync`` a sweep's offline runs (:func:`offline_runs`): the training runs, then the rest.
    -> the exit code of the first sync that failed, else 0."""
    for batch in offline_runs(sweep_dir):
        if not batch:
            continue
        command = [sys.executable, "-m", "wandb", "sync", *map(str, batch)]
        print(" ".join(command), flush=True)
        if not dry_run and (code := subprocess.run(command).returncode):
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skintumor.dashboard",
        description="Upload a sweep's offline W&B runs (training runs first, then summary, comparisons, exports).",
    )
    parser.add_argument("sweep", type=Path, help="a sweep (or run) directory, e.g. outputs/cv/<name>")
    parser.add_argument("--dry-run", action="store_true", help="print the wandb sync commands, upload nothing")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        parser.error(f"{args.sweep}: not a directory")
    if not any(offline_runs(args.sweep)):
        print(f"{args.sweep}: no offline W&B runs in it", file=sys.stderr)
        return 1
    return sync_sweep(args.sweep, dry_run=args.dry_run)


# --- small helpers ----------------------------------------------------------------------------------


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _write_record(path: Path, record: Mapping) -> None:
    _write_text(path, json.dumps(record, indent=2, default=str))


def _cfg_get(cfg: Mapping | None, dotted: str):
    """``cfg[a][b]`` for ``"a.b"`` (a dict or an OmegaConf config); None when absent or unset (``???``)."""
    node = cfg
    for part in dotted.split("."):
        try:
            node = node.get(part) if node is not None else None
        except Exception:  # noqa: BLE001 - a missing mandatory value (???) counts as absent
            return None
    return node


if __name__ == "__main__":
    sys.exit(main())
