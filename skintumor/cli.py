"""What the command-line entry points share: the user's input errors as one line, not a traceback."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from hydra.errors import InstantiationException
from rich.console import Console
from rich.markup import escape

from skintumor.data.manifest import DataError
from skintumor.models.attention_resnet import WeightsError


@contextmanager
def one_line_user_errors():
    """Bad data, policy or weights files -> one red line on stderr and exit code 2.

    Hydra's ``instantiate`` wraps errors raised while building an object, so the cause is unwrapped.
    Every other error keeps its traceback: it is a bug, not the user's input.
    """
    try:
        yield
    except Exception as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if not isinstance(cause, (DataError, WeightsError)):
            raise
        kind = "data error" if isinstance(cause, DataError) else "weights error"
        Console(stderr=True, soft_wrap=True).print(f"[bold red]{kind}:[/] {escape(str(cause))}", highlight=False)
        sys.exit(2)
