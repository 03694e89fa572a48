"""A training run on the dashboard: its summary, test plots, predictions table, CAM overlays and
artifacts (dataset, policy, model), and the record (``<run>/wandb/skintumor_fold.json``) from which
the later runs (:mod:`skintumor.dashboard.summary`) join its project and group and name its artifacts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from skintumor.deploy.bundle import sha256
from skintumor.loggers import SafeWandbLogger, _write_text, finish_run, never_raises, warn

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
    split = read_json(run_dir / "split.json") or {}
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
    for key, value in (read_json(run_dir / "metrics_val.json") or {}).items():
        if key == "checkpoint":
            summary["tested_checkpoint"] = value
        elif key.startswith("decision_offset_"):
            summary[f"decision/offset_{key.removeprefix('decision_offset_')}"] = value
        else:
            summary[key] = value  # val/*: the tested checkpoint's validation numbers
    test = read_json(run_dir / "metrics_test.json") or {}
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
    val = read_json(run_dir / "metrics_val.json") or {}
    checkpoint = run_dir / str(val.get("checkpoint") or "checkpoints/best.ckpt")
    if not checkpoint.is_file():
        return None
    split = read_json(run_dir / "split.json") or {}
    test = read_json(run_dir / "metrics_test.json") or {}
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


# --- small helpers ----------------------------------------------------------------------------------


def read_json(path: Path):
    """A JSON file's content; None when it is missing or unreadable."""
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
