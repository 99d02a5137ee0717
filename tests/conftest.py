"""Shared pytest fixtures and the component-skip policy.

Tests that need a system component (a sound server, Pd, sclang, chromium,
PortAudio, the fetched aiSFX model) call :func:`require` instead of
``pytest.skip``: locally a missing component skips the test, but with
``EMBERD_REQUIRE_COMPONENTS=1`` (set by ``.ci/run``) it fails it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_COMPONENTS = os.environ.get("EMBERD_REQUIRE_COMPONENTS", "") not in ("", "0")
HYDROGEN_DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")


def require(condition: bool, component: str) -> None:
    """Skip (locally) or fail (in CI) when ``component`` is not available."""
    if condition:
        return
    message = f"component missing: {component}"
    if REQUIRE_COMPONENTS:
        pytest.fail(message + " (EMBERD_REQUIRE_COMPONENTS is set)", pytrace=False)
    pytest.skip(message)


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
