"""Bounded drop-oldest handoff from the worker to one publisher thread.

Live, the worker must never wait for a slow transport: with ``lossless=False``
:meth:`Handoff.put` waits at most for a pop's short lock hold, and when the publisher has
fallen ``capacity`` items behind, the oldest item is dropped and counted, so the
publisher always sends the freshest hops. File input at ``fast`` pace uses
``lossless=True``: there is no live audio to keep up with, so ``put`` *blocks* until the
publisher makes room (or the handoff is closed) and every hop is delivered.

Shared attributes (written by -> read by):

* ``_items`` deque guarded by ``_cond`` (worker appends, publisher pops)
* ``dropped`` items dropped because the queue was full (worker -> status)
"""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

T = TypeVar("T")

HANDOFF_CAPACITY_ITEMS = 16  # hops a publisher may lag: 0.37 s at a 23 ms hop


class Handoff(Generic[T]):
    """Bounded FIFO; full -> the oldest item is replaced and counted in ``dropped``."""

    def __init__(self, capacity: int = HANDOFF_CAPACITY_ITEMS, *, lossless: bool = False) -> None:
        self._items: collections.deque[T] = collections.deque(maxlen=capacity)
        self.lossless = lossless
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> T | None:
        """Append ``item``. Lossy: waits only for a pop's short lock hold (full: the oldest
        item is dropped and counted). Lossless: blocks until there is room or closed.

        Returns the item dropped to make room (the caller counts what it held), or None.
        """
        evicted: T | None = None
        with self._cond:
            while self.lossless and len(self._items) == self._items.maxlen and not self._closed:
                self._cond.wait()  # fast file input only: back-pressure, nothing lost
            if len(self._items) == self._items.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
                evicted = self._items[0]
            self._items.append(item)
            self._cond.notify()
        return evicted

    def get(self, timeout: float) -> T | None:
        """Oldest item, or None after ``timeout`` seconds or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()  # a lossless put may be waiting for room
            return item

    def close(self) -> None:
        """Wake the consumer; :meth:`get` returns the remaining items, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
