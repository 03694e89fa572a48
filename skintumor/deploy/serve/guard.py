"""A shared/exclusive lock: plain predictions run side by side, an explanation map runs alone.

Why the map needs the model to itself: Grad-CAM (pytorch-grad-cam) registers forward and gradient
hooks on the network's ``layer4``, which every request shares. While they are attached, *any* forward
pass through that layer, including another thread's plain ``no_grad`` prediction, appends its
activations to the map's list, and two maps at once would each read the other's. So a request that
asks for maps holds the lock exclusively; requests without maps hold it shared and run concurrently
(torch's eval-mode forward passes are safe to run in parallel threads).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SharedExclusive:
    """Many shared holders at once, or one exclusive holder alone. A waiting exclusive holder goes
    first (new shared holders wait for it), so a stream of plain predictions cannot starve a map."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    def hold(self, exclusive: bool):
        """``exclusive()`` or ``shared()``."""
        return self.exclusive() if exclusive else self.shared()
