"""Who may talk to the panel: its own page, never another web page.

A page the producer opens in the same browser (any site, or a local file) can
point a ``WebSocket``, a ``fetch`` or an ``<audio>`` element at
``127.0.0.1:8765``; the browser sends the request, and without a check the
panel would answer it: the live matches (names of library files) over
``/ws``, the library's audio over ``/audio/<id>``. Browsers tell us where a
request comes from, so the panel refuses it unless it comes from its own page:

* ``Host`` must name this machine when the panel listens on loopback (a page
  that rebinds its own DNS name to 127.0.0.1 sends its name here);
* ``Origin``, when present (browsers always send it on a WebSocket handshake
  and on cross-origin fetches), must be exactly ``http://<Host>``: the page
  the panel served itself. ``null`` (sandboxed frames, ``file://`` pages) and
  any other port or scheme are foreign. A request without ``Origin`` comes from
  a program, not a page: a local program can read the same stream from
  ZeroMQ anyway.
* ``Sec-Fetch-Site`` (sent by Chromium, Firefox and Safari) must be
  ``same-origin`` or ``none`` (typed address, bookmark), except for a top-level
  navigation to the page itself (a link to the panel is fine; framing it is not).

Responses also carry ``Cross-Origin-Resource-Policy: same-origin`` (the browser
itself withholds a no-cors load of ``/audio`` or ``/map.json`` from another
origin) and ``frame-ancestors 'none'`` (no clickjacking by framing the panel).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Mapping

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
PAGE_PATHS = frozenset({"/", "/index.html"})  # reachable by a link from another site
SAME_SITE_VALUES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values we serve

#: Headers on every panel response (defence in depth behind :func:`refusal`).
SECURITY_HEADERS = (
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def own_origin(host_header: str) -> str:
    """The origin of a page this panel served to a browser that sent ``Host: host_header``."""
    return f"http://{host_header.strip().lower()}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def host_allowed(host: str, bound_host: str) -> bool:
    """Whether a ``Host`` name (without port) may reach a panel listening on ``bound_host``.

    On loopback only loopback names. Listening on the network (``--listen-any``) also
    allows IP literals and this machine's own names: a page that rebinds a name it owns
    to this machine's address still sends that name, and it is refused.
    """
    if host in LOCAL_HOSTS:
        return True
    bound = _ip(bound_host)
    if bound is None or bound.is_loopback:
        return False  # listening on loopback (or on a name): loopback names only
    if _ip(host) is not None:
        return True
    return host in _own_names()


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    """This machine's names (looked up once: getfqdn may ask DNS)."""
    name = socket.gethostname().lower()
    return frozenset({name, socket.getfqdn().lower(), f"{name}.local"})


def refusal(headers: Mapping[str, str], path: str, bound_host: str) -> str | None:
    """Why a request must be refused (``None``: serve it).

    Parameters
    ----------
    headers : mapping
        The request headers (case-insensitive lookup, as websockets' ``Headers``).
    path : str
        The request path without its query string.
    bound_host : str
        The address the panel listens on.
    """
    try:
        return _refusal(headers, path, bound_host)
    except LookupError:  # websockets' MultipleValuesError: a header sent twice
        return "repeated header"


def _refusal(headers: Mapping[str, str], path: str, bound_host: str) -> str | None:
    host_header = headers.get("Host", "") or ""
    if not host_allowed(host_header.rsplit(":", 1)[0].lower(), bound_host):
        return "forbidden host"  # DNS rebinding: a foreign name resolved to this machine
    origin = headers.get("Origin")
    if origin is not None and origin.strip().lower() != own_origin(host_header):
        return "foreign origin"
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in SAME_SITE_VALUES:
        top_level = (headers.get("Sec-Fetch-Mode") == "navigate"
                     and headers.get("Sec-Fetch-Dest") == "document")
        if not (top_level and path in PAGE_PATHS):
            return "cross-site request"
    return None
