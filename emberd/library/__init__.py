"""The user's sample library: scanning, indexing, storage, nearest-neighbour search, fingerprints.

``from emberd.library import Library`` is the interface the daemon uses; see
:mod:`emberd.library.query`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emberd.library.query import Library

__all__ = ["Library"]


def __getattr__(name: str) -> Any:
    # Lazy: `emberd --help` imports the CLI module without numpy-heavy code.
    if name == "Library":
        from emberd.library.query import Library

        return Library
    raise AttributeError(name)
