"""``emberd run`` (the live daemon) and ``emberd demo``."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from emberd.clients.cli import add_control, add_zmq
from emberd.clients.osc_format import DEFAULT_MAX_DATAGRAM_BYTES, MIN_MAX_DATAGRAM_BYTES
from emberd.cliopts import (
    add_k,
    add_precision,
    add_provider,
    add_threads,
    int_range,
    non_negative_float,
    positive_float,
)

DEFAULT_K = 5  # matches per hop
DEFAULT_DEMO_SECONDS = 20.0  # length of `emberd demo`
DEMO_OSC_TARGET = "127.0.0.1:9000"  # where the Pd patch (clients/patches/emberd.pd) listens


def add_daemon_options(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    """Options shared by ``run`` and ``demo``."""
    p.add_argument("--model", default=None,
                   help="encoder; the library must be indexed with it (default: aisfx, "
                        "falling back loudly to dsp-baseline)")
    add_precision(p)
    add_provider(p)
    p.add_argument("--encoder", default="streaming", choices=("windowed", "streaming"),
                   help="streaming: cached activations, same embeddings as windowed, "
                        "aisfx only (default; other models run windowed); "
                        "windowed: ONNX encoder on the latest window each hop")
    p.add_argument("--hop-ms", type=positive_float, default=None, metavar="MS",
                   help="analysis hop, rounded to whole mel frames (default: one frame, "
                        "23.2 ms for aisfx; from one frame up to one encoder window)")
    add_k(p, default=DEFAULT_K, what="hop")
    p.add_argument("--osc", action="append", default=[], metavar="HOST:PORT",
                   help="send OSC to HOST:PORT (repeatable)")
    p.add_argument("--osc-in", default=None, metavar="HOST:PORT",
                   help="listen for OSC control (/emberd/ctl/...) on HOST:PORT")
    add_zmq(p, bind=True)
    add_control(p, bind=True)
    p.add_argument("--wekinator", action="store_true",
                   help="also send /wek/inputs (projected embedding) to 127.0.0.1:6448")
    p.add_argument("--osc-proj", type=int_range(0), default=0, metavar="N",
                   help="also send /emberd/proj: N floats from a fixed random projection "
                        "(default 0: off; at most what fits one datagram)")
    p.add_argument("--no-osc-embedding", action="store_true",
                   help="do not send the /emberd/emb blobs")
    p.add_argument("--osc-changes-only", action="store_true",
                   help="OSC: send /emberd/match only when a channel's top-1 changes, "
                        "/emberd/tags only when its top tag changes, /emberd/level only on "
                        "onsets (for receivers that print what they get; docs/osc.md)")
    p.add_argument("--listen-any", action="store_true",
                   help="allow listening on non-loopback addresses (default: 127.0.0.1 only)")
    p.add_argument("--max-datagram", type=int, default=DEFAULT_MAX_DATAGRAM_BYTES, metavar="BYTES",
                   help=f"largest OSC datagram, {MIN_MAX_DATAGRAM_BYTES}..65507 "
                        f"(default {DEFAULT_MAX_DATAGRAM_BYTES})")
    add_threads(p)
    p.add_argument("--mix-reference", default=None, metavar="pink|FILE",
                   help="target spectral balance for the mix-down view: 'pink' (flat per "
                        "1/3 octave), an audio file (its long-term balance) or a .csv of Hz,dB")
    p.add_argument("--no-hits", action="store_true",
                   help="do not detect hits (no hit.<c> / /emberd/hit messages)")
    p.add_argument("--sink", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="also publish through the emberd.sinks plug-in NAME (repeatable; "
                        "`emberd plugins` lists them; docs/plugins.md)")
    p.add_argument("--analyzer", action="append", default=[], metavar="NAME",
                   help="require the emberd.analyzers plug-in NAME to load (installed "
                        "analysers run anyway; a broken one is left out with a warning)")
    p.add_argument("--midi", default=None, metavar="PORT",
                   help="send a MIDI note per hit to PORT (a JACK MIDI port such as "
                        "'system:midi_playback_1', or 'alsa:CLIENT:PORT'; docs/plugins.md)")
    p.add_argument("--midi-map", default=None, metavar="FILE",
                   help="JSON map of folder tags / file names to MIDI notes "
                        "(default: General MIDI drum notes)")
    p.add_argument("--midi-stage", default=None, metavar="STAGE",
                   help="hit stage that sends the note: provisional (default), refined or final")
    p.add_argument("--capture-in", default="thread", choices=("process", "thread"),
                   help="device input: run the PortAudio callback in the daemon (default) or "
                        "in a capture child process, where no daemon thread can delay it")
    if not demo:
        p.add_argument("--channels", default="mix", metavar="SPEC",
                       help="input channels to analyse separately: mix (default), all, "
                            "or e.g. 0,2,4-7")


def register(subparsers: Any) -> None:
    """Add ``run`` and ``demo``."""
    run = subparsers.add_parser(
        "run", help="the live daemon: audio in, nearest library sounds out over OSC/ZeroMQ",
        description="Analyse live audio every hop and publish the nearest sounds of a sample "
        "library, tags, levels and embeddings over OSC and ZeroMQ.",
    )  # fmt: skip
    run.add_argument("--library", required=True, metavar="PATH",
                     help="library made by `emberd index`")
    run.add_argument("--input", default="default", metavar="DEVICE|FILE|synth",
                     help="device index or name ('default'), an audio file, or 'synth'")
    run.add_argument("--pace", default="realtime", choices=("realtime", "fast"),
                     help="file input: real time (default) or as fast as possible")
    run.add_argument("--loop", action="store_true", help="file input: start again at the end")
    add_daemon_options(run)
    run.set_defaults(func=run_command)

    demo = subparsers.add_parser(
        "demo", help="live demo: synthesised performance against a synthesised library",
        description="Build (once) a small library of synthesised one-shots, play a synthesised "
        "performance through the daemon in real time and show the live matches. Needs no "
        "audio hardware. The aiSFX model is fetched on the first run (`pip download`, "
        "through your pip configuration; --model dsp-baseline needs no network at all). "
        f"Publishes ZeroMQ on the `run` defaults and OSC to {DEMO_OSC_TARGET} unless --osc "
        "is given.",
    )  # fmt: skip
    demo.add_argument("--input", default="synth", metavar="synth|default|DEVICE|FILE",
                      help="synth (default), 'default' for the default input device, or a file")
    demo.add_argument("--duration", type=non_negative_float, default=DEFAULT_DEMO_SECONDS,
                      metavar="S",
                      help=f"seconds to run (default {DEFAULT_DEMO_SECONDS:g}; 0 = until Ctrl-C)")
    demo.add_argument("--rebuild", action="store_true", help="rebuild the demo library")
    add_daemon_options(demo, demo=True)
    demo.set_defaults(func=demo_command)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    """Build a :class:`~emberd.daemon.app.DaemonConfig` from parsed options."""
    from pathlib import Path

    from emberd.daemon.app import DaemonConfig
    from emberd.models.precision import model_for

    values = dict(
        library=Path(getattr(args, "library", "") or "."),
        input=args.input,
        pace=getattr(args, "pace", "realtime"),
        loop=getattr(args, "loop", False),
        channels=getattr(args, "channels", "mix"),
        model=model_for(args.model, getattr(args, "precision", None)),
        device=args.provider,
        encoder=args.encoder,
        hop_ms=args.hop_ms,
        k=args.k,
        osc=list(args.osc),
        osc_in=args.osc_in,
        zmq_pub=args.zmq,
        control=args.control,
        wekinator=args.wekinator,
        listen_any=args.listen_any,
        max_datagram=args.max_datagram,
        osc_proj=args.osc_proj,
        osc_embedding=not args.no_osc_embedding,
        osc_changes_only=args.osc_changes_only,
        threads=args.threads,
        hits=not args.no_hits,
        sinks=list(args.sink),
        analyzers=list(args.analyzer),
        midi=args.midi,
        midi_map=args.midi_map,
        midi_stage=args.midi_stage,
        mix_reference=args.mix_reference,
        capture_in=args.capture_in,
    )
    values.update(overrides)
    return DaemonConfig(**values)


def run_command(args: argparse.Namespace) -> int:
    """``emberd run``: start, run until the input ends or SIGINT/SIGTERM, exit 0.

    Prints a start block once everything runs, a status line every few seconds while
    stderr is a terminal, and the summary ``demo`` prints when it ends.
    """
    import time

    from emberd.daemon import report
    from emberd.daemon.app import Daemon

    daemon = Daemon(config_from_args(args))
    stop = lambda *_: daemon.request_stop()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    live = sys.stderr.isatty()
    with daemon:
        print(report.start_block(daemon) + ("\n  Ctrl-C stops." if live else ""),
              file=sys.stderr, flush=True)  # fmt: skip
        assert daemon.stats is not None
        next_line = time.monotonic() + report.STATUS_LINE_PERIOD_S
        while not daemon.wait(timeout=0.2 if live else None):
            if time.monotonic() >= next_line:
                next_line += report.STATUS_LINE_PERIOD_S
                print(report.status_line(daemon.stats.snapshot(), daemon.stats.last_top1),
                      file=sys.stderr, flush=True)  # fmt: skip
        final = daemon.stats.snapshot()
        error = daemon.error
    if error is not None:
        from emberd.errors import EmberdError

        raise error if isinstance(error, EmberdError) else EmberdError(f"daemon: {error}")
    print(report.summary(final), file=sys.stderr, flush=True)
    return 0  # emberd.cli.main ends the process at once if a stream was left running


def demo_command(args: argparse.Namespace) -> int:
    """``emberd demo``."""
    from emberd.daemon.demo import run_demo

    if not args.osc:  # the demo publishes OSC too, to where the bundled Pd patch listens
        args.osc = [DEMO_OSC_TARGET]
    return run_demo(args)
