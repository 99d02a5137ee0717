"""``emberd panel``: the mix-down assistant web page and its ZeroMQ -> WebSocket bridge.

One port serves everything (websockets' ``process_request`` answers plain HTTP), to
the panel's own page only (:mod:`emberd.clients.panel.guard`: another web page gets 403):

* ``/``, ``/app.js``, ``/style.css`` -- the page, from the package (no CDN);
* ``/map.json`` -- the library map (points only, no paths);
* ``/audio/<id>`` -- a library file by its library id, decoded and re-encoded
  as 16-bit WAV so the browser can play any format the library holds; ids not
  in the library get 404, so no path from the browser ever reaches the disk;
* ``/similar/<id>`` -- the library sounds nearest to one (``[{"id", "name", "score"}]``);
* ``/ws`` -- a WebSocket of JSON messages (:func:`emberd.clients.messages.to_json`
  plus ``{"kind": "cursor", "channel", "x", "y"}`` for live embeddings).

A thread runs a :class:`~emberd.clients.subscriber.Subscriber` and hands each
message to the event loop. The loop keeps only the latest message per kind and
channel and broadcasts them 30 times a second: eight channels at a 23 ms hop
would otherwise mean ~1400 messages a second for every open page. New pages
first get the latest message of each kind and channel, marked ``"replay": true``, then
the current connection state: a page opened while the daemon is gone shows its last
data as stale (every data message carries ``received_at``, the server's Unix time, and
``hello`` the server's clock so the page can show each item's age), never as live.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import threading
import time
from http import HTTPStatus
from importlib import resources
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from emberd.clients.messages import ConnectionEvent, EmbMessage, Item, to_json
from emberd.clients.panel.guard import SECURITY_HEADERS, refusal
from emberd.clients.panel.libmap import LibraryMap
from emberd.errors import EmberdError

log = logging.getLogger(__name__)

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/mixdown.js": ("mixdown.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
AUDIO_MAX_S = 60.0  # longest audition served; one-shots and loops are far shorter
AUDIO_RE = re.compile(r"^/audio/(\d{1,12})$")
SIMILAR_RE = re.compile(r"^/similar/(\d{1,12})$")
POLL_S = 0.2  # subscriber thread wakes this often to notice shutdown
FLUSH_S = 1 / 30  # pages get at most 30 updates a second per kind and channel


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *SECURITY_HEADERS,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _text(status: HTTPStatus, text: str) -> Response:
    return _response(status, text.encode("utf-8"), "text/plain; charset=utf-8")


def audio_wav(path: str) -> bytes:
    """Decode ``path`` and return it as 16-bit PCM WAV bytes (first AUDIO_MAX_S seconds)."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as f:
            frames = min(f.frames, int(AUDIO_MAX_S * f.samplerate))
            data = f.read(frames, dtype="float32", always_2d=True)
            sr = f.samplerate
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise EmberdError(f"{path}: cannot read audio: {exc}") from exc
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class PanelServer:
    """The panel's HTTP + WebSocket server and its ZeroMQ bridge.

    Parameters
    ----------
    zmq_endpoint : str
        The daemon's PUB endpoint.
    library_map : LibraryMap, optional
        Map of the library; without it the page shows matches but no map or audio.
    host, port : str, int
        Where to listen (port 0 picks a free one; see :attr:`port` after start).
    control_endpoint : str, optional
        The daemon's control endpoint, asked for status when it (re)appears.
    """

    def __init__(
        self,
        zmq_endpoint: str,
        library_map: LibraryMap | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        control_endpoint: str | None = None,
        silence_s: float = 3.0,
    ) -> None:
        self.zmq_endpoint = zmq_endpoint
        self.map = library_map
        self.host = host
        self.port = port
        self.control_endpoint = control_endpoint
        self.silence_s = silence_s
        self.clients: set[ServerConnection] = set()
        self._latest: dict[tuple[str, int], str] = {}
        self._pending: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        self.bridged = 0  # messages handed to the browser side
        self.refused = 0  # requests refused by guard.refusal (event loop thread)
        self._ids_by_path = {p: i for i, p in library_map.paths.items()} if library_map else {}

    # -- HTTP ------------------------------------------------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer plain HTTP; return ``None`` to let ``/ws`` become a WebSocket."""
        path = request.path.split("?", 1)[0]
        why = refusal(request.headers, path, self.host)  # another web page: nothing
        if why is not None:
            self.refused += 1
            return _text(HTTPStatus.FORBIDDEN, f"{why}\n")
        if path == "/ws":
            return None
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            body = resources.files("emberd.clients.panel").joinpath("static", name).read_bytes()
            return _response(HTTPStatus.OK, body, ctype)
        if path == "/map.json":
            payload = self.map.public_json() if self.map else {"model": None, "points": []}
            return _response(HTTPStatus.OK, json.dumps(payload).encode(), "application/json")
        m = SIMILAR_RE.match(path)
        if m:
            found = self.map.similar(int(m.group(1))) if self.map else []
            return _response(HTTPStatus.OK, json.dumps(found).encode(), "application/json")
        m = AUDIO_RE.match(path)
        if m:
            file_path = self.map.paths.get(int(m.group(1))) if self.map else None
            if file_path is None:
                return _text(HTTPStatus.NOT_FOUND, "no such library id\n")
            try:
                return _response(HTTPStatus.OK, audio_wav(file_path), "audio/wav")
            except EmberdError as exc:
                return _text(HTTPStatus.NOT_FOUND, f"{exc}\n")
        return _text(HTTPStatus.NOT_FOUND, "not found\n")

    # -- WebSocket -------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        """One browser page: send the snapshot, then keep it in the broadcast set."""
        hello = {"kind": "hello", "zmq": self.zmq_endpoint,
                 "model": self.map.model if self.map else None, "server_time": time.time()}
        await ws.send(json.dumps(hello))
        latest = dict(self._latest)
        connection = latest.pop(("connection", -1), None)
        for payload in latest.values():  # the last data: shown as old until the daemon speaks
            await ws.send(json.dumps({**json.loads(payload), "replay": True}))
        if connection is not None:  # last: the page ends up with the true state
            await ws.send(connection)
        self.clients.add(ws)
        try:
            async for _ in ws:  # the page sends nothing we act on; wait for close
                pass
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(ws)

    def _publish(self, key: tuple[str, int], payload: str) -> None:
        self._latest[key] = payload
        self._pending[key] = payload  # a newer message of the same key replaces it

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            if self._pending:
                pending, self._pending = self._pending, {}
                for payload in pending.values():
                    broadcast(self.clients, payload)

    # -- ZeroMQ bridge (thread) -----------------------------------------------------
    def _convert(self, item: Item) -> tuple[tuple[str, int], dict[str, Any]] | None:
        converted = self._convert_item(item)
        if converted is not None:  # when the server heard it: the page shows data's age
            converted[1]["received_at" if not isinstance(item, ConnectionEvent) else "since"] = (
                round(time.time(), 3))
        return converted

    def _convert_item(self, item: Item) -> tuple[tuple[str, int], dict[str, Any]] | None:
        if isinstance(item, EmbMessage):
            if self.map is None:
                return None
            try:
                x, y = self.map.project(item.embedding)
            except EmberdError:
                return None  # live model differs from the map's model
            return ("cursor", item.channel), {"kind": "cursor", "channel": item.channel,
                                              "x": round(x, 5), "y": round(y, 5),
                                              "capture_time": item.capture_time}
        obj = to_json(item)
        if obj["kind"] == "match" and self.map is not None:
            # Give each match its library id so the page can audition it by id.
            for m in obj["matches"]:
                m["id"] = self._ids_by_path.get(m.pop("path", ""))
        elif obj["kind"] == "match":
            for m in obj["matches"]:
                m.pop("path", None)  # the page never needs file system paths
        return (obj["kind"], int(obj.get("channel", -1))), obj

    def _bridge(self) -> None:
        from emberd.clients.control_client import ControlClient
        from emberd.clients.subscriber import Subscriber

        topics = ["match", "tag", "level", "emb", "similarity", "status",
                  "class", "loudness", "masking"]  # fmt: skip
        with Subscriber(self.zmq_endpoint, topics, silence_s=self.silence_s,
                        report_to=self.control_endpoint, name=f"panel-{os.getpid()}") as sub:
            while not self._stop.is_set():
                item = sub.recv(timeout_s=POLL_S)
                if item is None:
                    continue
                converted = self._convert(item)
                if converted is not None and self._loop is not None:
                    key, obj = converted
                    self.bridged += 1
                    self._loop.call_soon_threadsafe(self._publish, key, json.dumps(obj))
                if isinstance(item, ConnectionEvent) and item.state in ("connected", "restarted") \
                        and self.control_endpoint:
                    try:
                        with ControlClient(self.control_endpoint, timeout=0.5, retries=1) as ctl:
                            reply = ctl.request("status")
                    except EmberdError:
                        continue
                    if isinstance(reply.get("status"), dict) and self._loop is not None:
                        obj = {"kind": "status", "status": reply["status"]}
                        self._loop.call_soon_threadsafe(self._publish, ("status", -1),
                                                        json.dumps(obj))

    # -- lifecycle -------------------------------------------------------------------
    async def serve(self, stop: asyncio.Future[None] | None = None) -> None:
        """Serve until ``stop`` resolves (or forever)."""
        self._loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self._bridge, name="emberd-panel-zmq", daemon=True)
        try:
            async with serve(self.handler, self.host, self.port,
                             process_request=self.process_request, max_size=2**16) as server:
                sockname = next(iter(server.sockets)).getsockname()
                self.port = int(sockname[1])
                thread.start()
                flusher = asyncio.create_task(self._flusher())
                self.started.set()
                try:
                    if stop is None:
                        await asyncio.Future()
                    else:
                        await stop
                finally:
                    flusher.cancel()
        except OSError as exc:
            raise EmberdError(f"panel: cannot listen on {self.host}:{self.port}: {exc}") from exc
        finally:
            self._stop.set()
            if thread.is_alive():
                thread.join(timeout=2.0)

    def url(self) -> str:
        """The page's address."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"


def run_panel(
    zmq_endpoint: str,
    library: str | None,
    *,
    port: int,
    host: str = "127.0.0.1",
    model: str | None = None,
    control_endpoint: str | None = None,
) -> int:
    """Blocking entry point of ``emberd panel``."""
    lib_map = None
    if library:
        from emberd.clients.panel.libmap import load_library_map

        lib_map, cached = load_library_map(library, model)
        print(f"emberd panel: library map of {len(lib_map.points)} files "
              f"({lib_map.model}, {'cached' if cached else 'computed'})")
    server = PanelServer(zmq_endpoint, lib_map, host=host, port=port,
                         control_endpoint=control_endpoint)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started.is_set() and not task.done():
            await asyncio.sleep(0.05)
        if server.started.is_set():
            print(f"emberd panel: open {server.url()}  (listening to {zmq_endpoint})", flush=True)
        await task

    asyncio.run(main())
    return 0
