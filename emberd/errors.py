"""The one exception type that reaches users.

Anything raised as :class:`EmberdError` is printed by the CLI as a single line
(``emberd: error: ...``) with exit code 2, never as a traceback.  Raise it for
bad input and bad environment; let real bugs surface as ordinary exceptions.
"""

from __future__ import annotations


class EmberdError(Exception):
    """A problem the user can fix: bad input, missing file, wrong setting."""


class ComponentMissing(EmberdError):
    """An optional system component (PortAudio, a model, a sound server) is absent."""
