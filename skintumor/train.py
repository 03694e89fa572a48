"""Train one fold: ``python -m skintumor.train [overrides]`` (a thin Hydra entry point).

Examples:
    python -m skintumor.train                                   # phantom, attention-gated ResNet18
    python -m skintumor.train data=folder data.root=~/scans     # your class folders
    python -m skintumor.train model=resnet18 data.fold=3 trainer.max_epochs=5
    python -m skintumor.train -m data.fold=0,1,2,3,4            # 5-fold cross-validation
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.accelerators import CPUAccelerator
from omegaconf import DictConfig, OmegaConf

from skintumor.augment import build_augmentation
from skintumor.cli import one_line_user_errors, print_user_error
from skintumor.cpu import bf16_is_emulated
from skintumor.dashboard import log_fold
from skintumor.data.datamodule import UltrasoundDataModule
from skintumor.errors import ConfigError
from skintumor.evaluate.conformal import COVERAGES, calibrate
from skintumor.evaluate.predictions import write_predictions
from skintumor.models.module import SkinTumorClassifier, default_buffers
from skintumor.rundir import (
    clear_failure,
    discard_unstarted,
    mark_started,
    record_failure,
    register_resolvers,
    run_start,
)

if TYPE_CHECKING:
    from skintumor.explain.run import ExplainSettings

log = logging.getLogger(__name__)
register_resolvers()  # ${unique_dir:...} in conf/hydra/default.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """A single run: a user's error is one line (exit 2) and a run that never started leaves no directory.
    A fold of a multirun: any failure is written to the fold's ``error.txt`` and the sweep goes on; its
    report names the fold and the command exits 1 (:class:`skintumor.hydra_callbacks.CrossValidationReport`)."""
    started, out = time.time(), Path(cfg.paths.output_dir)
    send_lightning_logs_to_run_log()
    try:
        return train(cfg)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            discard_unstarted(out, started)
            with one_line_user_errors():
                raise
        line = record_failure(out, err)
        if not print_user_error(err):
            log.exception("this fold failed; the others go on")
        log.error("%s failed: %s (details: %s)", out.name, line, out / "error.txt")
        return None


def train(cfg: DictConfig) -> float | None:
    """Fit on the fold's training part, select on its validation part, test once. Returns the chosen
    checkpoint's validation score (what a Hydra sweeper would optimise)."""
    out = Path(cfg.paths.output_dir)
    check_run_settings(cfg)
    start = run_start(cfg, out)
    if start.state == "finished":
        log.info("%s: finished run, skipped (its results stay as they are)", out)
        return finished_score(cfg, out)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data, augment=build_augmentation(**cfg.augment), _convert_="all")
    datamodule.setup()  # decode once, split by patient groups (bad files raise DataError here)
    model = hydra.utils.instantiate(
        cfg.model,
        classes=datamodule.classes,
        class_counts=datamodule.class_counts("train"),
        image_size=cfg.data.image_size,
        mean=cfg.data.mean,
        std=cfg.data.std,
        _convert_="all",
    )
    if rank_zero_only.rank == 0:
        mark_started(cfg, out, start)  # from here on the directory is this run's (run.yaml)
        clear_failure(out)
        datamodule.write_split(out)
    trainer = build_trainer(cfg)

    trainer.fit(model, datamodule=datamodule, ckpt_path=start.resume_from or None)
    chosen = tested_checkpoint(trainer, cfg.test_checkpoint)
    score = validate_and_decide(trainer, model, datamodule, chosen, out) if chosen else None
    if cfg.get("test", True):
        test_once(trainer, model, datamodule, chosen, out)
        explain_test_fold(cfg, out, trainer.is_global_zero and bool(chosen))
    log_fold(trainer, out, cfg)  # W&B: the fold's plots, tables and artifacts, then the run ends (never raises)
    return score


def check_run_settings(cfg: DictConfig) -> None:
    """Refuse, before any work, settings that cannot work."""
    if cfg.test_checkpoint not in ("best", "last"):
        raise ConfigError(f"test_checkpoint={cfg.test_checkpoint}: must be best or last")
    if cfg.test_checkpoint == "last" and not (cfg.get("callbacks") or {}).get("last_checkpoint"):
        raise ConfigError("test_checkpoint=last needs callbacks.last_checkpoint (it writes the final epoch)")
    trainer = cfg.get("trainer") or {}
    if trainer.get("sync_batchnorm") and trainer.get("accelerator") == "cpu":
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs (SyncBatchNorm is CUDA-only): add trainer.sync_batchnorm=false"
        )
    explain_settings(cfg)  # a wrong explain.* setting fails now, not after the training


def finished_score(cfg: DictConfig, out: Path) -> float | None:
    """The monitored validation score a finished run recorded (what :func:`train` returned when it ran)."""
    monitor = ((cfg.get("callbacks") or {}).get("model_checkpoint") or {}).get("monitor")
    metrics = json.loads((out / "metrics_val.json").read_text()) if (out / "metrics_val.json").is_file() else {}
    return metrics.get(monitor) if monitor else None


def start_ddp_ranks_in_this_run() -> None:
    """DDP (``trainer=ddp``) starts ranks 1.. as new processes of this command. Lightning builds their
    command from the process's arguments and ``hydra.run.dir``, which in a multirun would start a whole
    sweep per rank in a new directory; here each rank runs this job: its overrides, its directory."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    def this_job(local_rank: int) -> tuple[list[str], str]:
        job = HydraConfig.get()
        command = [sys.executable, "-m", "skintumor.train", *job.overrides.task]
        command += [
            f"hydra.run.dir={job.runtime.output_dir}",
            f"hydra.job.name={job.job.name}_rank{local_rank}",
            "hydra.output_subdir=null",
        ]
        return command, job.runtime.cwd

    subprocess_script._hydra_subprocess_cmd = this_job


def send_lightning_logs_to_run_log() -> None:
    """Lightning's messages (seed, devices, checkpoint restored...) also go to the run's ``train.log``:
    Lightning stops them at its own console handler when it is imported before Hydra sets up logging."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            logger.handlers = [h for h in logger.handlers if type(h) is not logging.StreamHandler]
            logger.propagate = True


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer with the configured loggers (their hyper-parameters logged) and callbacks."""
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [
        hydra.utils.instantiate(c)
        for name, c in (cfg.get("callbacks") or {}).items()
        if c and (loggers or name != "lr_monitor")
    ]  # LR monitor needs a logger
    start_ddp_ranks_in_this_run()
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    if warning := emulated_bf16_warning(trainer):
        log.warning(warning)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer


def validate_and_decide(
    trainer: L.Trainer, model: SkinTumorClassifier, datamodule: UltrasoundDataModule, chosen: str, out: Path
) -> float | None:
    """Validate the chosen checkpoint (what the selection saw), set the decision rule on the validation
    split (``model.calibration=temperature``: the temperature; ``model.decision=balanced``: class offsets;
    always the conformal thresholds; all written into the checkpoint), write ``predictions_val.csv`` and
    ``metrics_val.json``. -> the monitored validation score."""
    validated = trainer.validate(model, datamodule=datamodule, ckpt_path=chosen, verbose=False)
    metrics = {k: float(v) for k, v in (validated[0] if validated else {}).items()}
    selector = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # writes best.ckpt
    score = metrics.get(selector.monitor) if selector else None
    metrics["checkpoint"] = os.path.relpath(chosen, out)
    if model.hparams.calibration == "temperature":  # first: the offsets are chosen on the tempered probabilities
        metrics["temperature"] = model.fit_temperature(datamodule.val_dataloader())
    if model.hparams.decision == "balanced":
        offsets = model.choose_decision_offsets(datamodule.val_dataloader())
        metrics |= {f"decision_offset_{c}": float(o) for c, o in zip(datamodule.classes, offsets)}
        if trainer.is_global_zero:
            log.info("decision offsets chosen on validation: %s", dict(zip(datamodule.classes, offsets.round(2))))
    metrics |= validation_predictions(model, datamodule, out, trainer.is_global_zero)
    if trainer.is_global_zero:
        write_decision_buffers(chosen, model)
        (out / "metrics_val.json").write_text(json.dumps(metrics, indent=2))
    trainer.strategy.barrier()
    return score


def validation_predictions(
    model: SkinTumorClassifier, datamodule: UltrasoundDataModule, out: Path, write: bool
) -> dict[str, float]:
    """The decided model on the validation split: its split-conformal (LAC) thresholds at 90 % and 95 %
    coverage into ``conformal_thresholds``, and (``write``) ``predictions_val.csv``, the columns of
    ``predictions_test.csv``, for the report's conformal sets. -> the thresholds, for ``metrics_val.json``."""
    rows, y, probs, scores = model.predict_rows(datamodule.val_dataloader())
    thresholds = [max(calibrate(scores, y, 1 - coverage), 1e-6) for coverage in COVERAGES]  # 0 means "none"
    model.conformal_thresholds.copy_(torch.as_tensor(thresholds))
    if write:
        shifted = bool(model.decision_offsets.any())  # else the scores are the probabilities
        write_predictions(datamodule.manifest, rows, probs, out / "predictions_val.csv", scores if shifted else None)
    return {f"conformal_threshold_{round(100 * c)}": t for c, t in zip(COVERAGES, thresholds)}


def write_decision_buffers(checkpoint: str | Path, model: SkinTumorClassifier) -> None:
    """Store what was set on the validation split (class offsets, temperature, conformal thresholds) in the
    tested checkpoint's buffers (read as plain tensors and data), which the test and every later use load."""
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for name in default_buffers(len(model.classes)):
        data["state_dict"][name] = getattr(model, name).detach().cpu().float().clone()
    torch.save(data, checkpoint)


def test_once(
    trainer: L.Trainer, model: SkinTumorClassifier, datamodule: UltrasoundDataModule, chosen: str, out: Path
) -> None:
    """The test fold, read once by the chosen checkpoint (its class offsets set on validation):
    ``predictions_test.csv`` and ``metrics_test.json``."""
    results = trainer.test(model, datamodule=datamodule, ckpt_path=chosen or None, verbose=False)
    if not trainer.is_global_zero:
        return
    rows, probs, scores = model.test_predictions
    shifted = bool(model.decision_offsets.any())  # else the scores are the probabilities
    write_predictions(
        datamodule.manifest, rows, probs, out / "predictions_test.csv", scores=scores if shifted else None
    )
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    metrics["checkpoint"] = os.path.relpath(chosen, out) if chosen else "final weights (no checkpoint)"
    (out / "metrics_test.json").write_text(json.dumps(metrics, indent=2))


def explain_settings(cfg: DictConfig) -> ExplainSettings | None:
    """``cfg.explain`` (its keys in conf/train.yaml) as :class:`ExplainSettings`; None when not enabled."""
    node = cfg.get("explain")
    options = OmegaConf.to_container(node, resolve=True) if node else {}
    if not options.pop("enabled", False):
        return None
    from skintumor.explain.run import ExplainSettings  # matplotlib and grad-cam only when explaining

    return ExplainSettings.from_options(options)


def explain_test_fold(cfg: DictConfig, out: Path, tested: bool) -> None:
    """With ``explain.enabled``, explain the tested checkpoint on the test fold into ``out/explain``
    (:func:`skintumor.explain.run.explain_run`, as ``python -m skintumor.explain`` does); ``tested``:
    this process tested a checkpoint (rank 0, not fast_dev_run). A failure is logged, never raised:
    the trained and tested fold stays valid, and the command to retry is in the log."""
    settings = explain_settings(cfg)
    if settings is None or not tested:
        return
    from skintumor.explain.run import explain_run, road_cost

    progress = bool((cfg.get("callbacks") or {}).get("progress_bar"))
    try:
        result = explain_run(out, settings=settings, overwrite=bool(cfg.get("ckpt_path")), progress=progress)
    except Exception as err:  # noqa: BLE001 - the fold's results must survive an explanation failure
        log.error("explanations not written: %s (retry: python -m skintumor.explain %s)", err, out)
        return
    log.info("explained %d test images in %.1f s -> %s", result["n_test"], result["seconds"]["total"], out / "explain")
    log.info(road_cost(result))


def emulated_bf16_warning(trainer: L.Trainer) -> str | None:
    """What to tell a user who asked for bf16 on a CPU that only emulates it; None otherwise."""
    if (
        isinstance(trainer.accelerator, CPUAccelerator)
        and str(trainer.precision).startswith("bf16")
        and bf16_is_emulated()
    ):
        return (
            f"trainer.precision={trainer.precision} on a CPU without native bf16 (no avx512_bf16 or AMX in its "
            "flags): bf16 is emulated here and training runs several times slower than with 32-true"
        )
    return None


def tested_checkpoint(trainer: L.Trainer, which: str) -> str:
    """Path of the checkpoint the run validates, decides with and tests ("" when none was written).

    ``best``: the epoch the monitored callback chose on the validation split (best.ckpt); ``last``: the
    final epoch (last.ckpt, written by the callback without a monitor), for recipes where picking an
    epoch on a small validation split overfits it."""
    wanted = (c for c in trainer.checkpoint_callbacks if bool(c.monitor) == (which == "best"))
    callback = next(wanted, None)
    return callback.best_model_path if callback else ""  # without a monitor, its "best" is the latest epoch


if __name__ == "__main__":
    # the importable module's main, not __main__'s: parallel launchers (joblib, submitit) pickle the task
    # function, by reference only when its module can be imported (by value, __main__'s drags in torch)
    from skintumor.train import main as importable_main

    importable_main()
