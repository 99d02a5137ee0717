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
