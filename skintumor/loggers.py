"""Experiment loggers that work with no account and no network."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_mode(mode: str = "auto") -> str:
    """ "auto" -> WANDB_MODE if set, "online" when logged in (API key or ~/.netrc), else "offline"."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def wandb_logger(save_dir: str, project: str = "skintumor", mode: str = "auto", **kwargs) -> WandbLogger:
    """A WandbLogger whose files live inside the run directory (``<save_dir>/wandb``)."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, project=project, mode=wandb_mode(mode), **kwargs)
