"""``with`` support shared by the client classes (subscriber, OSC receiver, control client)."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_Self = TypeVar("_Self", bound="Closing")


class Closing:
    """Mixin: ``with obj:`` returns ``obj`` and calls its idempotent :meth:`close` on exit."""

    def close(self) -> None:
        """Release the client's socket (each subclass defines it)."""
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
