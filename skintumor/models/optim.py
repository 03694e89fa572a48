"""The optimiser and the per-epoch learning-rate schedule, built from plain config values."""

from __future__ import annotations

import math

import torch

from skintumor.errors import ConfigError


def build_optimizer(params, name: str = "adam", lr: float = 1e-4, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """adam (the study's) or adamw (decoupled weight decay; the recipe's)."""
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in optimizers:
        raise ConfigError(f"unknown optimizer {name!r} ({', '.join(optimizers)})")
    return optimizers[name](params, lr=lr, weight_decay=weight_decay)


def build_scheduler(
    optimizer,
    name: str = "step",
    max_epochs: int = 30,
    step_size: int = 7,
    gamma: float = 0.1,
    warmup_epochs: int = 0,
    min_lr: float = 0.0,
):
    """Per epoch. step: StepLR (the study's). cosine: linear warm-up, then cosine to ``min_lr``. none."""
    if name in ("none", None):
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        floor = min_lr / base if base else 0.0

        def factor(epoch: int) -> float:
            if epoch < warmup_epochs:
                return (epoch + 1) / (warmup_epochs + 1)
            progress = (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ConfigError(f"unknown scheduler {name!r} (step, cosine, none)")


__all__ = ["build_optimizer", "build_scheduler"]
