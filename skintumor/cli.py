"""What the command-line entry points share: the user's input errors as one line, not a traceback."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from hydra.errors import InstantiationException
from rich.console import Console
from rich.markup import escape

from skintumor.errors import ConfigError, DataError, WeightsError


@contextmanager
def one_line_user_errors():
    """Bad data, policy or weights files, or a setting that cannot work -> one red line on stderr, exit code 2.

    Hydra's ``instantiate`` wraps errors raised while building an object, so the cause is unwrapped.
    Every other error keeps its traceback: it is a bug, not the user's input.
    """
    try:
        yield
    except Exception as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        kinds = {DataError: "data error", ConfigError: "config error", WeightsError: "weights error"}
        kind = next((name for cls, name in kinds.items() if isinstance(cause, cls)), None)
        if kind is None:
            raise
        Console(stderr=True, soft_wrap=True).print(f"[bold red]{kind}:[/] {escape(str(cause))}", highlight=False)
        sys.exit(2)
