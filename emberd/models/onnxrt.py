"""Import ONNX Runtime once, refusing a broken CPU+GPU double install.

``onnxruntime`` and ``onnxruntime-gpu`` install the same module; with both
present, whichever was installed last silently wins and the other's files are
half-overwritten. emberd stops with the one-line fix instead.
"""

from __future__ import annotations

import functools
from importlib import metadata
from types import ModuleType

from emberd.errors import ComponentMissing, EmberdError

_CPU_DIST = "onnxruntime"
_GPU_DIST = "onnxruntime-gpu"


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


@functools.cache
def onnxruntime() -> ModuleType:
    """Return the ``onnxruntime`` module after checking the installation.

    Raises
    ------
    EmberdError
        If both the CPU and GPU distributions are installed.
    ComponentMissing
        If neither is installed.
    """
    if _installed(_CPU_DIST) and _installed(_GPU_DIST):
        raise EmberdError(
            "both onnxruntime and onnxruntime-gpu are installed; fix with: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'emberd[gpu]' "
            "(or 'emberd[cpu]')"
        )
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ComponentMissing(
            "ONNX Runtime is not installed; fix with: pip install 'emberd[cpu]' "
            "(or 'emberd[gpu]' on a CUDA machine)"
        ) from exc
    return ort
