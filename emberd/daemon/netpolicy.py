"""Bind-address policy: listeners stay on loopback unless the user says otherwise."""

from __future__ import annotations

import ipaddress
import socket

from emberd.errors import EmberdError

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
MAX_PORT = 65535  # largest TCP/UDP port number


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_host_port(text: str, what: str, *, allow_zero: bool = True) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); PORT 0 picks a free port (listeners only).

    Raises
    ------
    EmberdError
        If it is not ``HOST:PORT``, or the port is outside 0..65535 (1..65535 when
        ``allow_zero`` is False: a destination needs a real port).
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.strip().isdigit():
        raise EmberdError(f"{what} {text!r}: expected HOST:PORT (e.g. 127.0.0.1:9000)")
    lo = 0 if allow_zero else 1
    if not lo <= int(port) <= MAX_PORT:
        raise EmberdError(f"{what} {text!r}: port {int(port)} is out of range ({lo}..{MAX_PORT})")
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
    if not sep or not host or not (port == "*" or port.isdigit()):
        raise EmberdError(f"{what} {endpoint!r}: expected tcp://HOST:PORT")
    if port != "*" and int(port) > MAX_PORT:
        raise EmberdError(f"{what} {endpoint!r}: port {int(port)} is out of range (0..{MAX_PORT})")
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
