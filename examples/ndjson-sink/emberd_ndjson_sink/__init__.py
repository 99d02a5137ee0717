"""emberd sink plug-in: every published message as one line of JSON.

emberd constructs the sink on its own thread (``factory(options)``), calls
``publish(topic, header, array)`` for every message a ZeroMQ subscriber would get,
on that same thread, and ``close()`` once at the end. Nothing here needs a lock.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import numpy as np

FLUSH_EVERY_LINES = 256  # lines between flushes unless flush=1


class NdjsonSink:
    """Writes ``{"topic", "header", "array"}`` per message, one per line."""

    def __init__(self, path: str, *, topics: tuple[str, ...], arrays: bool, flush: bool) -> None:
        self._own = path != "-"
        self._out: IO[str] = open(path, "a", encoding="utf-8") if self._own else sys.stdout
        self.topics = topics
        self.arrays = arrays
        self.flush_each = flush
        self.lines = 0

    def publish(self, topic: str, header: dict[str, Any], array: np.ndarray | None) -> None:
        if self.topics and not topic.startswith(self.topics):
            return
        data = array.tolist() if (array is not None and self.arrays) else None
        line = json.dumps({"topic": topic, "header": header, "array": data},
                          separators=(",", ":"))
        self._out.write(line + "\n")
        self.lines += 1
        if self.flush_each or self.lines % FLUSH_EVERY_LINES == 0:
            self._out.flush()

    def close(self) -> None:
        self._out.flush()
        if self._own:
            self._out.close()


def factory(options: dict[str, str]) -> NdjsonSink:
    """The ``emberd.sinks`` entry point: ``--sink ndjson:path=FILE,topics=a+b,arrays=0``."""
    unknown = set(options) - {"path", "topics", "arrays", "flush"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
    topics = tuple(t for t in options.get("topics", "").split("+") if t)
    return NdjsonSink(options.get("path", "emberd.ndjson"), topics=topics,
                      arrays=options.get("arrays", "1") != "0",
                      flush=options.get("flush", "0") == "1")
