"""``emberd demo``: the whole product on embedded defaults, no audio hardware needed.

1. Builds once (cached in ``data_dir()/demo``) a library of synthesised one-shots in
   named folders (``Kicks``, ``Snares``, ``Hats``, ``Claps``, ``Bass``, ``Pads``) and
   indexes it with ``emberd index``.
2. Runs the daemon in this process on a synthesised performance at real-time pace
   (``--input default`` or a device/file instead), publishing OSC/ZeroMQ on localhost.
3. Subscribes to its own ZeroMQ feed, like any client, and shows the live matches, tags,
   levels and latency in the terminal (rich) until ``--duration`` seconds have passed.

The encoder is aiSFX (Ma & Lerch, ISMIR 2022; MIT code, CC BY 4.0 model), fetched on the
first run (``pip download`` through the user's pip configuration: the only network use),
falling back loudly to the DSP baseline when it cannot be fetched.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from emberd.daemon import report, sounds
from emberd.errors import EmberdError

log = logging.getLogger(__name__)

DEMO_VERSION = 1  # bump when the demo sounds change: rebuilds cached libraries
INDEX_TIMEOUT_S = 900.0  # indexing the demo library on a slow machine
REFRESH_PER_S = 8  # terminal refreshes per second
POLL_MS = 50  # ZeroMQ poll period of the display loop
AISFX_CREDIT = (
    "aiSFX encoder: Ma & Lerch, 'Representation Learning for the Automatic Indexing of "
    "Sound Effects Libraries', ISMIR 2022 (MIT code, CC BY 4.0 model)"
)


def demo_dir() -> Path:
    """Where the demo library lives (inside the emberd data folder)."""
    from emberd.paths import data_dir

    path = data_dir() / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_demo_sounds(root: Path) -> list[Path]:
    """Write the demo one-shots as 16-bit WAVs (atomically) under ``root/<Folder>/``."""
    import io

    import soundfile as sf

    from emberd.atomic import atomic_write_bytes

    out = []
    for kind, folder in sounds.FOLDERS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for v in range(sounds.VARIANTS):
            buf = io.BytesIO()
            sf.write(buf, sounds.one_shot(kind, v), sounds.SR, format="WAV", subtype="PCM_16")
            path = root / folder / f"{kind} {v + 1}.wav"
            atomic_write_bytes(path, buf.getvalue())
            out.append(path)
    return out


def build_demo_library(model: str, *, rebuild: bool = False) -> Path:
    """Return the demo library indexed for ``model``, building it the first time."""
    from emberd.atomic import atomic_write_text

    root = demo_dir()
    stamp_path = root / "demo.json"
    library = root / "library"
    stamp: dict[str, Any] = {}
    if stamp_path.is_file() and not rebuild:
        try:
            stamp = json.loads(stamp_path.read_text())
        except (OSError, ValueError):
            stamp = {}
    if stamp.get("version") != DEMO_VERSION:
        stamp = {"version": DEMO_VERSION, "models": []}
        write_demo_sounds(root / "sounds")
    if model in stamp["models"] and library.exists():
        return library
    print(f"emberd demo: indexing the demo library with {model} (once) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "emberd", "index", str(root / "sounds"),
           "--library", str(library), "--model", model]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INDEX_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EmberdError(f"demo library: indexing failed ({tail[0]})")
    stamp["models"] = sorted({*stamp["models"], model})
    atomic_write_text(stamp_path, json.dumps(stamp))
    return library


class _View:
    """Latest state per channel, fed from ZeroMQ messages, rendered with rich."""

    def __init__(self) -> None:
        self.matches: dict[int, list[dict[str, Any]]] = {}
        self.tags: dict[int, list[dict[str, Any]]] = {}
        self.levels: dict[int, dict[str, Any]] = {}
        self.onsets: dict[int, int] = {}
        self.status: dict[str, Any] = {}
        self.messages = 0
        self.latency_ms: list[float] = []

    def feed(self, frames: list[bytes]) -> None:
        from emberd.clients import wire

        try:
            msg = wire.decode(frames)
        except wire.WireError:
            return
        self.messages += 1
        h, ch = msg.header, msg.channel if msg.channel is not None else 0
        if msg.kind == wire.KIND_MATCH:
            self.matches[ch] = h.get("matches", [])
            self.latency_ms.append((time.time() - msg.capture_time) * 1000.0)
            del self.latency_ms[:-200]
        elif msg.kind == wire.KIND_TAG:
            self.tags[ch] = h.get("tags", [])
        elif msg.kind == wire.KIND_LEVEL:
            self.levels[ch] = h
            if h.get("onset"):
                self.onsets[ch] = self.onsets.get(ch, 0) + 1
        elif msg.kind == wire.KIND_STATUS:
            self.status = h.get("status", {})

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        st = self.status
        head = Table.grid(padding=(0, 2))
        lat = np.percentile(self.latency_ms, [50, 99]) if self.latency_ms else (0.0, 0.0)
        head.add_row(
            f"[b]model[/b] {st.get('model', '?')} ({st.get('provider', '?')})",
            f"[b]hop[/b] {st.get('hop_ms', 0):.1f} ms",
            f"[b]latency[/b] p50 {lat[0]:.1f} / p99 {lat[1]:.1f} ms",
            # p99: the streaming encoder computes on one hop in eight, so p50 is ~0
            f"[b]inference p99[/b] {st.get('inference_p99_ms', 0):.1f} ms",
        )
        head.add_row(
            f"[b]hops[/b] {st.get('hops', 0)}",
            f"[b]overflows[/b] {st.get('overflows', 0)}",
            f"[b]dropped[/b] {st.get('dropped_hops', 0)}",
            f"[b]jitter p99[/b] {st.get('callback_jitter_ms', 0):.2f} ms",
        )
        table = Table(expand=True)
        for col in ("ch", "level", "best matches (score)", "tags"):
            table.add_column(col)
        for ch in sorted(self.matches):
            lv = self.levels.get(ch, {})
            rms = float(lv.get("rms_db", -120.0))
            bar = "#" * max(0, int((rms + 60) / 3))
            onset = " [b red]ONSET[/b red]" if lv.get("onset") else ""
            best = "\n".join(f"{m.get('name', '?')} ({m.get('score', 0):.3f})"
                             for m in self.matches[ch][:3])  # fmt: skip
            tags = "  ".join(f"{t['tag']} {t['confidence']:.0%}" for t in self.tags.get(ch, [])[:4])
            table.add_row(str(ch), f"{rms:6.1f} dB {bar}{onset}", best, tags)
        return Group(head, table)

    def line(self) -> str:
        """One plain-text line (when stdout is not a terminal)."""
        best = self.matches.get(0, [{}])[0] if self.matches.get(0) else {}
        tags = ",".join(t["tag"] for t in self.tags.get(0, [])[:2])
        return (f"hops {self.status.get('hops', 0)} best {best.get('name', '-')} "
                f"({best.get('score', 0):.3f}) tags {tags or '-'}")  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo (see module docstring); returns the exit code."""
    import zmq
    from rich.console import Console
    from rich.live import Live

    from emberd.daemon.app import Daemon
    from emberd.daemon.cli import config_from_args
    from emberd.models.precision import model_for
    from emberd.models.registry import resolve_default

    # aiSFX (fetched if needed) or a loud fallback; --precision picks its variant.
    manifest = resolve_default(model_for(args.model, args.precision))
    library = build_demo_library(manifest.name, rebuild=args.rebuild)
    is_synth = args.input == "synth"
    config = config_from_args(args, library=library, model=manifest.name, loop=is_synth,
                              pace="realtime")  # fmt: skip
    daemon = Daemon(config)
    try:
        daemon.start()
    except EmberdError as exc:
        if "cannot bind" not in str(exc):
            raise
        # Another daemon holds the default ports: run the demo on free ones.
        print(f"emberd demo: {exc}; using free ports instead", file=sys.stderr)
        config.zmq_pub, config.control = "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"
        daemon = Daemon(config).start()
    console = Console(stderr=False)
    view = _View()
    ctx: Any = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(daemon.pub_endpoint)
    # The header goes to stderr like `run`'s start block; print() never wraps mid-phrase
    # (rich wraps at 80 columns when stdout is not a terminal).
    print(report.start_block(daemon, command="demo"), file=sys.stderr, flush=True)
    if manifest.name == "aisfx":
        print(AISFX_CREDIT, file=sys.stderr, flush=True)
    end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    live = Live(view.render(), console=console, refresh_per_second=REFRESH_PER_S)
    try:
        if console.is_terminal:  # a live table; otherwise (a pipe, CI) one line a second
            live.start()
        last_line = 0.0
        shown = 0  # plain lines printed (not a terminal) or live-table refreshes
        assert daemon.worker is not None
        while time.monotonic() < end and not daemon.worker.done.is_set():
            if sub.poll(POLL_MS):
                while True:
                    try:
                        view.feed(sub.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            if console.is_terminal:
                live.update(view.render())
            elif time.monotonic() - last_line >= 1.0:
                last_line = time.monotonic()
                print(view.line(), flush=True)
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        if live.is_started:
            live.stop()
        sub.close(0)
        ctx.term()
        status = daemon.stats.snapshot() if daemon.stats else {}
        daemon.close()
    what = (f"{shown} status lines shown" if not console.is_terminal
            else "shown as a live table")  # fmt: skip
    print(report.summary(status, command="demo",
                         extra=f"{view.messages} ZeroMQ messages received, {what}"),
          file=sys.stderr, flush=True)  # fmt: skip
    return 0
