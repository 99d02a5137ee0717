"""Where emberd keeps its files.

``EMBERD_DATA_DIR`` and ``EMBERD_CACHE_DIR`` override the platform defaults
(platformdirs), which lets tests and CI keep everything in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "emberd"


def _folder(env_var: str, kind: str) -> Path:
    """The folder named by ``env_var``, else platformdirs' ``user_<kind>_dir``; created."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env)
    else:
        import platformdirs

        path = Path(getattr(platformdirs, f"user_{kind}_dir")(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """User data folder (models, demo library); created on demand."""
    return _folder("EMBERD_DATA_DIR", "data")


def cache_dir() -> Path:
    """User cache folder (downloaded wheels, PCA maps); created on demand."""
    return _folder("EMBERD_CACHE_DIR", "cache")


def models_dir() -> Path:
    """Folder of user and fetched models: one ``NAME/`` folder each."""
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
