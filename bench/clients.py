"""Client library benchmark: what the typed layer costs on top of the transport.

* ZeroMQ: a PUB -> :class:`~emberd.clients.subscriber.Subscriber` stream of
  ``match`` messages (k = 5, as the daemon sends), messages/s, against the anchor
  of the same frames read with a bare SUB socket + ``json.loads`` in this process.
* OSC: :class:`~emberd.clients.osc_client.OscDecoder` (decode + regroup a hop's
  five ``/emberd/match`` datagrams) against python-osc's bare ``OscMessage``
  parse of the same datagrams.
* Panel map: projecting one live embedding (aiSFX-sized, 512-d) with
  :meth:`LibraryMap.project`, against a bare numpy matmul of the same size.

Ratios (typed / anchor throughput) are the figures to compare across machines.
Usage: ``python bench/clients.py [--n N]``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np
import zmq
from pythonosc.osc_message import OscMessage

from emberd.clients import osc_format as fmt
from emberd.clients import wire
from emberd.clients.messages import MatchMessage
from emberd.clients.osc_client import OscDecoder
from emberd.clients.panel.libmap import fit_map
from emberd.clients.subscriber import Subscriber

K_MATCHES = 5  # the daemon's default k
EMB_DIM = 512  # aiSFX embedding size


def _matches() -> list[dict[str, object]]:
    return [{"path": f"/home/me/Samples/Kicks/kick_{i:03d}.wav", "name": f"kick_{i:03d}.wav",
             "score": 0.9 - i / 50, "distance": 0.1 + i / 50, "segment_start_s": 0.0,
             "tags": ["Kicks"], "kind": "similar"} for i in range(K_MATCHES)]


def _publish(n: int) -> tuple[Any, str, threading.Thread]:
    ctx: Any = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)  # the bench must not drop
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    matches = _matches()

    def run() -> None:
        assert pub.poll(10_000), "no subscriber"
        pub.recv()
        for seq in range(n):
            pub.send_multipart(wire.encode("match", seq=seq, capture_time=time.time(),
                                           model="dsp-baseline", channel=0, matches=matches))

    return pub, f"tcp://127.0.0.1:{port}", threading.Thread(target=run, daemon=True)


def zmq_typed(n: int) -> float:
    pub, endpoint, thread = _publish(n)
    with Subscriber(endpoint, ["match"]) as sub:
        sub._sock.setsockopt(zmq.RCVHWM, 0)
        thread.start()
        got = 0
        t0 = None
        while got < n:
            item = sub.recv(timeout_s=10.0)
            assert item is not None, "stream stalled"
            if isinstance(item, MatchMessage):
                t0 = t0 or time.perf_counter()
                got += 1
        dt = time.perf_counter() - (t0 or 0.0)
    thread.join()
    pub.close(0)
    return (n - 1) / dt


def zmq_anchor(n: int) -> float:
    pub, endpoint, thread = _publish(n)
    sub: Any = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"match")
    sub.connect(endpoint)
    thread.start()
    frames = sub.recv_multipart()
    json.loads(frames[1])
    t0 = time.perf_counter()
    for _ in range(n - 1):
        frames = sub.recv_multipart()
        json.loads(frames[1])
    dt = time.perf_counter() - t0
    thread.join()
    sub.close(0)
    pub.close(0)
    return (n - 1) / dt


def osc_rates(n: int) -> tuple[float, float]:
    hops = [[fmt.encode_match((seq, seq * 23, seq * 23 + 20), channel=0, rank=r, score=0.9,
                              name=f"kick_{r:03d}.wav", path=f"/home/me/Samples/Kicks/k{r}.wav")
             for r in range(K_MATCHES)] for seq in range(n)]
    dec = OscDecoder()
    t0 = time.perf_counter()
    for hop in hops:
        for d in hop:
            dec.feed(d, now=0.0)
    typed = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for hop in hops:
        for d in hop:
            OscMessage(d).params  # noqa: B018 - the parse is the work
    anchor = n / (time.perf_counter() - t0)
    return typed, anchor


def project_rates(n: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    lib = rng.normal(size=(500, EMB_DIM)).astype(np.float32)
    m = fit_map("bench", np.arange(500), lib, ["x"] * 500, [[]] * 500, ["/x"] * 500)
    live = rng.normal(size=(n, EMB_DIM)).astype(np.float32)
    t0 = time.perf_counter()
    for v in live:
        m.project(v)
    typed = n / (time.perf_counter() - t0)
    axes = m.axes.astype(np.float64)
    t0 = time.perf_counter()
    for v in live:
        axes @ v
    anchor = n / (time.perf_counter() - t0)
    return typed, anchor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="messages per run")
    n = ap.parse_args().n
    typed, anchor = zmq_typed(n), zmq_anchor(n)
    print(f"zmq match k={K_MATCHES}: Subscriber {typed:,.0f} msg/s, bare SUB+json {anchor:,.0f} "
          f"msg/s, ratio {typed / anchor:.2f}")
    typed, anchor = osc_rates(n // 4)
    print(f"osc hop of {K_MATCHES} matches: OscDecoder {typed:,.0f} hops/s, bare python-osc "
          f"{anchor:,.0f} hops/s, ratio {typed / anchor:.2f}")
    typed, anchor = project_rates(n)
    print(f"map projection {EMB_DIM}-d: {typed:,.0f}/s, bare matmul {anchor:,.0f}/s, "
          f"ratio {typed / anchor:.2f}")


if __name__ == "__main__":
    main()
