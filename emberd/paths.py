"""Where emberd keeps its files.

``EMBERD_DATA_DIR`` and ``EMBERD_CACHE_DIR`` override the platform defaults
(platformdirs), which lets tests and CI keep everything in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "emberd"


def data_dir() -> Path:
    """User data folder (models, demo library); created on demand."""
    env = os.environ.get("EMBERD_DATA_DIR")
    if env:
        path = Path(env)
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """User cache folder (downloaded wheels, PCA maps); created on demand."""
    env = os.environ.get("EMBERD_CACHE_DIR")
    if env:
        path = Path(env)
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Folder of user and fetched models: one ``NAME/`` folder each."""
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
