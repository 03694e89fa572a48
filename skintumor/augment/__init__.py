"""Augmentation for greyscale B-mode: hand-made presets (and learned policies)."""
from __future__ import annotations

from skintumor.augment.presets import default_augmentation


def build_augmentation(name: str = "default", **kwargs):
    """The training transform by name: "none" or "default"."""
    if name == "none":
        return None
    if name == "default":
        return default_augmentation(**kwargs)
    raise ValueError(f"unknown augmentation {name!r} (none, default)")
