"""The errors a user's input can cause. Entry points print them as one line (``skintumor.cli``);
everything else is a bug and keeps its traceback."""
from __future__ import annotations


class DataError(ValueError):
    """Bad user data. The message names the file and the problem, in one line."""


class ConfigError(ValueError):
    """A setting that cannot work (unknown option, value out of range). The message names the setting."""
