"""Data augmentation for B-mode ultrasound: operations, hand-made presets, learned policies.

``build_augmentation(name, path)`` is what the config calls; :mod:`skintumor.augment.search`
learns a policy inside one outer training fold.
"""

from __future__ import annotations

from pathlib import Path

from skintumor.augment.compose import Augmentation
from skintumor.augment.ops import DEFAULT_OPS, OPS, build_op, op_parameter
from skintumor.augment.policy import Policy, Step
from skintumor.augment.presets import PRESETS
from skintumor.errors import PolicyError

NAMES = ("none", "default", "policy")


def build_augmentation(name: str = "default", path: str | Path | None = None, seed: int | None = None) -> Augmentation:
    """The train-time augmentation called ``name``: ``t(image=uint8 HxW) -> {"image": uint8 HxW}``.

    Args:
        name: ``none`` (identity), ``default`` (hand-made, see :mod:`presets`) or ``policy``.
        path: the policy JSON file; required for ``policy``, refused otherwise.
        seed: random seed of the augmentation stream (None: fresh entropy).
    """
    if name not in NAMES:
        raise PolicyError(f"unknown augmentation {name!r} (choose one of: {', '.join(NAMES)})")
    if name == "policy":
        if not path:
            raise PolicyError("augmentation 'policy' needs a policy file: set augment.path=FILE")
        return Policy.load(path).augmentation(seed=seed)
    if path:
        raise PolicyError(f"{path}: a policy file was given but augmentation is {name!r}; use augment=policy")
    return PRESETS[name](seed=seed)


__all__ = [
    "Augmentation",
    "DEFAULT_OPS",
    "OPS",
    "Policy",
    "PolicyError",
    "Step",
    "build_augmentation",
    "build_op",
    "op_parameter",
]
