"""Plug-ins: encoders, sinks and analysers found through Python entry points.

Three entry-point groups (``importlib.metadata``, the standard mechanism) carry
every encoder, sink and analyser emberd runs, its own built-ins included (they
are declared in emberd's ``pyproject.toml`` like anybody else's):

* :data:`GROUP_SINKS` (``emberd.sinks``): ``factory(options: dict[str, str]) -> sink``;
  the sink has ``publish(topic, header, array)`` and ``close()``
  (see :mod:`emberd.daemon.sinks`).
* :data:`GROUP_ENCODERS` (``emberd.encoders``): ``factory(options) -> encoder`` with a
  ``manifest`` and ``embed(mel) -> [batch, dim]`` (see :mod:`emberd.models.plugin`).
* :data:`GROUP_ANALYZERS` (``emberd.analyzers``): ``factory(options) -> analyzer`` that adds
  fields to the published messages (see :mod:`emberd.daemon.analyzers`).

This module only finds and loads them; it imports nothing else of emberd, so every
layer may use it. The contracts are documented in ``docs/plugins.md``.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emberd.errors import EmberdError

log = logging.getLogger(__name__)

GROUP_SINKS = "emberd.sinks"
GROUP_ENCODERS = "emberd.encoders"
GROUP_ANALYZERS = "emberd.analyzers"
GROUPS = (GROUP_SINKS, GROUP_ENCODERS, GROUP_ANALYZERS)
BUILTIN_DIST = "emberd"


@dataclass(frozen=True)
class PluginInfo:
    """One installed entry point: where it comes from and what it names."""

    group: str
    name: str
    value: str  # "module:attr"
    dist: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.dist == BUILTIN_DIST

    @property
    def label(self) -> str:
        """``name (dist version)`` for messages that must name the package."""
        return f"{self.name} ({self.dist} {self.version})"


def discover(group: str) -> list[PluginInfo]:
    """Every entry point of ``group``, built-ins first, then by name.

    Two distributions declaring one name: the first found wins and the other is
    logged once (Python's own rule for entry points is "unspecified").
    """
    if group not in GROUPS:
        raise EmberdError(f"plug-in group {group!r}: choose from {', '.join(GROUPS)}")
    found: dict[str, PluginInfo] = {}
    for ep in md.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            group=group,
            name=ep.name,
            value=ep.value,
            dist=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
        if ep.name in found and found[ep.name].dist != info.dist:
            log.warning("%s %s: declared by %s and %s; using %s", group, ep.name,
                        found[ep.name].dist, info.dist, found[ep.name].dist)  # fmt: skip
            continue
        found.setdefault(ep.name, info)
    return sorted(found.values(), key=lambda i: (not i.builtin, i.name))


def find(group: str, name: str) -> PluginInfo | None:
    """The entry point ``name`` of ``group``, or None."""
    return next((p for p in discover(group) if p.name == name), None)


def load(info: PluginInfo) -> Callable[..., Any]:
    """Import the entry point's object (the factory).

    Raises
    ------
    EmberdError
        One line naming the plug-in and its package; never the import's traceback.
    """
    try:
        obj: Any = md.EntryPoint(info.name, info.value, info.group).load()
    except Exception as exc:  # any import-time failure of third-party code
        raise EmberdError(
            f"plug-in {info.group} {info.label}: cannot import {info.value} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not callable(obj):
        raise EmberdError(f"plug-in {info.group} {info.label}: {info.value} is not callable")
    return obj


def construct(info: PluginInfo, options: dict[str, str]) -> Any:
    """Load the factory and call it with ``options``; errors are one line naming the package."""
    factory = load(info)
    try:
        return factory(dict(options))
    except EmberdError as exc:
        raise EmberdError(f"plug-in {info.group} {info.label}: {exc}") from exc
    except Exception as exc:  # third-party constructor
        raise EmberdError(
            f"plug-in {info.group} {info.label}: cannot construct ({type(exc).__name__}: {exc})"
        ) from exc


def require(group: str, name: str) -> PluginInfo:
    """The entry point ``name`` of ``group``; EmberdError listing the known names if absent."""
    info = find(group, name)
    if info is None:
        known = ", ".join(p.name for p in discover(group)) or "none installed"
        hint = ""
        if group != GROUP_ENCODERS and not any(p.builtin for p in discover(group)):
            hint = "; emberd's own entry points are missing: reinstall it (pip install -e .)"
        raise EmberdError(f"{group} {name!r}: no such plug-in (known: {known}){hint}")
    return info


def parse_spec(spec: str, flag: str = "--sink") -> tuple[str, dict[str, str]]:
    """Parse ``NAME[:key=value[,key=value...]]`` (values may contain ``:``, not ``,``).

    Raises
    ------
    EmberdError
        Empty name, or an option without ``=``.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise EmberdError(f"{flag} {spec!r}: expected NAME[:key=value,...]")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise EmberdError(f"{flag} {spec!r}: option {part!r} is not key=value")
        options[key.strip()] = value.strip()
    return name, options


def status(info: PluginInfo) -> dict[str, Any]:
    """``emberd plugins`` row: the entry point and whether its object imports."""
    row: dict[str, Any] = {
        "group": info.group, "name": info.name, "dist": info.dist, "version": info.version,
        "value": info.value, "builtin": info.builtin,
    }  # fmt: skip
    try:
        load(info)
        row.update(loads=True, error=None)
    except EmberdError as exc:
        row.update(loads=False, error=str(exc))
    return row
