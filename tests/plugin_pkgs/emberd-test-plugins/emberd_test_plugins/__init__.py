"""Sinks that misbehave on purpose (emberd's isolation tests)."""

from __future__ import annotations

import time
from typing import Any, ClassVar


class RaisingSink:
    """Raises on every message."""

    def __init__(self) -> None:
        self.calls = 0

    def publish(self, topic: str, header: dict[str, Any], array: Any) -> None:
        self.calls += 1
        raise RuntimeError(f"test-raising: refusing message {self.calls} ({topic})")

    def close(self) -> None:
        pass


class BlockingSink:
    """Sleeps ``seconds`` (default 3) in every publish call: a stuck network write."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def publish(self, topic: str, header: dict[str, Any], array: Any) -> None:
        time.sleep(self.seconds)

    def close(self) -> None:
        pass


def raising(options: dict[str, str]) -> RaisingSink:
    return RaisingSink()


def blocking(options: dict[str, str]) -> BlockingSink:
    return BlockingSink(float(options.get("seconds", "3")))


def broken_ctor(options: dict[str, str]) -> Any:
    raise OSError("test-broken-ctor: cannot open its device")


class NanEncoder:
    """Returns NaN for every window (an encoder bug emberd must keep out of a library)."""

    manifest: ClassVar[dict[str, Any]] = {
        "dim": 8, "frontend": "aisfx", "window_frames": 10, "hop_frames": 5}

    def embed(self, mel: Any) -> Any:
        import numpy as np

        return np.full((mel.shape[0], 8), np.nan, np.float32)


def nan_encoder(options: dict[str, str]) -> NanEncoder:
    return NanEncoder()
