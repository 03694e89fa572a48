"""What the command-line entry points share: the user's input errors as one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager

from hydra.errors import InstantiationException
from rich.console import Console
from rich.markup import escape

from skintumor.errors import ConfigError, DataError, WeightsError


def print_user_error(err: BaseException) -> bool:
    """Print a user's input error (bad data, policy or weights file, a setting that cannot work) as one
    red line on stderr and return True; False for anything else (a bug: it keeps its traceback).

    Hydra's ``instantiate`` wraps errors raised while building an object, so the cause is unwrapped.
    """
    cause = err.__cause__ if isinstance(err, InstantiationException) else err
    kinds = {DataError: "data error", ConfigError: "config error", WeightsError: "weights error"}
    kind = next((name for cls, name in kinds.items() if isinstance(cause, cls)), None)
    if kind is not None:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]{kind}:[/] {escape(str(cause))}", highlight=False)
    return kind is not None


@contextmanager
def one_line_user_errors():
    """A user's input error inside the block -> one red line on stderr, exit code 2 (:func:`print_user_error`)."""
    try:
        yield
    except Exception as err:
        if not print_user_error(err):
            raise
        sys.exit(2)


def exit_code(command: Callable[[], int]) -> int:
    """``command()``'s exit code; a user's input error prints its one line and gives 2 (for ``main``
    functions that return their code instead of leaving the interpreter)."""
    try:
        return command()
    except Exception as err:
        if not print_user_error(err):
            raise
        return 2
