"""Bind-address policy: listeners stay on loopback unless the user says otherwise."""

from __future__ import annotations

import ipaddress
import socket

from emberd.errors import EmberdError

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); PORT 0 picks a free port.

    Raises
    ------
    EmberdError
        If it is not ``HOST:PORT`` with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise EmberdError(f"{what} {text!r}: expected HOST:PORT (e.g. 127.0.0.1:9000)")
    return host.strip("[]"), int(port)


def check_listen_host(host: str, what: str, *, listen_any: bool) -> None:
    """Refuse a non-loopback listen address unless ``listen_any``."""
    if not listen_any and not is_loopback(host):
        raise EmberdError(
            f"{what} {host!r}: not a loopback address; pass --listen-any to listen on the network"
        )


def check_zmq_endpoint(endpoint: str, what: str, *, listen_any: bool) -> str:
    """Validate a ZeroMQ bind endpoint (``tcp://HOST:PORT``, ``ipc://PATH``, ``inproc://NAME``).

    ``tcp://HOST:0`` is rewritten to ``tcp://HOST:*`` (ZeroMQ's "any free port").
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise EmberdError(f"{what} {endpoint!r}: expected tcp://HOST:PORT, ipc://PATH or inproc://")
    if scheme != "tcp":
        return endpoint  # local by construction
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
        raise EmberdError(f"{what} {endpoint!r}: expected tcp://HOST:PORT")
    check_listen_host("0.0.0.0" if host == "*" else host, what, listen_any=listen_any)
    return f"tcp://{host}:{'*' if port in ('0', '*') else port}"


def resolve_target(host: str, port: int, what: str) -> tuple[str, int]:
    """Resolve an OSC destination to an IPv4 address once, at start-up."""
    try:
        info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise EmberdError(f"{what} {host}:{port}: cannot resolve ({exc})") from exc
    addr = info[0][4]
    return str(addr[0]), int(addr[1])
