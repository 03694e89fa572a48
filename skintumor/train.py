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
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from omegaconf import DictConfig, OmegaConf

from skintumor.augment import build_augmentation
from skintumor.cli import one_line_user_errors
from skintumor.cpu import bf16_is_emulated
from skintumor.data.manifest import DataError
from skintumor.errors import ConfigError
from skintumor.evaluate.predictions import write_predictions

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with one_line_user_errors():
        return train(cfg)


def train(cfg: DictConfig) -> float | None:
    """Fit on the fold's training part, select on its validation part, test once. Returns the chosen
    validation score (what a Hydra sweeper would optimise)."""
    out = Path(cfg.paths.output_dir)
    which = cfg.get("test_checkpoint", "best")
    if which not in ("best", "last"):
        raise ConfigError(f"test_checkpoint={which}: must be best or last")
    if which == "last" and not (cfg.get("callbacks") or {}).get("last_checkpoint"):
        raise ConfigError("test_checkpoint=last needs callbacks.last_checkpoint (it writes the final epoch)")
    if (out / "checkpoints").exists() and not cfg.get("ckpt_path"):
        raise DataError(f"{out}: run directory already holds checkpoints; runs are never overwritten")
    L.seed_everything(cfg.seed, workers=True)

    datamodule = hydra.utils.instantiate(cfg.data, augment=build_augmentation(**cfg.augment), _convert_="all")
    datamodule.setup()  # decode once, split by patient groups (bad files raise DataError here)
    datamodule.write_split(out)

    model = hydra.utils.instantiate(cfg.model, classes=datamodule.classes,
                                    class_counts=datamodule.class_counts("train"),
                                    image_size=cfg.data.image_size, mean=cfg.data.mean, std=cfg.data.std,
                                    _convert_="all")
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [hydra.utils.instantiate(c) for name, c in (cfg.get("callbacks") or {}).items()
                 if c and (loggers or name != "lr_monitor")]  # LR monitor needs a logger
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    if warning := emulated_bf16_warning(trainer):
        log.warning(warning)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    selector = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # writes best.ckpt
    chosen = tested_checkpoint(trainer, which)
    score = selector.best_model_score if selector and which == "best" else None

    if chosen:
        # what the selection saw: the chosen checkpoint's scores on the inner validation split
        validated = trainer.validate(model, datamodule=datamodule, ckpt_path=chosen, verbose=False)
        val_metrics = {k: float(v) for k, v in (validated[0] if validated else {}).items()}
        if score is None and selector:  # the final epoch: its own validation score
            score = val_metrics.get(selector.monitor)
        val_metrics["checkpoint"] = os.path.relpath(chosen, out)
        if model.hparams.decision == "balanced":
            # where the decision falls between classes, chosen on the validation split, kept in the checkpoint
            offsets = model.choose_decision_offsets(datamodule.val_dataloader())
            val_metrics |= {f"decision_offset_{c}": float(o) for c, o in zip(datamodule.classes, offsets)}
            if trainer.is_global_zero:
                checkpoint = torch.load(chosen, map_location="cpu", weights_only=False)
                checkpoint["state_dict"]["decision_offsets"] = torch.as_tensor(offsets, dtype=torch.float32)
                torch.save(checkpoint, chosen)
                log.info("decision offsets chosen on validation: %s", dict(zip(datamodule.classes, offsets.round(2))))
            trainer.strategy.barrier()
        if trainer.is_global_zero:
            (out / "metrics_val.json").write_text(json.dumps(val_metrics, indent=2))

    if cfg.get("test", True):
        # the test fold is read once, by the checkpoint chosen above (its class offsets set on validation)
        results = trainer.test(model, datamodule=datamodule, ckpt_path=chosen or None, verbose=False)
        rows, probs, scores = model.test_predictions
        if trainer.is_global_zero:
            shifted = bool(model.decision_offsets.any())  # else the scores are the probabilities
            write_predictions(datamodule.manifest, rows, probs, out / "predictions_test.csv",
                              scores=scores if shifted else None)
            metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
            metrics["checkpoint"] = os.path.relpath(chosen, out) if chosen else "final weights (no checkpoint)"
            (out / "metrics_test.json").write_text(json.dumps(metrics, indent=2))
    for logger in loggers:
        if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    return float(score) if score is not None else None


def emulated_bf16_warning(trainer: L.Trainer) -> str | None:
    """What to tell a user who asked for bf16 on a CPU that only emulates it; None otherwise."""
    if isinstance(trainer.accelerator, CPUAccelerator) and str(trainer.precision).startswith("bf16") and bf16_is_emulated():
        return (f"trainer.precision={trainer.precision} on a CPU without native bf16 (no avx512_bf16 or AMX in its "
                "flags): bf16 is emulated here and training runs several times slower than with 32-true")
    return None


def tested_checkpoint(trainer: L.Trainer, which: str) -> str:
    """Path of the checkpoint the run validates, decides with and tests ("" when none was written).

    ``best``: the epoch the monitored callback chose on the validation split (best.ckpt); ``last``: the
    final epoch (last.ckpt, written by the callback without a monitor), for recipes where picking an
    epoch on a small validation split overfits it (benchmarks/RESULTS.md, stage 17)."""
    wanted = (c for c in trainer.checkpoint_callbacks if bool(c.monitor) == (which == "best"))
    callback = next(wanted, None)
    return callback.best_model_path if callback else ""  # without a monitor, its "best" is the latest epoch

if __name__ == "__main__":
    main()
