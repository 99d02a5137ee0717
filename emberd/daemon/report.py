"""What ``emberd run`` and ``emberd demo`` say on stderr: start block, status line, summary.

* :func:`start_block`: a few readable lines once everything is running (model, provider,
  hop, input, library, every endpoint; "off" for what is disabled, never ``None``).
* :func:`status_line`: one line of live figures (hops, latency, matches, hits, drops),
  printed every :data:`STATUS_LINE_PERIOD_S` while stderr is a terminal.
* :func:`summary`: the closing line, the same for ``run`` and ``demo``.

Everything here reads a status snapshot (:meth:`DaemonStats.snapshot`) or the daemon's
public attributes from the main thread; nothing is written.
"""

from __future__ import annotations

from typing import Any

STATUS_LINE_PERIOD_S = 5.0  # seconds between live status lines on a terminal
OFF = "off"


def _or_off(value: Any) -> str:
    return str(value) if value else OFF


def start_block(daemon: Any, *, command: str = "run") -> str:
    """The lines printed once the daemon runs (joined with newlines, no trailing one)."""
    st = dict(daemon.stats.info) if daemon.stats is not None else {}
    if daemon.worker is not None:
        st.update(daemon.worker.describe())
    cfg = daemon.config
    hop = st.get("hop_ms")
    head = (f"emberd {command}: {st.get('model', '?')} ({st.get('encoder', '?')} encoder) on "
            f"{st.get('provider', '?')}, hop {hop:.1f} ms, {st.get('k', '?')} matches per hop"
            if isinstance(hop, (int, float)) else f"emberd {command}: starting")  # fmt: skip
    source = str(st.get("input", cfg.input))
    how = ""
    if daemon.input_is_played:  # a file or synth, not a device
        how = f" ({cfg.pace} pace, {'looped' if cfg.loop else 'played once'})"
    osc_out = ", ".join(st.get("osc_targets", []))
    lines = [
        head,
        f"  input    {source}{how}, channels {cfg.channels}",
        f"  library  {st.get('library', cfg.library)}",
        f"  ZeroMQ   PUB {_or_off(daemon.pub_endpoint)}; "
        f"control {_or_off(daemon.control_endpoint)}",
        f"  OSC      out {_or_off(osc_out)}; control in {_or_off(st.get('osc_in'))}",
    ]
    return "\n".join(lines)


def _matches(st: dict[str, Any]) -> str:
    matched = st.get("matched_hops")
    out = f"matches in {matched} hops" if isinstance(matched, int) else ""
    hits = st.get("hits")
    if isinstance(hits, int):
        out += f", {hits} hits"
    return out


def status_line(st: dict[str, Any], top: str = "") -> str:
    """One line of live figures from a status snapshot; ``top`` is the latest top-1 name."""
    parts = [
        f"{st.get('uptime_s', 0):6.1f} s",
        f"hops {st.get('hops', 0)}",
        f"latency p50 {st.get('latency_p50_ms', 0):.1f} / p99 {st.get('latency_p99_ms', 0):.1f} ms",
    ]
    if _matches(st):
        parts.append(_matches(st))
    parts.append(f"overflows {st.get('overflows', 0)}, dropped hops {st.get('dropped_hops', 0)}")
    if st.get("input_state", "running") != "running":
        parts.append(f"input {st['input_state']}")
    if top:
        parts.append(f"now: {top}")
    return "emberd: " + " | ".join(parts)


def summary(st: dict[str, Any], *, command: str = "run", extra: str = "") -> str:
    """The closing line of ``run`` and ``demo`` (``extra`` appends command-specific facts)."""
    line = (
        f"emberd {command}: {st.get('hops', 0)} hops in {st.get('uptime_s', 0):.1f} s, "
        f"latency p50 {st.get('latency_p50_ms', 0):.1f} ms"
        f" / p99 {st.get('latency_p99_ms', 0):.1f} ms,"
        f" inference p99 {st.get('inference_p99_ms', 0):.1f} ms"
    )
    if _matches(st):
        line += f", {_matches(st)}"
    line += f", overflows {st.get('overflows', 0)}, dropped hops {st.get('dropped_hops', 0)}"
    return line + (f"; {extra}" if extra else "")
