"""The repository's plug-in packages (examples and test sinks), installed on demand.

Tests and benches exercise real distributions with real entry points, found by
``importlib.metadata`` as a user's would be: :func:`install` pip-installs the local
package unless that version is already installed in the running environment.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "emberd-ndjson-sink": REPO / "examples" / "ndjson-sink",
    "emberd-mfcc-encoder": REPO / "examples" / "encoder-plugin",
    "emberd-test-plugins": REPO / "tests" / "plugin_pkgs" / "emberd-test-plugins",
}


def install(names: list[str]) -> None:
    """pip-install the named packages (``--no-deps``) whose local version is not installed.

    Raises
    ------
    RuntimeError
        pip failed (its standard error in the message).
    """
    todo = []
    for name in names:
        with open(PACKAGES[name] / "pyproject.toml", "rb") as f:
            want = tomllib.load(f)["project"]["version"]
        try:
            have: str | None = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have != want:
            todo.append(str(PACKAGES[name]))
    if not todo:
        return
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *todo],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(todo)} failed:\n{proc.stderr[-3000:]}")
    importlib.invalidate_caches()
