"""ZeroMQ control client with the "lazy pirate" retry pattern.

A REQ socket that missed its reply is stuck (it may not send again), so after a
timeout the client closes it, opens a fresh one and resends -- a daemon that is
restarting, or not up yet, costs a retry instead of a hung client.
"""

from __future__ import annotations

from typing import Any

import zmq

from emberd.clients import wire
from emberd.clients.closing import Closing
from emberd.errors import EmberdError

DEFAULT_TIMEOUT_S = 2.0  # per attempt
DEFAULT_RETRIES = 3  # attempts before giving up


class ControlClient(Closing):
    """Send control commands to the daemon and return its replies as dicts.

    Parameters
    ----------
    endpoint : str
        The daemon's control endpoint, e.g. ``tcp://127.0.0.1:5557``.
    timeout : float
        Seconds to wait for each reply.
    retries : int
        Attempts (each on a new socket) before raising.

    Examples
    --------
    >>> with ControlClient("tcp://127.0.0.1:5557") as ctl:  # doctest: +SKIP
    ...     ctl.status()["status"]["latency_ms"]
    """

    def __init__(
        self,
        endpoint: str = wire.DEFAULT_CONTROL_ENDPOINT,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        retries: int = DEFAULT_RETRIES,
        context: zmq.Context | None = None,
    ) -> None:
        if timeout <= 0 or retries < 1:
            raise EmberdError(f"control client: need timeout > 0 and retries >= 1, "
                              f"got {timeout}, {retries}")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.retries = int(retries)
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        #: attempts that timed out over this client's life (for tests and diagnostics)
        self.timeouts = 0

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                sock.close(0)
                raise EmberdError(f"control {self.endpoint!r}: cannot connect: {exc}") from exc
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._drop_socket()

    def request(self, cmd: str, *, wait_s: float | None = None, **args: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **args}`` and return the reply dict.

        A reply with ``"ok": false`` is returned as is (the caller decides);
        no reply at all after every retry raises. ``wait_s`` overrides the
        per-attempt timeout (a ``capture`` answers only after recording).

        Raises
        ------
        EmberdError
            If the daemon did not answer after ``retries`` attempts, or
            answered with something that is not a control reply.
        """
        payload = wire.encode_request(cmd, **args)
        timeout = self.timeout if wait_s is None else float(wait_s)
        for _attempt in range(self.retries):
            sock = self._socket()
            sock.send(payload)
            if sock.poll(int(timeout * 1000), zmq.POLLIN):
                data = sock.recv()
                try:
                    return wire.decode_reply(data)
                except wire.WireError as exc:
                    self._drop_socket()
                    raise EmberdError(f"control {self.endpoint}: {exc}") from exc
            # Lazy pirate: this REQ socket is now stuck waiting; replace it.
            self.timeouts += 1
            self._drop_socket()
        raise EmberdError(
            f"control {self.endpoint}: no reply to {cmd!r} after {self.retries} tries "
            f"of {timeout:g} s (is `emberd run` running?)"
        )

    def call(self, cmd: str, *, wait_s: float | None = None, **args: Any) -> dict[str, Any]:
        """Like :meth:`request`, but raise :class:`EmberdError` on an ``ok: false`` reply."""
        reply = self.request(cmd, wait_s=wait_s, **args)
        if not reply["ok"]:
            raise EmberdError(f"control {cmd}: {reply.get('error', 'failed')}")
        return reply

    # Convenience wrappers for the documented commands.
    def lost(self, subscriber: str, messages: int) -> dict[str, Any]:
        """Report that ``subscriber`` has missed ``messages`` messages of this daemon so
        far (:class:`~emberd.clients.subscriber.Subscriber` does it for you)."""
        return self.call("lost", subscriber=subscriber, messages=messages)

    def status(self) -> dict[str, Any]:
        """The daemon's status reply."""
        return self.call("status")

    def reload(self) -> dict[str, Any]:
        """Reload the library."""
        return self.call("reload")

    def set_k(self, k: int) -> dict[str, Any]:
        """Change the number of matches per hop."""
        return self.call("set_k", k=int(k))

    def set_model(self, model: str) -> dict[str, Any]:
        """Switch encoder."""
        return self.call("set_model", model=model)

    def pause(self) -> dict[str, Any]:
        """Pause analysis."""
        return self.call("pause")

    def resume(self) -> dict[str, Any]:
        """Resume analysis."""
        return self.call("resume")

    def capture(self, seconds: float, channel: int | None = None) -> dict[str, Any]:
        """Record ``seconds`` of live input, search the library with it, return the reply.

        The reply's ``results`` holds one ``{"channel", "matches", "tags"}`` per channel.
        """
        args: dict[str, Any] = {"seconds": float(seconds)}
        if channel is not None:
            args["channel"] = int(channel)
        # The daemon answers after recording: wait for that on top of the usual timeout.
        return self.call("capture", wait_s=self.timeout + float(seconds), **args)
