"""Control: the same commands over ZeroMQ REP and over OSC, never fatal to the daemon.

:class:`Controller` validates a request dict and runs it: ``status`` directly;
``lost`` (a subscriber's running count of messages it missed) into the stats;
``pause``, ``resume``, ``set_k`` and ``reload`` through the worker's command queue
(applied between hops); ``capture`` has the worker record the next N seconds of the
chosen channels, then searches the library with the recording here (identify + similar,
as ``emberd query``), so the hops keep coming; ``set_model`` builds the new engine
here, on the control thread (loading a model takes a while and must not stall the
worker), and hands it to the worker. Every invalid or failed request gets
``{"ok": false, "error": ...}`` and is counted by the server that received it.

Threads. :class:`ZmqControlServer` owns a REP socket; :class:`OscControlServer` owns a
UDP socket and replies to each datagram's sender (``/emberd/reply cmd ok detail``). Each
server is the only writer of its rejected counter (``stats.rejected_control`` /
``stats.rejected_osc``, and of its ``rate_limited_*`` counter). Both refuse a source over
its budget before parsing anything (:mod:`emberd.daemon.ratelimit`), so a flood of control
messages costs the worker little GIL time.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from emberd.clients import osc_format as fmt
from emberd.clients.wire import CONTROL_COMMANDS
from emberd.cliopts import MAX_K
from emberd.daemon.analysis import vote_tags
from emberd.daemon.ratelimit import (
    OSC_BURST,
    OSC_RATE_PER_S,
    OSC_TOTAL_PER_S,
    ZMQ_BURST,
    ZMQ_RATE_PER_S,
    RateLimiter,
)
from emberd.daemon.status import DaemonStats, swallowed
from emberd.daemon.worker import MAX_CAPTURE_S, Worker
from emberd.daemon.zmqbind import bind_socket
from emberd.errors import EmberdError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 15.0  # longest wait for the worker (reload, set_model) before giving up
POLL_TIMEOUT_S = 0.2  # control threads wake this often to notice a stop request
MAX_REQUEST_BYTES = 4096  # larger control requests are refused unparsed (bounded parsing)
MAX_OSC_CONTROL_BYTES = 4096  # larger control datagrams likewise
MAX_TARPIT_S = 0.05  # longest a rate-limited ZeroMQ request waits for its refusal
MAX_OSC_DATAGRAM_BYTES = 65536  # UDP receive buffer (largest IPv4 payload fits)
MAX_MODEL_NAME_CHARS = 200
MODEL_NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{MAX_MODEL_NAME_CHARS - 1}}}")
CAPTURE_QUEUE = 4  # OSC capture requests waiting for the capture helper; more are refused

#: Keys each command accepts besides ``cmd``.
ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "status": frozenset(),
    "reload": frozenset(),
    "set_k": frozenset({"k"}),
    "set_model": frozenset({"model"}),
    "pause": frozenset(),
    "resume": frozenset(),
    "capture": frozenset({"seconds", "channel"}),
    "lost": frozenset({"subscriber", "messages"}),
}
SUBSCRIBER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
MAX_LOST_MESSAGES = 2**53  # a JSON number every client can hold exactly


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


class Controller:
    """Validates and runs control requests (thread-safe; called by both servers).

    Parameters
    ----------
    worker : Worker
    stats : DaemonStats
    build_engine : callable
        ``build_engine(model_name) -> Engine`` for ``set_model``.
    open_library : callable
        ``open_library() -> Library`` for ``capture`` (a connection of its own).
    """

    def __init__(
        self,
        worker: Worker,
        stats: DaemonStats,
        build_engine: Callable[[str], Any],
        open_library: Callable[[], Any],
    ) -> None:
        self.worker = worker
        self.stats = stats
        self.build_engine = build_engine
        self.open_library = open_library
        self._model_lock = threading.Lock()  # one set_model at a time

    def status(self) -> dict[str, Any]:
        """The current status object."""
        self.stats.info.update(self.worker.describe())
        return self.stats.snapshot()

    def handle(self, request: Any) -> dict[str, Any]:
        """Run one request; always returns a reply dict with a boolean ``ok``."""
        if not isinstance(request, dict):
            return _error("request must be a JSON object")
        cmd = request.get("cmd")
        if not isinstance(cmd, str) or cmd not in CONTROL_COMMANDS:
            shown = cmd[:40] if isinstance(cmd, str) else type(cmd).__name__
            return _error(f"unknown cmd {shown!r}; known: {', '.join(CONTROL_COMMANDS)}")
        extra = set(request) - {"cmd"} - ALLOWED_KEYS[cmd]
        if extra:
            return _error(f"{cmd}: unexpected field(s) {', '.join(sorted(map(str, extra)))[:80]}")
        try:
            return self._dispatch(cmd, request)
        except EmberdError as exc:
            return _error(str(exc))

    def _dispatch(self, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd in ("pause", "resume"):  # via the worker: no hop is half-done on reply
            return self._ask(cmd, {})
        if cmd == "set_k":
            k = req.get("k")
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
                return _error(f"set_k: k must be an integer in 1..{MAX_K}")
            return self._ask("set_k", {"k": k})
        if cmd == "reload":
            return self._ask("reload", {})
        if cmd == "set_model":
            return self._set_model(req.get("model"))
        if cmd == "lost":
            return self._lost(req)
        return self._capture(req)

    def _lost(self, req: dict[str, Any]) -> dict[str, Any]:
        """A subscriber's own count of messages it never got (ZeroMQ drops them silently
        at its high-water mark: only the reader sees the gaps in ``seq``)."""
        name, messages = req.get("subscriber"), req.get("messages")
        if not isinstance(name, str) or not SUBSCRIBER_NAME_RE.fullmatch(name):
            return _error("lost: subscriber must be a name of 1-64 letters, digits, . _ : + -")
        if (isinstance(messages, bool) or not isinstance(messages, int)
                or not 0 <= messages <= MAX_LOST_MESSAGES):  # fmt: skip
            return _error("lost: messages must be a whole number >= 0")
        self.stats.report_lost(name, messages)
        return {"ok": True}

    def _set_model(self, model: Any) -> dict[str, Any]:
        if not isinstance(model, str) or not MODEL_NAME_RE.fullmatch(model):
            # A name, never a path: the registry joins it onto the models folder, and an
            # absolute path or ../ would load any model file a local user left anywhere.
            return _error("set_model: model must be a model name (letters, digits, . _ + -)")
        if not self._model_lock.acquire(blocking=False):
            return _error("set_model: another model change is in progress")
        try:
            engine = self.build_engine(model)  # EmberdError for unknown / unfetched models
            return self._ask("set_model", {"engine": engine})
        finally:
            self._model_lock.release()

    def _capture(self, req: dict[str, Any]) -> dict[str, Any]:
        seconds = req.get("seconds", 2.0)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or not 0 < seconds <= MAX_CAPTURE_S
        ):
            return _error(f"capture: seconds must be a number in (0, {MAX_CAPTURE_S:g}]")
        channels = self.worker.channels
        channel = req.get("channel")
        if channel is None:
            index = list(range(len(channels)))
        elif isinstance(channel, bool) or not isinstance(channel, int) or channel not in channels:
            return _error(f"capture: channel must be one of {channels}")
        else:
            index = [channels.index(channel)]
        rec = self._ask(
            "capture",
            {"seconds": float(seconds), "channels": index},
            timeout=COMMAND_TIMEOUT_S + float(seconds),
        )
        if not rec.get("ok"):
            return rec
        return self._search_recording(rec)

    def _search_recording(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Query the library with each captured channel (identify + similar), on this thread.

        This thread opens its own library connection (SQLite connections stay in their
        thread) and leaves the worker's alone, so the hops keep coming meanwhile.
        """
        audio, sr, model, k = rec["audio"], rec["sr"], rec["model"], rec["k"]
        library = self.open_library()
        try:
            results = []
            for i, channel in enumerate(rec["channels"]):
                matches = library.query_audio(audio[:, i], sr, k, model=model)
                results.append({"channel": channel, "matches": matches,
                                "tags": vote_tags(matches)})  # fmt: skip
        finally:
            library.close()
        return {"ok": True, "seconds": round(audio.shape[0] / sr, 3), "model": model,
                "results": results}  # fmt: skip

    def _ask(
        self, cmd: str, args: dict[str, Any], timeout: float = COMMAND_TIMEOUT_S
    ) -> dict[str, Any]:
        if self.worker.done.is_set():
            return _error(f"{cmd}: the daemon is stopping")
        command = self.worker.submit(cmd, args)
        if not command.done.wait(timeout) or command.reply is None:
            return _error(f"{cmd}: no answer from the worker within {timeout:g} s")
        return command.reply


def decode_request(frames: list[bytes]) -> Any:
    """Parse a ZeroMQ control request; raises ValueError with a short reason."""
    if len(frames) != 1:
        raise ValueError(f"request must be one frame, got {len(frames)}")
    data = frames[0]
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("request is not UTF-8") from exc
    except RecursionError as exc:
        raise ValueError("request JSON is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and ints too long to convert
        raise ValueError(f"request is not JSON: {str(exc)[:80]}") from exc


def encode_reply(reply: dict[str, Any]) -> bytes:
    """JSON-encode a reply (non-finite floats become null: strict JSON for every client)."""
    return json.dumps(_finite(reply), default=str, allow_nan=False).encode("utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class ZmqControlServer(threading.Thread):
    """REP socket answering JSON control requests (owns its socket)."""

    def __init__(self, endpoint: str, controller: Controller, stats: DaemonStats, *,
                 context: Any) -> None:  # fmt: skip
        super().__init__(name="emberd-control", daemon=True)
        self.endpoint = endpoint
        self.controller = controller
        self.stats = stats
        self.context = context
        self.bound = threading.Event()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self.limiter = RateLimiter(ZMQ_RATE_PER_S, ZMQ_BURST)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        import zmq

        limited_reply = encode_reply(_error(self.limiter.error()))

        sock = bind_socket(self, zmq.REP)
        if sock is None:
            return
        try:
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            while not self._stop_event.is_set():
                if not poller.poll(int(POLL_TIMEOUT_S * 1000)):
                    continue
                # copy=False: an oversized request is refused by its length without a
                # second (Python-side) copy of up to megabytes.
                parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                if not self.limiter.allow("zmq"):
                    # Refused unparsed; the refusal waits (GIL released) for the bucket, so
                    # a client sending as fast as it is answered is paced to the rate.
                    time.sleep(min(self.limiter.wait_s("zmq"), MAX_TARPIT_S))
                    self.stats.rate_limited_control += 1
                    self.stats.rejected_control += 1
                    sock.send(limited_reply)
                    continue
                size = max((len(p) for p in parts), default=0)
                if size > MAX_REQUEST_BYTES:
                    reply = _error(f"request of {size} bytes exceeds {MAX_REQUEST_BYTES}")
                else:
                    reply = self._answer([p.bytes for p in parts])
                if not reply.get("ok"):
                    self.stats.rejected_control += 1
                sock.send(encode_reply(reply))
        finally:
            sock.close(linger=0)

    def _answer(self, frames: list[bytes]) -> dict[str, Any]:
        try:
            request = decode_request(frames)
        except ValueError as exc:
            return _error(str(exc))
        try:
            return self.controller.handle(request)
        except Exception as exc:  # a bug must not kill the control channel
            swallowed("control request")
            return _error(f"internal error: {type(exc).__name__}")


class OscControlServer(threading.Thread):
    """UDP socket answering ``/emberd/ctl/<cmd>`` datagrams; replies go to the sender."""

    def __init__(self, host: str, port: int, controller: Controller, stats: DaemonStats, *,
                 max_bytes: int = fmt.DEFAULT_MAX_DATAGRAM_BYTES) -> None:  # fmt: skip
        super().__init__(name="emberd-osc-in", daemon=True)
        self.controller = controller
        self.stats = stats
        self.max_bytes = max_bytes
        self._stop_event = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise EmberdError(f"--osc-in {host}:{port}: cannot listen ({exc.strerror})") from exc
        self.sock.settimeout(POLL_TIMEOUT_S)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._reply_lock = threading.Lock()  # capture helpers reply from their own thread
        self._captures: queue.Queue[tuple[dict[str, Any], tuple[str, int]]] = queue.Queue(
            maxsize=CAPTURE_QUEUE)
        self._capture_thread: threading.Thread | None = None
        self.limiter = RateLimiter(OSC_RATE_PER_S, OSC_BURST, OSC_TOTAL_PER_S)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        # One preallocated buffer: recvfrom(65536) allocated 64 KiB per datagram and shrank
        # it, fragmenting the heap (RSS grew ~6 MiB under a flood of small datagrams).
        buf = bytearray(MAX_OSC_DATAGRAM_BYTES)
        view = memoryview(buf)
        try:
            while not self._stop_event.is_set():
                try:
                    n, sender = self.sock.recvfrom_into(buf)
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop_event.is_set():
                        return
                    continue
                now = time.monotonic()
                pause = self.limiter.pause_s(now)
                if not self.limiter.allow(sender, now):
                    self._refuse_limited(sender, now)  # unparsed
                elif n > MAX_OSC_CONTROL_BYTES:
                    with self._reply_lock:
                        self.stats.rejected_osc += 1
                    self._reply(sender, "?", _error(
                        f"datagram of {n} bytes exceeds {MAX_OSC_CONTROL_BYTES}"))
                else:
                    self._serve(bytes(view[:n]), sender)
                if pause > 0:  # over the thread's overall budget: let the worker have the GIL
                    time.sleep(pause)
        finally:
            self.sock.close()

    def _refuse_limited(self, sender: tuple[str, int], now: float) -> None:
        with self._reply_lock:
            self.stats.rate_limited_osc += 1
            self.stats.rejected_osc += 1
        if self.limiter.notice_due(sender, now):  # told once a second, not once a datagram
            self._reply(sender, "?", _error(self.limiter.error()))

    def _serve(self, dgram: bytes, sender: tuple[str, int]) -> None:
        try:
            request = fmt.parse_control(dgram)
        except fmt.OscFormatError as exc:
            with self._reply_lock:
                self.stats.rejected_osc += 1
            self._reply(sender, "?", {"ok": False, "error": str(exc)[:200]})
            return
        if request["cmd"] == "capture":  # takes seconds: answer from the capture helper
            try:
                self._captures.put_nowait((request, sender))
            except queue.Full:  # a flood of captures: one thread and a short queue, no more
                with self._reply_lock:
                    self.stats.rejected_osc += 1
                self._reply(sender, "capture", {"ok": False, "error": "capture: busy"})
                return
            if self._capture_thread is None:
                self._capture_thread = threading.Thread(target=self._capture_loop,
                                                        name="emberd-osc-capture", daemon=True)
                self._capture_thread.start()
        else:
            self._run(request, sender)

    def _capture_loop(self) -> None:
        # One long-lived helper: a thread per request made a capture flood start
        # thousands of threads (and grew RSS through per-thread malloc arenas).
        while not self._stop_event.is_set():
            try:
                request, sender = self._captures.get(timeout=POLL_TIMEOUT_S)
            except queue.Empty:
                continue
            self._run(request, sender)

    def _run(self, request: dict[str, Any], sender: tuple[str, int]) -> None:
        try:
            reply = self.controller.handle(request)
        except Exception as exc:  # a bug must not kill the OSC input
            swallowed("OSC control request")
            reply = _error(f"internal error: {type(exc).__name__}")
        if not reply.get("ok"):
            with self._reply_lock:
                self.stats.rejected_osc += 1
        cmd = request["cmd"]
        detail: dict[str, Any]
        if cmd == "status" and reply.get("ok"):
            status = dict(reply["status"])
            start = self.stats.start_time
            status.update(start_s=int(start), start_ms=int((start - int(start)) * 1000))
            now = self.stats.ms_since_start(time.time())
            self._send(sender, fmt.encode_status((int(status.get("hops", 0)), now, now), status))
            detail = {"ok": True}
        elif cmd == "capture" and reply.get("ok"):
            for result in reply["results"]:
                for rank, m in enumerate(result["matches"]):
                    self._send(sender, fmt.encode_match(
                        (0, 0, 0), channel=int(result["channel"]), rank=rank,
                        score=float(m.get("score", 0.0)), name=str(m.get("name", "")),
                        path=str(m.get("path", "")), max_bytes=self.max_bytes,
                        address=fmt.ADDR_CAPTURE_MATCH))  # fmt: skip
            detail = {"ok": True, "seconds": reply.get("seconds")}
        else:
            detail = reply
        self._reply(sender, cmd, detail)

    def _reply(self, sender: tuple[str, int], cmd: str, detail: dict[str, Any]) -> None:
        ok = bool(detail.get("ok"))
        self._send(sender, fmt.encode_reply(cmd, ok, detail, max_bytes=self.max_bytes))

    def _send(self, sender: tuple[str, int], dgram: bytes) -> None:
        with self._reply_lock:
            try:
                self.sock.sendto(dgram, sender)
            except OSError:  # the sender went away: nothing to do
                pass
