"""What reaches W&B (docs/wandb.md), read back from offline runs: W&B's own transaction log
(``offline-run-*/run-*.wandb``) holds every config, history, summary and artifact record."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skintumor import dashboard, loggers
from skintumor.dashboard import (
    FOLD_RECORD,
    log_comparison,
    log_fold,
    log_run_files,
    log_sweep_summary,
    offline_runs,
)
from skintumor.loggers import SafeWandbLogger, config_tags, wandb_logger

from conftest import REPO, run_train, tiny_overrides

CLASSES = ["cyst", "lipoma", "pilomatricoma"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline W&B with every W&B folder in tmp_path (nothing written to $HOME)."""
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / f"wandb_{name.lower()}"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


# --- reading an offline run --------------------------------------------------------------------------


@dataclass
class OfflineRun:
    """An offline run as W&B recorded it: the run record and every config, summary, history and artifact."""

    path: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    artifacts: list = field(default_factory=list)

    def logged(self, prefix: str) -> set[str]:
        return {k for row in self.history for k in row if k.startswith(prefix)}

    def artifact(self, type_: str) -> list:
        return [a for a in self.artifacts if a.type == type_]


def records(path: Path):
    """The protobuf records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, buffer = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buffer = chunk if kind in (1, 2) else buffer + chunk
        if kind in (1, 4):  # full or last chunk
            record = pb.Record()
            record.ParseFromString(buffer)
            yield record


def _items(updates) -> list[tuple[str, object]]:
    """(top-level key, value) of config/summary/history updates; a nested update gives {rest of path: value}."""
    found = []
    for u in updates:
        keys, value = list(u.nested_key) or [u.key], json.loads(u.value_json)
        found.append((keys[0], {"/".join(keys[1:]): value} if len(keys) > 1 else value))
    return found


def _merge(into: dict, key: str, value) -> None:
    if isinstance(value, dict) and isinstance(into.get(key), dict):
        into[key] |= value
    else:
        into[key] = value


def complete_records(run_dir: Path, timeout: float = 30.0) -> list:
    """The records of the run's ``.wandb`` file once W&B has written its ``exit`` record (``run.finish()``
    returns before W&B's own process has flushed the file)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = list(records(next(run_dir.glob("*.wandb"))))
        except Exception:  # noqa: BLE001 - a chunk being written: read again
            if time.monotonic() > deadline:
                raise
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def read_run(run_dir: Path) -> OfflineRun:
    """Parse ``offline-run-*``: its run, config, summary, history and artifact records."""
    run = OfflineRun(run_dir)
    for record in complete_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.name, run.group, run.job_type, run.tags = r.display_name, r.run_group, r.job_type, list(r.tags)
            for key, value in _items(r.config.update):
                _merge(run.config, key, value)
        elif kind == "config":
            for key, value in _items(record.config.update):
                _merge(run.config, key, value)
        elif kind == "summary":
            for key, value in _items(record.summary.update):
                _merge(run.summary, key, value)
        elif kind == "history":
            row: dict = {}
            for key, value in _items(record.history.item):
                _merge(row, key, value)
            run.history.append(row)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run


def only_run(wandb_parent: Path) -> OfflineRun:
    found = sorted((wandb_parent / "wandb").glob("offline-run-*"))
    assert len(found) == 1, found
    return read_run(found[0])


def table(run: OfflineRun, key: str) -> dict:
    """The JSON of the table logged under ``key`` (files/media/table/<key>_*.table.json)."""
    folder, stem = (run.path / "files" / "media" / "table" / key).parent, Path(key).name
    (found,) = folder.glob(f"{stem}_*.table.json")
    return json.loads(found.read_text())


# --- one fold ----------------------------------------------------------------------------------------


def linked_copy(run: Path, dest: Path) -> Path:
    """``run`` as symlinks (no 130 MB checkpoint copies) with its own predictions file: one planted mistake."""
    dest.mkdir()
    for item in run.iterdir():
        if item.name not in ("predictions_test.csv", "wandb"):
            (dest / item.name).symlink_to(item)
    predictions = pd.read_csv(run / "predictions_test.csv")
    predictions.loc[0, "pred"] = next(c for c in CLASSES if c != predictions.loc[0, "label"])
    predictions.to_csv(dest / "predictions_test.csv", index=False)
    return dest


def test_a_fold_reaches_the_dashboard_with_plots_tables_overlays_and_artifacts(tiny_run, offline):
    import wandb

    fold = linked_copy(tiny_run, offline / "fold_0")
    policy = offline / "policy_fold0.json"
    policy.write_text(json.dumps({"search": {"objective": "loglik"}, "subpolicies": []}))
    run = wandb.init(project="p", group="sweep_x", name="fold_0", dir=str(fold), mode="offline")
    record = log_run_files(run, fold, best={"val/auroc_macro": 0.75}, policy=policy, source="csv", max_images=2)
    run.finish()
    logged = only_run(fold)

    val, test = (json.loads((tiny_run / f"metrics_{p}.json").read_text()) for p in ("val", "test"))
    assert logged.summary["val/auroc_macro"] == pytest.approx(val["val/auroc_macro"])  # the tested checkpoint's
    assert logged.summary["test/bal_acc"] == pytest.approx(test["test/bal_acc"])
    assert logged.summary["tested_checkpoint"] == val["checkpoint"] and logged.summary["best/val/auroc_macro"] == 0.75
    assert {"decision/offset_cyst", "decision/offset_lipoma"} <= set(logged.summary)
    for key in ("test/confusion_matrix_table", "test/roc_table", "test/predictions", "explain/overlays"):
        assert logged.logged(key), key
    assert logged.logged("explain/gallery_")  # the explained test fold's galleries
    predictions = table(logged, "test/predictions")
    assert predictions["columns"] == ["path", "patient_id", "label", *(f"p_{c}" for c in CLASSES), "pred"] + [
        "correct",
        "image",
    ]
    wrong = [row for row in predictions["data"] if row[-2] is False]
    assert len(wrong) >= 1 and all(row[-1] is not None for row in wrong)  # thumbnails of the mistakes
    assert all(row[-1] is None for row in predictions["data"] if row[-2] is True)
    assert len(list((logged.path / "files" / "media" / "images" / "explain").glob("overlays_*.png"))) == 2

    (data,) = logged.artifact("dataset")
    (used_policy,) = logged.artifact("augmentation-policy")
    (model,) = logged.artifact("model")
    assert data.use_after_commit and used_policy.use_after_commit and not model.use_after_commit  # in, in, out
    assert json.loads(data.metadata)["images"] == len(pd.read_csv(tiny_run / "manifest.csv"))
    assert [c.path for c in model.manifest.contents] == [Path(val["checkpoint"]).name] and "tested" in model.aliases
    on_disk = json.loads((fold / "wandb" / FOLD_RECORD).read_text())
    assert on_disk["model_artifact"]["digest"] == model.digest == record["model_artifact"]["digest"]
    assert on_disk["dataset_artifact"]["digest"] == data.digest and on_disk["group"] == "sweep_x"


def test_the_logger_logs_the_config_once_names_members_and_never_repeats_val(offline):
    """Two epochs of a Lightning fit, then trainer.validate (train.py re-validates the chosen checkpoint)."""
    run_dir = offline / "sweep" / "member_2" / "fold_1"
    logger = wandb_logger(str(run_dir), project="p", mode="offline", name="fold_1", group="sweep", job_type="recipe")
    cfg = {"task_name": "recipe", "data": {"source": "csv", "fold": 1}, "model": {"net": {"attention": True}}}
    tiny_lightning_fit(run_dir, [logger], cfg)  # the module's own hyper-parameters ({"lr": 0.1}) come second
    logged = only_run(run_dir)
    assert logged.name == "fold_1/seed_2" and logged.group == "sweep" and logged.job_type == "recipe"
    assert set(config_tags(cfg)) == {"recipe", "csv", "attention_resnet18"} <= set(logged.tags)
    assert logged.config["model"] == {"net": {"attention": True}} and "lr" not in logged.config  # once, nested
    assert [row["epoch"] for row in logged.history if "val/loss" in row] == [0, 1]  # not again after the fit
    assert [row["epoch"] for row in logged.history if "train/loss" in row] == [0, 1]
    assert (run_dir / "wandb" / loggers.RUN_ID).read_text() == logged.path.name.split("-")[-1]  # resume continues it
    assert json.loads((run_dir / "wandb" / FOLD_RECORD).read_text())["name"] == "fold_1/seed_2"


def tiny_lightning_fit(tmp_path: Path, logger_list: list, cfg: dict | None = None) -> Path:
    """Two epochs of a linear model on random numbers with a CSV logger and ``logger_list`` (given ``cfg``
    first, as train.py does), a validation after the fit, then :func:`log_fold`: -> the CSV log."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"lr": 0.1})
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, _):
            loss = torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
            self.log("train/loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            self.log("val/loss", torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    csv = CSVLogger(str(tmp_path), name="csv", version="")
    trainer = L.Trainer(
        max_epochs=2,
        logger=[csv, *logger_list],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(cfg or {"task_name": "train"})
    trainer.fit(Tiny(), loader, loader)
    trainer.validate(Tiny(), loader, verbose=False)
    log_fold(trainer, tmp_path, None)
    return tmp_path / "csv" / "metrics.csv"


def test_a_wandb_failure_is_one_warning_and_training_goes_on_with_the_csv_logger(offline, monkeypatch, caplog):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    logger = SafeWandbLogger(save_dir=str(offline), project="p", mode="online")
    with caplog.at_level(logging.WARNING, logger="skintumor.loggers"):
        metrics = tiny_lightning_fit(offline, [logger])
    assert logger.failed and pd.read_csv(metrics)["val/loss"].notna().sum() >= 1  # the CSV log is whole
    warnings = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert len(warnings) == 1 and "starting the run" in warnings[0] and "no network" in warnings[0]

    class BrokenRun:  # a run that opened, then fails at every call
        id, name, project, entity, group, job_type, tags, offline, disabled = "x", "f", "p", None, "g", "t", (), 1, 0

        def __getattr__(self, name):
            raise OSError("disk full")

    fold = offline / "fold_0"
    fold.mkdir()
    (fold / "split.json").write_text(json.dumps({"classes": CLASSES, "root": str(offline)}))
    (fold / "metrics_val.json").write_text(json.dumps({"val/acc": 0.5, "checkpoint": "checkpoints/best.ckpt"}))
    rows = [f"{c}.png,P{i},{c}," + ",".join(["0.333"] * 3) + f",{CLASSES[0]}" for i, c in enumerate(CLASSES)]
    header = "path,patient_id,label," + ",".join(f"p_{c}" for c in CLASSES) + ",pred"
    (fold / "predictions_test.csv").write_text("\n".join([header, *rows]) + "\n")
    (fold / "manifest.csv").write_text("path,label,patient_id\n" + "\n".join(f"{c}.png,{c},P" for c in CLASSES))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skintumor.loggers"):
        record = log_run_files(BrokenRun(), fold)  # every part fails on its own: no exception
        log_sweep_summary(offline)  # the fold's record names project p: the summary has no report to log
    failed = [r.getMessage() for r in caplog.records]
    assert len(failed) >= 4 and all(m.startswith("W&B: ") and "disk full" in m for m in failed), failed
    assert record["project"] == "p" and record["dataset_artifact"] is None


# --- after the folds ----------------------------------------------------------------------------------


def synthetic_sweep(root: Path, strength: float, model_seed: int, n_folds: int = 2) -> Path:
    """A sweep as training writes it (``fold_<k>/predictions_test.csv``, ``.hydra``), each fold marked as
    logged to W&B offline (``wandb/skintumor_fold.json``)."""
    layout = np.random.default_rng(0)
    for k in range(n_folds):
        run = root / f"fold_{k}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"data:\n  n_folds: {n_folds}\n  fold: {k}\n")
        noise, rows = np.random.default_rng(10 * model_seed + k), []
        for p in range(24):
            label = int(layout.integers(0, 3))
            logits = noise.normal(size=3)
            logits[label] += strength
            probs = np.exp(logits) / np.exp(logits).sum()
            rows.append(
                {"path": f"f{k}/p{p}.png", "patient_id": f"P{k}_{p}", "group_id": f"G{k}_{p}", "label": CLASSES[label]}
                | {f"p_{c}": probs[j] for j, c in enumerate(CLASSES)}
                | {"pred": CLASSES[int(probs.argmax())]}
            )
        pd.DataFrame(rows).to_csv(run / "predictions_test.csv", index=False)
        identity = {"kind": "fold", "project": "p", "group": root.name, "mode": "offline", "name": f"fold_{k}"}
        (run / "wandb").mkdir()
        (run / "wandb" / FOLD_RECORD).write_text(json.dumps(identity | {"tags": ["recipe"]}))
    return root


def test_the_sweep_summary_and_a_comparison_reach_the_dashboard(offline):
    from skintumor.evaluate.compare import build_comparison
    from skintumor.evaluate.report import build_report

    a, b = synthetic_sweep(offline / "sweep_a", 2.0, 1), synthetic_sweep(offline / "sweep_b", 1.0, 2)
    build_report(a, n_boot=100, console=quiet())
    log_sweep_summary(a)
    summary = only_run(a)
    assert (summary.name, summary.group, summary.job_type, summary.tags) == (
        "summary",
        "sweep_a",
        "cv-report",
        ["recipe"],
    )
    pooled = table(summary, "report/pooled")
    assert pooled["columns"][:6] == ["level", "metric", "label", "pooled", "ci_low", "ci_high"]
    row = next(r for r in pooled["data"] if r[:2] == ["image", "auroc_macro"])
    numbers = json.loads((a / "metrics_cv.json").read_text())["image"]["pooled"]["auroc_macro"]
    assert row[3:6] == pytest.approx([numbers["value"], numbers["ci_low"], numbers["ci_high"]])
    assert [r[:2] for r in table(summary, "report/per_fold")["data"]] == [["image", 0], ["image", 1]] + [
        ["patient", 0],
        ["patient", 1],
    ]
    figures = {p.stem for p in (a / "figures").glob("*.png")}
    assert {"confusion_image", "roc_curves", "reliability"} <= figures
    assert {f"figures/{f}" for f in figures} <= summary.logged("figures/")
    assert summary.summary["image/auroc_macro"] == pytest.approx(numbers["value"])
    (report,) = summary.artifact("cv-report")
    assert {"report.md", "report.html", "metrics_cv.json", "figures/roc_curves.png"} <= {
        c.path for c in report.manifest.contents
    }

    result = build_comparison(a, b, n_boot=100, console=quiet())
    log_comparison(result["out_dir"], a, b)
    compare = only_run(Path(result["out_dir"]))
    assert (compare.name, compare.group, compare.job_type) == ("compare sweep_a vs sweep_b", "sweep_a", "compare")
    image = table(compare, "compare/image")
    assert image["columns"][:5] == ["metric", "label", "a", "b", "diff"]
    assert any(r[0] == "auroc_macro" for r in image["data"]) and compare.logged("compare/per_fold")
    (artifact,) = compare.artifact("comparison")
    assert {c.path for c in artifact.manifest.contents} == {"comparison.md", "comparison.html", "comparison.json"}


def quiet():
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def test_sync_uploads_training_runs_before_the_runs_that_use_their_artifacts(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for path in (
        "member_1/fold_0/wandb/offline-run-20260101_100000-a",
        "fold_1/wandb/offline-run-20260101_110000-b",
        "wandb/offline-run-20260101_120000-c",  # summary
        "compare_x/wandb/offline-run-20260101_130000-d",
    ):
        (sweep / path).mkdir(parents=True)
    for fold in ("member_1/fold_0", "fold_1"):
        (sweep / fold / "wandb" / FOLD_RECORD).write_text("{}")
    training, rest = offline_runs(sweep)
    assert [p.name[-1] for p in training] == ["a", "b"] and [p.name[-1] for p in rest] == ["c", "d"]
    assert dashboard.main([str(sweep), "--dry-run"]) == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    assert "wandb sync" in first and first.endswith("-b") and second.endswith("-d")
    (tmp_path / "empty").mkdir()
    assert dashboard.main([str(tmp_path / "empty")]) == 1  # nothing to upload: said, not silent
    make = (REPO / "Makefile").read_text()
    assert "\nsync:" in make and "skintumor.dashboard" in make


# --- a whole ensemble sweep, offline (slow) -------------------------------------------------------------


@pytest.mark.slow
def test_an_ensemble_sweep_exported_and_compared_is_traceable_on_the_dashboard(masked_manifest, offline):
    """experiment=recipe_ensemble, 2 members x 2 folds with W&B offline (the subprocesses inherit the
    ``offline`` fixture's WANDB_* folders), then ``skintumor export`` and a comparison of the members."""
    sweep = offline / "sweep"
    overrides = [o for o in tiny_overrides(masked_manifest, "recipe_ensemble") if o != "logger=csv"]
    proc = run_train(
        "-m",
        *overrides,
        "logger=default",
        "data.fold=0,1",
        "explain.road_images=0",
        "explain.overlays=2",
        "explain.methods=[gradcam]",
        "hydra.callbacks.cv_report.n_boot=100",
        f"hydra.sweep.dir={sweep}",
        f"sweep_name={sweep.name}",  # as make cv does: the W&B group
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B:" not in proc.stderr + proc.stdout  # no logging failure
    folds = {p.parent.parent.relative_to(sweep).as_posix(): read_run(p) for p in sweep.glob("*/*/wandb/offline-run-*")}
    assert set(folds) == {f"member_{s}/fold_{k}" for s in (1, 2) for k in (0, 1)}
    names = sorted(run.name for run in folds.values())
    assert names == ["fold_0/seed_1", "fold_0/seed_2", "fold_1/seed_1", "fold_1/seed_2"]  # unique
    for run in folds.values():
        assert run.group == sweep.name and run.job_type == "recipe_ensemble"
        assert {"recipe_ensemble", "csv", "attention_resnet18"} <= set(run.tags)
        assert "net" not in run.config and run.config["model"]["net"]["lesion_decoder"] is True  # nested, once
        epochs = [row["epoch"] for row in run.history if "val/auroc_macro" in row]
        assert epochs == [0, 1]  # each epoch once: the re-validation of the chosen checkpoint is not repeated
        assert run.logged("train/") and run.summary["val/auroc_macro"] is not None
        assert {"test/confusion_matrix_table", "test/roc_table", "test/predictions", "explain/overlays"} <= set(
            k for row in run.history for k in row
        )
    data = {run.artifact("dataset")[0].digest for run in folds.values()}
    assert len(data) == 1 and all(run.artifact("dataset")[0].use_after_commit for run in folds.values())
    models = {run.artifact("model")[0].name: run.artifact("model")[0].digest for run in folds.values()}
    assert len(models) == 4

    summary = only_run(sweep)
    assert summary.name == "summary" and summary.group == sweep.name and summary.job_type == "cv-report"
    for prefix in ("member_1/", "member_2/", "ensemble/"):
        assert summary.logged(f"{prefix}report/pooled") and summary.logged(f"{prefix}figures/roc_curves")
    assert len(summary.artifact("cv-report")) == 3

    bundle = offline / "bundle"
    export = command("skintumor", "export", str(sweep), "--out", str(bundle))
    assert export.returncode == 0, export.stderr[-3000:]
    (export_run,) = [read_run(p) for p in (sweep / "wandb").glob("offline-run-*") if read_run(p).job_type == "export"]
    used = {a.name: a.digest for a in export_run.artifact("model") if a.use_after_commit}
    assert used == models  # the bundle's run uses exactly the folds' model versions
    (made,) = [a for a in export_run.artifact("model") if not a.use_after_commit]
    assert set(json.loads(made.metadata)["members"].values()) == {f"{n}:{d}" for n, d in models.items()}
    assert {"model.json"} <= {c.path for c in made.manifest.contents}

    compare = command("skintumor.report", str(sweep / "member_1"), str(sweep / "member_2"), "--n-boot", "100")
    assert compare.returncode == 0, compare.stderr[-3000:]
    (compared,) = [read_run(p) for p in (sweep / "member_1").glob("compare_member_2/wandb/offline-run-*")]
    assert compared.job_type == "compare" and compared.logged("compare/image")
    training, rest = offline_runs(sweep)
    assert len(training) == 4 and len(rest) == 3  # summary, export, comparison: uploaded after the folds


def command(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in a subprocess (with this process's environment: W&B offline in tmp)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
