"""Shared pytest fixtures and the component-skip policy.

Tests that need a system component (a sound server, Pd, sclang, chromium,
PortAudio, the fetched aiSFX model) call :func:`require` instead of
``pytest.skip``: locally a missing component skips the test, but with
``EMBERD_REQUIRE_COMPONENTS=1`` (set by ``.ci/run``) it fails it.
"""

from __future__ import annotations

import importlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REQUIRE_COMPONENTS = os.environ.get("EMBERD_REQUIRE_COMPONENTS", "") not in ("", "0")

# PortAudio joins a JACK server once per process, when sounddevice is first imported, and
# libjack cannot hold clients of two servers in one process: with PortAudio joined to the
# session's default server (CI starts one), the first JACK-Client connecting to a test's
# private server crashed the whole test process (SIGSEGV in test_midi). Nothing in this
# process needs PortAudio on JACK (JACK tests run the daemon as a child with its own
# JACK_DEFAULT_SERVER), so PortAudio here is pointed at a server that does not exist.
os.environ["JACK_NO_START_SERVER"] = "1"
os.environ["JACK_DEFAULT_SERVER"] = f"emberd-tests-no-server-{os.getpid()}"
HYDROGEN_DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")


def require(condition: bool, component: str) -> None:
    """Skip (locally) or fail (in CI) when ``component`` is not available."""
    if condition:
        return
    message = f"component missing: {component}"
    if REQUIRE_COMPONENTS:
        pytest.fail(message + " (EMBERD_REQUIRE_COMPONENTS is set)", pytrace=False)
    pytest.skip(message)


def dev_module(name: str) -> Any:
    """Import a dev dependency (reference implementation); missing = skip, or fail in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"dev dependency {name}")


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    assert a.shape == ref.shape, (a.shape, ref.shape)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def wav_bytes(sr: int, samples: np.ndarray) -> bytes:
    """A 16-bit mono RIFF/WAVE file written by hand (so sr may be 0)."""
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sr, sr * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture(scope="session")
def drumkit_dir() -> Path:
    """Debian's hydrogen-drumkits folder (real drum samples)."""
    require(HYDROGEN_DRUMKITS.is_dir(), f"hydrogen-drumkits ({HYDROGEN_DRUMKITS})")
    return HYDROGEN_DRUMKITS


@pytest.fixture(scope="session")
def aisfx_manifest_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """aiSFX fetched and converted once per test session (models area).

    The wheel is cached in ``emberd.paths.cache_dir()`` (so reruns don't
    download it again); the converted ``model.onnx`` + ``manifest.json`` go to
    a session temporary folder, leaving the user's data dir alone.
    """
    from emberd.errors import ComponentMissing
    from emberd.models import aisfx
    from emberd.paths import cache_dir

    root = tmp_path_factory.mktemp("aisfx-models")
    try:
        return aisfx.fetch(root, cache_dir())
    except ComponentMissing as exc:
        require(False, f"aiSFX wheel via pip download ({exc})")
        raise


@pytest.fixture(scope="session")
def identify_library(drumkit_dir: Path) -> Path:
    """All of hydrogen-drumkits plus synthetic distractors, indexed with the DSP baseline.

    Larger than every identification candidate budget (so a broken stage shows), built once
    per code version and cached (:func:`emberd.testing.drumkits.identification_library`).
    """
    from emberd.testing.drumkits import identification_library

    return identification_library("dsp-baseline", kits=drumkit_dir)[0]
