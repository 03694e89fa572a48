"""The errors a user's input can cause, in one home. Entry points print them as one line
(:func:`skintumor.cli.one_line_user_errors`); every other exception is a bug and keeps its traceback."""

from __future__ import annotations


class DataError(ValueError):
    """Bad user data (an image, mask, manifest, run directory, checkpoint). The message names the
    file and the problem, in one line."""


class PolicyError(DataError):
    """A missing or invalid augmentation policy file (or a policy setting that cannot work)."""


class ConfigError(ValueError):
    """A setting that cannot work (unknown option, value out of range). The message names the setting."""


class WeightsError(RuntimeError):
    """Pretrained weights could not be had (no network, missing or unsuitable file)."""
