"""Assemble and run the daemon: input, worker, publishers, control servers.

:class:`Daemon` checks the network settings first (cheap, one-line errors), then loads
the model, opens the input, starts the publishers (waiting until their sockets are
bound), the worker (waiting until the library is open), the control servers and finally
the input, so the first audio block already finds everything running. :meth:`Daemon.close`
stops them in the reverse order. See ``emberd/daemon/__init__.py`` for the thread map.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from emberd.clients import osc_format as fmt
from emberd.clients.wire import DEFAULT_CONTROL_ENDPOINT, DEFAULT_PUB_ENDPOINT
from emberd.cliopts import MAX_K, MAX_THREADS
from emberd.daemon import netpolicy
from emberd.daemon.control import Controller, OscControlServer, ZmqControlServer
from emberd.daemon.engine import Engine, build_engine
from emberd.daemon.feed import BLOCK_FRAMES, PACES, FeederInput, array_blocks
from emberd.daemon.mixdown import load_reference
from emberd.daemon.outputs import Outputs, start_sinks
from emberd.daemon.status import DaemonStats
from emberd.daemon.worker import Worker
from emberd.errors import EmberdError

log = logging.getLogger(__name__)

WEKINATOR_TARGET = ("127.0.0.1", 6448)  # Wekinator's default OSC input port
WEKINATOR_DIMS = 16  # inputs sent to Wekinator when --osc-proj is not given
GIL_SWITCH_INTERVAL_S = 0.001  # Python's default 5 ms delays the audio callback's GIL grab
BIND_TIMEOUT_S = 10.0  # wait for a publisher/control socket to bind
START_TIMEOUT_S = 120.0  # wait for the worker to open the library
JOIN_TIMEOUT_S = 5.0  # per thread at shutdown
MAX_CHANNELS = 64  # analysed channels (encoder batch; similarity matrix rows)
SYNTH_SECONDS = 30.0  # length of one pass of the synthetic input
NO_ENDPOINT = ("", "none", "off")  # --zmq none / --control none disable the socket


@dataclass
class DaemonConfig:
    """Everything ``emberd run`` takes (see ``emberd run --help``)."""

    library: Path
    input: str = "default"
    pace: str = "realtime"
    loop: bool = False
    channels: str = "mix"
    model: str | None = None
    device: str = "auto"  # ONNX Runtime execution provider (`--provider`), not an audio device
    encoder: str = "streaming"
    hop_ms: float | None = None
    k: int = 5
    osc: list[str] = field(default_factory=list)
    osc_in: str | None = None
    zmq_pub: str = DEFAULT_PUB_ENDPOINT
    control: str = DEFAULT_CONTROL_ENDPOINT
    wekinator: bool = False
    listen_any: bool = False
    max_datagram: int = fmt.DEFAULT_MAX_DATAGRAM_BYTES
    osc_proj: int = 0
    osc_embedding: bool = True
    osc_changes_only: bool = False
    threads: int = 2
    hits: bool = True  # the live hit ladder (emberd.daemon.hits)
    sinks: list[str] = field(default_factory=list)  # --sink NAME[:key=value,...]
    analyzers: list[str] = field(default_factory=list)  # --analyzer NAME (must load)
    midi: str | None = None  # --midi PORT
    midi_map: str | None = None
    midi_stage: str | None = None
    mix_reference: str | None = None  # --mix-reference pink | FILE (emberd.daemon.mixdown)
    capture_in: str = "thread"  # --capture-in: the device callback here, or "process" (a child)


def parse_channels(spec: str, available: int) -> list[int]:
    """Parse ``--channels``: ``mix`` (all channels averaged, published as 0), ``all``,
    or a list like ``0,2,4-7`` of 0-based input channels.

    Returns
    -------
    list of int
        Ring column per analysed channel; ``[-1]`` means the mix.
    """
    spec = spec.strip().lower()
    if spec == "mix":
        return [-1]
    if spec == "all":
        chans = list(range(available))
    else:
        chans = []
        for part in spec.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise EmberdError(f"--channels {spec!r}: expected mix, all or e.g. 0,2,4-7")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise EmberdError(f"--channels {spec!r}: range {lo}-{hi} runs backwards")
            chans.extend(range(lo, hi + 1))
        chans = list(dict.fromkeys(chans))
    bad = [c for c in chans if c >= available]
    if bad:
        raise EmberdError(
            f"--channels {spec!r}: input has {available} channel(s), no channel {bad[0]}"
        )
    if not 1 <= len(chans) <= MAX_CHANNELS:
        raise EmberdError(f"--channels {spec!r}: 1 to {MAX_CHANNELS} channels")
    return chans


def open_input(config: DaemonConfig, sr: int) -> Any:
    """Open ``--input``: ``synth``, an audio file, or a device (index, name or ``default``)."""
    if config.pace not in PACES:
        raise EmberdError(f"--pace {config.pace!r}: choose from {', '.join(PACES)}")
    spec = config.input
    if spec == "synth":
        from emberd.daemon.sounds import performance

        audio = performance(sr=sr, seconds=SYNTH_SECONDS)
        return FeederInput(array_blocks(audio), sr=sr, channels=1, pace=config.pace,
                           loop=config.loop, description="synth")  # fmt: skip
    path = Path(spec).expanduser()
    if path.exists() or any(sep in spec for sep in ("/", "\\")) or path.suffix:
        return _file_input(path, sr, config)
    if config.pace != "realtime" or config.loop:
        raise EmberdError("--pace fast and --loop apply to file input only")
    from emberd.daemon.device import DeviceInput
    from emberd.dsp.device import device_channels

    device: int | str | None = None if spec == "default" else int(spec) if spec.isdigit() else spec
    channels = device_channels(device, config.channels)
    return DeviceInput(device, sr=sr, channels=channels, block_size=BLOCK_FRAMES,
                       capture=config.capture_in)


def _file_input(path: Path, sr: int, config: DaemonConfig) -> FeederInput:
    """A feeder over a streaming :class:`~emberd.dsp.sources.FileSource` (resampled to ``sr``)."""
    from emberd.dsp.sources import FileSource

    first: list[Any] = [FileSource(path, sr=sr, block_size=BLOCK_FRAMES, pace="fast")]  # validates

    def blocks() -> Iterator[np.ndarray]:
        src = first.pop() if first else FileSource(path, sr=sr, block_size=BLOCK_FRAMES,
                                                   pace="fast")  # fmt: skip
        try:
            for block in src:
                yield block.data
        finally:
            src.close()

    return FeederInput(blocks, sr=sr, channels=first[0].channels, pace=config.pace,
                       loop=config.loop, description=str(path))  # fmt: skip


def _require_model(library_path: Path, model: str) -> None:
    """Refuse a library with no vectors for ``model`` (it could never match): names what it has."""
    from emberd.library import Library

    library = Library.open(library_path)
    try:
        library.require_model(model)
    finally:
        library.close()


class Daemon:
    """The running daemon (a context manager: ``with Daemon(cfg) as d: d.wait()``).

    Attributes (after :meth:`start`)
    ----------
    pub_endpoint, control_endpoint : str or None
        Bound ZeroMQ endpoints with their real ports.
    osc_in_address : (host, port) or None
    stats : DaemonStats
    worker : Worker
    """

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.pub_endpoint: str | None = None
        self.control_endpoint: str | None = None
        self.osc_in_address: tuple[str, int] | None = None
        self._threads: list[Any] = []
        self._outputs: Outputs | None = None
        self._context: Any = None
        self._input: Any = None
        self._input_started = False
        self._started = False
        self.worker: Worker | None = None
        self.stats: DaemonStats | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ start

    def _check_network(self) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
        cfg = self.config
        if not fmt.MIN_MAX_DATAGRAM_BYTES <= cfg.max_datagram <= 65507:
            raise EmberdError(
                f"--max-datagram {cfg.max_datagram}: must be in {fmt.MIN_MAX_DATAGRAM_BYTES}..65507"
            )
        if not 1 <= cfg.threads <= MAX_THREADS:
            raise EmberdError(f"--threads {cfg.threads}: must be in 1..{MAX_THREADS}")
        if not 1 <= cfg.k <= MAX_K:
            raise EmberdError(f"--k {cfg.k}: must be in 1..{MAX_K}")
        if cfg.zmq_pub.lower() not in NO_ENDPOINT:
            cfg.zmq_pub = netpolicy.check_zmq_endpoint(cfg.zmq_pub, "--zmq",
                                                       listen_any=cfg.listen_any)  # fmt: skip
        if cfg.control.lower() not in NO_ENDPOINT:
            cfg.control = netpolicy.check_zmq_endpoint(cfg.control, "--control",
                                                       listen_any=cfg.listen_any)  # fmt: skip
        osc_in = None
        if cfg.osc_in:
            osc_in = netpolicy.parse_host_port(cfg.osc_in, "--osc-in")
            netpolicy.check_listen_host(osc_in[0], "--osc-in", listen_any=cfg.listen_any)
        hosts = [netpolicy.parse_host_port(t, "--osc", allow_zero=False) for t in cfg.osc]
        targets = [netpolicy.resolve_target(h, port, "--osc") for h, port in hosts]
        most = fmt.max_floats(fmt.ADDR_PROJ, "iiii", cfg.max_datagram)
        if not 0 <= cfg.osc_proj <= most:
            raise EmberdError(f"--osc-proj {cfg.osc_proj}: must be in 0..{most} (what fits one "
                              f"{cfg.max_datagram}-byte datagram)")
        return targets, osc_in

    def start(self, *, start_input: bool = True) -> Daemon:
        """Start every thread; raises EmberdError (and cleans up) if anything fails.

        With ``start_input=False`` everything runs (status is published, control
        answers) but no audio flows until :meth:`start_input`: a test can connect its
        subscribers first and lose nothing.
        """
        if self._started:
            return self
        self._started = True
        try:
            self._start()
            if start_input:
                self.start_input()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def input_is_played(self) -> bool:
        """True when the input is a file or the synth (played by a feeder), not a device."""
        return isinstance(self._input, FeederInput)

    def start_input(self) -> None:
        """Start the audio input (device stream or feeder)."""
        if self._input is not None and not self._input_started:
            self._input_started = True
            self._input.start()
            if self.stats is not None:  # a device knows its full name only once open
                self.stats.info["input"] = self._input.description

    def _start(self) -> None:
        cfg = self.config
        targets, osc_in = self._check_network()
        for spec in self.config.sinks:  # an unknown --sink fails before the model loads
            from emberd import plugins

            plugins.require(plugins.GROUP_SINKS, plugins.parse_spec(spec, "--sink")[0])
        # The PortAudio callback is Python: it must take the GIL from the worker. A
        # thread that wants the GIL waits up to the switch interval, which becomes
        # callback jitter; 1 ms bounds it at a small throughput cost.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        from emberd.models.registry import resolve_default

        manifest = resolve_default(cfg.model)  # None: aiSFX, or dsp-baseline with a warning
        library_path = Path(cfg.library).expanduser()
        _require_model(library_path, manifest.name)  # before any thread starts
        self._input = source = open_input(cfg, int(manifest.frontend().sr))
        columns = parse_channels(cfg.channels, source.ring.channels)
        engine = self._engine(manifest, len(columns))
        self.stats = stats = DaemonStats(source.nominal_block_s)
        stats.info.update(
            input=source.description,
            library=str(cfg.library),
            osc_targets=[f"{h}:{p}" for h, p in targets],
        )
        from emberd.daemon.analyzers import Analyzers

        analyzers = Analyzers.load(cfg.analyzers)
        runners = start_sinks(self._sink_specs(targets, stats), stats, lossless=cfg.pace == "fast")
        self._threads.extend(runners)
        self._outputs = Outputs(runners, analyzers, stats)
        self.pub_endpoint = next((r.sink.endpoint for r in runners if r.output == "zmq"), None)
        stats.info["zmq_pub"] = self.pub_endpoint

        def open_library() -> Any:
            from emberd.library import Library

            return Library.open(library_path, wait=False)  # mid-index: keep the old generation

        self.worker = worker = Worker(
            source=source, engine=engine, open_library=open_library, channel_index=columns,
            handoffs=[self._outputs], stats=stats, k=cfg.k, realtime=cfg.pace == "realtime",
            hit_detection=cfg.hits,
        )  # fmt: skip
        if columns == [-1]:
            worker.channels = [0]
        if cfg.mix_reference:  # EmberdError (one line, exit 2) for an unreadable reference
            worker.mixdown.reference_db = load_reference(cfg.mix_reference, sr=source.sr)
        worker.start()
        self._threads.append(worker)
        if not worker.ready.wait(START_TIMEOUT_S):
            raise EmberdError(f"library {library_path}: not open after {START_TIMEOUT_S:g} s")
        if worker.error is not None:
            if isinstance(worker.error, EmberdError):
                raise worker.error
            raise EmberdError(f"library {library_path}: cannot open ({worker.error})")
        controller = Controller(worker, stats, lambda name: self._engine(name, len(columns)),
                                open_library)  # fmt: skip
        if cfg.control.lower() not in NO_ENDPOINT:
            import zmq

            self._context = zmq.Context()
            cs = ZmqControlServer(cfg.control, controller, stats, context=self._context)
            cs.start()
            self._threads.append(cs)
            cs.bound.wait(BIND_TIMEOUT_S)
            if cs.error is not None:
                raise EmberdError(f"--control {cfg.control}: cannot bind ({cs.error})")
            self.control_endpoint = cs.endpoint
        if osc_in is not None:
            oc = OscControlServer(*osc_in, controller, stats, max_bytes=cfg.max_datagram)
            oc.start()
            self._threads.append(oc)
            self.osc_in_address = oc.address
        stats.info["control"] = self.control_endpoint
        if self.osc_in_address is not None:
            stats.info["osc_in"] = "{}:{}".format(*self.osc_in_address)

    def _sink_specs(
        self, targets: list[tuple[str, int]], stats: DaemonStats
    ) -> list[tuple[str, dict[str, str]]]:
        """The sinks to run: built-ins from their flags, then every ``--sink``."""
        from emberd import plugins

        cfg = self.config
        specs: list[tuple[str, dict[str, str]]] = []
        if targets or cfg.wekinator:
            specs.append(("osc", {
                "targets": " ".join(f"{h}:{p}" for h, p in targets),
                "start_time": repr(stats.start_time), "max_bytes": str(cfg.max_datagram),
                "proj_dims": str(cfg.osc_proj), "embedding": "1" if cfg.osc_embedding else "0",
                "wekinator": "{}:{}".format(*WEKINATOR_TARGET) if cfg.wekinator else "",
                "wekinator_dims": str(cfg.osc_proj or WEKINATOR_DIMS),
                "changes_only": "1" if cfg.osc_changes_only else "0",
            }))  # fmt: skip
        if cfg.zmq_pub.lower() not in NO_ENDPOINT:
            specs.append(("zmq", {"endpoint": cfg.zmq_pub,
                                  "listen_any": "1" if cfg.listen_any else "0"}))  # fmt: skip
        if cfg.midi:
            midi = {"port": cfg.midi}
            if cfg.midi_map:
                midi["map"] = cfg.midi_map
            if cfg.midi_stage:
                midi["stage"] = cfg.midi_stage
            specs.append(("midi", midi))
        for spec in cfg.sinks:
            name, options = plugins.parse_spec(spec, "--sink")
            if name == "osc":
                options.setdefault("start_time", repr(stats.start_time))
            if name == "zmq":
                options.setdefault("listen_any", "1" if cfg.listen_any else "0")
            specs.append((name, options))
        return specs

    def _engine(self, model: Any, channels: int) -> Engine:
        cfg = self.config
        return build_engine(model, channels=channels, device=cfg.device, hop_ms=cfg.hop_ms,
                            strategy=cfg.encoder, threads=cfg.threads)  # fmt: skip

    # ------------------------------------------------------------------ run / stop

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the input ends, the worker fails, or :meth:`request_stop`; True if ended."""
        assert self.worker is not None
        done = self.worker.done
        waited = 0.0
        while not done.is_set() and not self._stop.is_set():
            done.wait(0.2)
            waited += 0.2
            if timeout is not None and waited >= timeout:
                return False
        return True

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (signal handlers call this)."""
        self._stop.set()

    @property
    def error(self) -> BaseException | None:
        """What ended the daemon abnormally (input or worker failure), if anything."""
        if self._input is not None and getattr(self._input, "error", None) is not None:
            return self._input.error
        return self.worker.error if self.worker is not None else None

    def close(self) -> None:
        """Stop the input, drain the publishers, stop every thread, free the sockets."""
        if self._input is not None:
            self._input.stop()
        if self.worker is not None:
            self.worker.stop()
            if self.worker.is_alive():
                self.worker.join(JOIN_TIMEOUT_S)
        if self._outputs is not None:
            self._outputs.close()
        for t in self._threads:
            if hasattr(t, "stop"):
                t.stop()
        for t in self._threads:
            if t.is_alive():
                t.join(JOIN_TIMEOUT_S)
        stuck = [t.name for t in self._threads if t.is_alive()]
        self._threads.clear()
        if self._context is not None:
            if stuck:  # a thread still holds a socket: close them all rather than hang
                log.warning("threads did not stop: %s", ", ".join(stuck))
                self._context.destroy(linger=0)
            else:
                self._context.term()
            self._context = None

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
