"""Plug-ins: entry points, the sink path's isolation, ``emberd plugins``, analysers.

The example sink package (``examples/ndjson-sink``) and a package of sinks that
misbehave on purpose (``tests/plugin_pkgs/emberd-test-plugins``) are pip-installed into
the test environment by :func:`installed_plugins` -- real distributions with real entry
points, found by ``importlib.metadata`` exactly as a user's would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from emberd import plugins
from emberd.clients import wire
from emberd.daemon.app import Daemon, DaemonConfig
from emberd.daemon.status import DaemonStats
from emberd.errors import EmberdError
from emberd.testing import plugpkgs, smalllib

MODEL = smalllib.FAST_MODEL
RECV_TIMEOUT_MS = 20000
BLOCK_S = 2  # seconds the blocking test sink sleeps per message
TRANSIENT = ("publish_time", "latency_ms")  # stamped by each sink when it delivers


@pytest.fixture(scope="module")
def installed_plugins() -> None:
    plugpkgs.install(list(plugpkgs.PACKAGES))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("pluginlib")
    files = smalllib.write_sounds(root / "sounds", per_folder=2)
    lib = root / "lib"
    proc = smalllib.index([root / "sounds"], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return lib, files


@pytest.fixture(scope="module")
def performance(tmp_path_factory: pytest.TempPathFactory, library: Any) -> Path:
    """4 s of library one-shots, two hits a second."""
    _, files = library
    sr = sf.info(str(files[0])).samplerate
    out = np.zeros(4 * sr, np.float32)
    for i, start in enumerate(range(0, out.size - sr // 2, sr // 2)):
        y, _ = sf.read(files[i % len(files)], dtype="float32")
        y = y[: sr // 2] if y.ndim == 1 else y[: sr // 2, 0]
        out[start : start + y.size] += y
    path = tmp_path_factory.mktemp("perf") / "perf.wav"
    sf.write(path, out, sr)
    return path


def _emberd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emberd", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _config(lib: Path, source: Path, **kw: Any) -> DaemonConfig:
    base: dict[str, Any] = dict(library=lib, input=str(source), pace="fast", model=MODEL,
                                device="cpu", zmq_pub="tcp://127.0.0.1:0", control="none",
                                k=3)  # fmt: skip
    base.update(kw)
    return DaemonConfig(**base)


def _run_with_subscriber(cfg: DaemonConfig) -> tuple[list[wire.Message], dict[str, Any]]:
    """Run the daemon in process; every ZeroMQ message from the first status to the end."""
    import zmq

    ctx = zmq.Context()
    msgs: list[wire.Message] = []
    daemon = Daemon(cfg).start(start_input=False)
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        assert daemon.pub_endpoint is not None
        sub.connect(daemon.pub_endpoint)
        while wire.decode(sub.recv_multipart()).kind != wire.KIND_STATUS:
            pass  # the first status proves the subscription is live: no hop is missed
        daemon.start_input()
        while True:
            msg = wire.decode(sub.recv_multipart())
            msgs.append(msg)
            if msg.kind == wire.KIND_STATUS and msg.header["status"].get("final"):
                break
    finally:
        daemon.close()
        sub.close(0)
        ctx.term()
    return msgs, msgs[-1].header["status"]


def _ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _key(topic: str, header: dict[str, Any]) -> tuple[str, int]:
    return (topic, int(header["seq"]))


def _stable(header: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in header.items() if k not in TRANSIENT}


# ---------------------------------------------------------------------------- entry points


def test_builtins_are_entry_points() -> None:
    """Every built-in output and analyser is found through its group, from emberd."""
    sinks = {p.name: p for p in plugins.discover(plugins.GROUP_SINKS)}
    analyzers = {p.name: p for p in plugins.discover(plugins.GROUP_ANALYZERS)}
    for name in ("zmq", "osc", "midi"):
        assert sinks[name].dist == "emberd", name
    for name in ("tags", "levels", "similarity"):
        assert analyzers[name].dist == "emberd", name
    encoders = {p.name: p for p in plugins.discover(plugins.GROUP_ENCODERS)}
    for name in ("aisfx", "dsp-baseline"):
        assert encoders[name].dist == "emberd", name
    for info in [*sinks.values(), *analyzers.values(), *encoders.values()]:
        if info.builtin:
            assert callable(plugins.load(info)), info


def test_parse_spec() -> None:
    assert plugins.parse_spec("ndjson") == ("ndjson", {})
    assert plugins.parse_spec("osc:targets=127.0.0.1:9000,max_bytes=512") == (
        "osc", {"targets": "127.0.0.1:9000", "max_bytes": "512"})  # fmt: skip
    for bad in ("", ":a=b", "x:novalue"):
        with pytest.raises(EmberdError):
            plugins.parse_spec(bad)


def test_plugins_command_lists_every_group(installed_plugins: None) -> None:
    proc = _emberd("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["group"], r["name"]): r for r in json.loads(proc.stdout)["plugins"]}
    nd = rows[("emberd.sinks", "ndjson")]
    assert (nd["dist"], nd["version"], nd["loads"]) == ("emberd-ndjson-sink", "0.1.0", True)
    assert rows[("emberd.sinks", "zmq")]["dist"] == "emberd"
    assert rows[("emberd.analyzers", "tags")]["loads"] is True
    broken = rows[("emberd.sinks", "test-broken-import")]
    assert broken["loads"] is False and "emberd-test-plugins" in broken["error"]
    assert "ModuleNotFoundError" in broken["error"]
    assert rows[("emberd.sinks", "test-broken-attr")]["loads"] is False
    text = _emberd("plugins")
    assert text.returncode == 0
    line = next(ln for ln in text.stdout.splitlines() if "test-broken-import" in ln)
    assert "FAILS" in line and "emberd-test-plugins" in line
    assert any(ln.split()[:2] == ["ndjson", "emberd-ndjson-sink"] and ln.endswith("ok")
               for ln in text.stdout.splitlines())  # fmt: skip


@pytest.mark.parametrize("name", ["test-broken-import", "test-broken-attr", "test-broken-ctor",
                                  "no-such-sink"])  # fmt: skip
def test_broken_sink_asked_for_exits_2_naming_the_package(
    installed_plugins: None, library: Any, performance: Path, name: str
) -> None:
    lib, _ = library
    proc = _emberd("run", "--library", str(lib), "--input", str(performance), "--model", MODEL,
                   "--zmq-pub", "none", "--control", "none", "--sink", name)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert name in errors[0]
    if name != "no-such-sink":
        assert "emberd-test-plugins" in errors[0]


def test_installed_but_unrequested_broken_sink_does_not_stop_the_daemon(
    installed_plugins: None, library: Any, performance: Path, tmp_path: Path
) -> None:
    """Broken sinks are installed (see the test above), the daemon does not ask for them."""
    lib, _ = library
    out = tmp_path / "out.ndjson"
    proc = _emberd("run", "--library", str(lib), "--input", str(performance), "--model", MODEL,
                   "--pace", "fast", "--zmq-pub", "none", "--control", "none",
                   "--sink", f"ndjson:path={out}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert any(r["topic"].startswith("match.") for r in _ndjson(out))


# ---------------------------------------------------------------------------- sinks end to end


def test_third_party_sink_gets_what_a_zmq_subscriber_gets(
    installed_plugins: None, library: Any, performance: Path, tmp_path: Path
) -> None:
    lib, _ = library
    out = tmp_path / "sink.ndjson"
    cfg = _config(lib, performance, channels="all", sinks=[f"ndjson:path={out}"])
    msgs, status = _run_with_subscriber(cfg)
    got = {_key(r["topic"], r["header"]): r for r in _ndjson(out)}
    assert status["outputs"]["ndjson"]["dropped"] == 0
    assert status["outputs"]["ndjson"]["errors"] == 0
    kinds = set()
    for m in msgs:
        topic = wire.topic_for(m.kind, m.channel).decode()
        row = got.pop(_key(topic, m.header))
        assert _stable(row["header"]) == _stable(m.header), topic
        if m.array is None:
            assert row["array"] is None
        else:
            np.testing.assert_array_equal(np.asarray(row["array"], np.float32), m.array)
        kinds.add(m.kind)
    assert {"match", "tag", "level", "emb", "status"} <= kinds
    # What the subscriber did not see is only the status sent before it subscribed.
    assert {t for t, _ in got} <= {"status"}, sorted(got)[:5]


def test_raising_and_blocking_sinks_change_nothing_for_the_others(
    installed_plugins: None, library: Any, performance: Path, tmp_path: Path
) -> None:
    """Real-time pace: a sink raising on every message and one blocking 2 s per message
    run beside ZeroMQ and NDJSON. The worker never waits for them (no hop skipped), the
    others get every hop, the raising one is disabled, the blocked one's drops counted."""
    lib, _ = library
    out = tmp_path / "sink.ndjson"
    cfg = _config(lib, performance, pace="realtime", sinks=[
        f"ndjson:path={out}", "test-raising", f"test-blocking:seconds={BLOCK_S}"])  # fmt: skip
    msgs, status = _run_with_subscriber(cfg)
    hops_zmq = [m.header["hop"] for m in msgs if m.kind == wire.KIND_MATCH]
    assert len(hops_zmq) == status["hops"] > 100
    hops_nd = [r["header"]["hop"] for r in _ndjson(out) if r["topic"] == "match.0"]
    # A worker that waited for the blocked sink even once would skip a whole block's
    # worth of hops (2 s / 23 ms = 86); a loaded machine skips a few on its own.
    assert status["skipped_hops"] < BLOCK_S / (status["hop_ms"] / 1000.0) / 2, status
    assert hops_zmq == list(range(status["hops"])), "ZeroMQ lost hops"
    assert hops_nd == hops_zmq, "the NDJSON sink lost hops"
    outs = status["outputs"]
    assert outs["zmq"]["dropped"] == 0 and outs["ndjson"]["dropped"] == 0
    assert outs["zmq"]["errors"] == 0 and outs["ndjson"]["errors"] == 0
    assert outs["test-raising"]["disabled"] is True
    assert outs["test-raising"]["errors"] >= 1 and outs["test-raising"]["published"] == 0
    assert outs["test-blocking"]["dropped"] > 0
    assert status["publisher_drops"]["test-blocking"] > 0
    from emberd.clients.watch import outputs_text  # what `emberd watch` shows of it

    line = outputs_text(status)
    assert "zmq ok" in line and "ndjson ok" in line and "test-raising disabled" in line
    assert f"test-blocking {outs['test-blocking']['dropped']} dropped" in line


def test_encode_failure_of_one_message_is_counted_not_fatal() -> None:
    """The built-in OSC sink given a message it cannot encode: counted in errors, the next
    message still goes out (issue 20 item 7: every swallowed exception reaches status)."""
    import socket

    from emberd.clients import osc_format as fmt
    from emberd.daemon.outputs import Batch, start_sinks

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    stats = DaemonStats(0.0058)
    (runner,) = start_sinks([("osc", {"targets": "{}:{}".format(*rx.getsockname())})], stats,
                            lossless=True)  # fmt: skip
    bad = ("tag.0", {"kind": "tag", "seq": 0, "capture_time": 0.0, "channel": 0,
                     "tags": [{"no": "tag"}]}, None)  # fmt: skip
    good = ("level.0", {"kind": "level", "seq": 0, "capture_time": 0.0, "channel": 0,
                        "rms_db": -20.0, "peak_db": -10.0, "onset": False}, None)  # fmt: skip
    runner.handoff.put(Batch((bad, good), 0.0, hop=False, final=True))
    assert fmt.decode(rx.recv(65536)).address == fmt.ADDR_LEVEL
    runner.join(10)
    rx.close()
    d = runner.describe()
    assert d["errors"] == 1 and d["published"] == 1 and "KeyError" in d["last_error"]


def test_hit_messages_go_through_the_sink_path() -> None:
    """A HitResult from the worker reaches a sink as ``hit.<c>`` with the wire header,
    which decodes like any ZeroMQ message (the MIDI sink's contract)."""
    from emberd.daemon.analyzers import Analyzers
    from emberd.daemon.hits import HitResult
    from emberd.daemon.outputs import Outputs

    outputs = Outputs([], Analyzers.load(), DaemonStats(0.0058))
    hit = HitResult(channel=2, hit=7, stage="provisional", onset_time=100.0, onset_s=1.5,
                    capture_time=100.006, window_ms=6.0, peak_db=-6.0, model="m",
                    matches=[{"path": "/k.wav", "name": "k", "tags": ["Kicks"],
                              "kind": "exact", "confidence": 0.9}])  # fmt: skip
    (msg,) = outputs.batch(hit).messages
    topic, header, array = msg
    assert topic == "hit.2" and array is None
    decoded = wire.decode(wire.pack(topic, header, array))
    assert decoded.header["stage"] == "provisional" and decoded.header["hit"] == 7
    assert decoded.header["peak_db"] == -6.0 and decoded.header["answer"] == "exact"


# ---------------------------------------------------------------------------- analysers


class _Info:
    """A third-party analyser's identity, without installing one into the environment."""

    @staticmethod
    def make(name: str) -> plugins.PluginInfo:
        return plugins.PluginInfo(plugins.GROUP_ANALYZERS, name, "x:y", "some-dist", "1.0")


class _Head:
    kind, stage = "match", "hop"

    def analyze(self, hop: Any) -> list[dict[str, Any]]:
        return [{"loud": bool(lv[0] > -30.0)} for lv in hop.levels]


class _Raises:
    kind, stage = "tag", "hop"

    def analyze(self, hop: Any) -> list[dict[str, Any]]:
        raise ValueError("analyser bug")


class _Clobbers:
    kind, stage = "level", "hop"

    def analyze(self, hop: Any) -> list[dict[str, Any]]:
        return [{"seq": 99} for _ in hop.channels]


class _Steals:
    kind, stage = "match", "hop"

    def analyze(self, hop: Any) -> list[dict[str, Any]]:
        return [{"matches": ["not yours"]} for _ in hop.channels]


def test_analyzers_add_fields_and_are_isolated() -> None:
    from emberd.daemon.analyzers import MAX_CONSECUTIVE_ERRORS, Analyzers, AnalyzerSlot
    from emberd.daemon.outputs import Outputs
    from emberd.daemon.worker import HopResult

    base = Analyzers.load()
    slots = [*base.slots] + [AnalyzerSlot(_Info.make(n), obj, obj.kind, obj.stage)
                             for n, obj in (("head", _Head()), ("raises", _Raises()),
                                            ("clobbers", _Clobbers()),
                                            ("steals", _Steals()))]  # fmt: skip
    outputs = Outputs([], Analyzers(slots), DaemonStats(0.0058))
    emb = np.eye(2, 8, dtype=np.float32)
    for seq in range(MAX_CONSECUTIVE_ERRORS + 1):
        hop = HopResult(seq=seq, capture_time=0.0, stream_s=0.0, model="m", channels=[0, 1],
                        embeddings=emb, matches=[[], []],
                        levels=[(-20.0, -10.0, False), (-60.0, -50.0, False)])  # fmt: skip
        msgs = {t: h for t, h, _ in outputs.batch(hop).messages}
    assert msgs["match.0"]["loud"] is True and msgs["match.1"]["loud"] is False
    assert msgs["level.0"]["seq"] == seq and msgs["tag.0"]["tags"] == []
    assert "similarity" in msgs and msgs["similarity"]["channels"] == [0, 1]
    d = outputs.describe_analyzers()
    assert d["raises"]["disabled"] and d["raises"]["errors"] == MAX_CONSECUTIVE_ERRORS
    assert d["clobbers"]["disabled"] and "seq" in d["clobbers"]["last_error"]
    assert d["head"]["errors"] == 0 and d["head"]["calls"] == seq + 1
    assert d["steals"]["disabled"] and msgs["match.0"]["matches"] == []
    before = DaemonStats(0.0058).snapshot()["swallowed_errors"].get("building object messages", 0)
    outputs.put(object())  # type: ignore[arg-type]  # a worker bug: counted, never fatal
    after = DaemonStats(0.0058).snapshot()["swallowed_errors"]["building object messages"]
    assert after == before + 1


def test_blocking_sink_does_not_block_put() -> None:
    """Unit level: Outputs.put returns at once while a sink is stuck in publish()."""
    from emberd.daemon.analyzers import Analyzers
    from emberd.daemon.handoff import HANDOFF_CAPACITY_ITEMS
    from emberd.daemon.outputs import Outputs, SinkRunner
    from emberd.daemon.worker import StatusItem

    release = threading.Event()

    class Stuck:
        def publish(self, topic: str, header: dict[str, Any], array: Any) -> None:
            release.wait(30)

    info = plugins.PluginInfo(plugins.GROUP_SINKS, "stuck", "x:y", "some-dist", "1.0")
    stats = DaemonStats(0.0058)
    runner = SinkRunner("stuck", info, {}, stats)
    runner.sink = Stuck()
    threading.Thread(target=runner._loop, daemon=True).start()
    outputs = Outputs([runner], Analyzers([]), stats)
    n = HANDOFF_CAPACITY_ITEMS * 3
    for i in range(n):
        outputs.put(StatusItem({"hops": i}, 0.0))
    d = runner.describe()
    assert d["queue_dropped"] >= n - HANDOFF_CAPACITY_ITEMS - 1
    release.set()
    outputs.close()


# ---------------------------------------------------------------------------- encoders


def test_encoder_plugin_indexes_and_queries_a_library(
    installed_plugins: None, library: Any, tmp_path: Path
) -> None:
    """The example encoder (another package) through index, query and embed, like a built-in."""
    _, files = library
    sounds = files[0].parent.parent
    lib = tmp_path / "lib"
    proc = smalllib.index([sounds], lib, model="mfcc-stats")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for pick in (0, len(files) - 1):
        q = _emberd("query", str(files[pick]), "--library", str(lib), "--model", "mfcc-stats",
                    "--json", "--k", "3")  # fmt: skip
        assert q.returncode == 0, q.stderr[-2000:]
        top = json.loads(q.stdout)
        top = top[0] if isinstance(top, list) else top
        first = (top.get("matches") or top.get("results"))[0]
        assert Path(first["path"]).name == files[pick].name
    out = tmp_path / "e.npy"
    e = _emberd("embed", str(files[0]), "--model", "mfcc-stats", "--out", str(out))
    assert e.returncode == 0, e.stderr[-2000:]
    assert np.load(out).shape[-1] == 60
    listed = {r["name"]: r for r in json.loads(_emberd("models", "list", "--json").stdout)}
    assert listed["mfcc-stats"]["origin"] == "plugin" and listed["mfcc-stats"]["dim"] == 60


def test_encoder_plugin_nan_output_never_reaches_a_library(
    installed_plugins: None, library: Any, tmp_path: Path
) -> None:
    from emberd.models.plugin import load_encoder
    from emberd.models.registry import resolve

    enc = load_encoder(resolve("test-nan"))
    with pytest.raises(EmberdError, match="NaN"):
        enc.embed(np.zeros((2, 10, 96), np.float32))
    _, files = library
    proc = smalllib.index([files[0].parent], tmp_path / "lib", model="test-nan")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "test-nan" in proc.stderr and "NaN" in proc.stderr


def test_encoder_plugin_runs_live(
    installed_plugins: None, library: Any, performance: Path, tmp_path: Path
) -> None:
    """``emberd run --model mfcc-stats``: the daemon's windowed path on a plug-in encoder."""
    _, files = library
    lib = tmp_path / "lib"
    assert smalllib.index([files[0].parent.parent], lib, model="mfcc-stats").returncode == 0
    out = tmp_path / "live.ndjson"
    proc = _emberd("run", "--library", str(lib), "--input", str(performance), "--model",
                   "mfcc-stats", "--pace", "fast", "--zmq-pub", "none", "--control", "none",
                   "--sink", f"ndjson:path={out},arrays=0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _ndjson(out)
    matches = [r for r in rows if r["topic"] == "match.0" and r["header"]["matches"]]
    assert matches and all(r["header"]["model"] == "mfcc-stats" for r in matches)
    final = rows[-1]["header"]["status"]
    assert final["final"] and final["provider"] == "plugin:emberd-mfcc-encoder"


def test_swallowed_exceptions_are_counted_in_status_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from emberd.daemon.status import swallowed

    where = f"test place {threading.get_ident()}"
    for _ in range(3):
        try:
            raise OSError("gone")
        except OSError:
            swallowed(where)
    logged = [r for r in caplog.records if where in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert DaemonStats(0.0058).snapshot()["swallowed_errors"][where] == 3


def test_broken_installed_analyzer_is_left_out_unless_asked_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An analyser runs without being asked for, so a broken one is one warning naming its
    package (the daemon carries on) -- and exit 2 only with ``--analyzer NAME``."""
    from emberd.daemon.analyzers import Analyzers

    real = plugins.discover
    broken = plugins.PluginInfo(plugins.GROUP_ANALYZERS, "broken-head",
                                "emberd_no_such_module:factory", "broken-dist", "9.9")  # fmt: skip

    def discover(group: str) -> list[plugins.PluginInfo]:
        return real(group) + ([broken] if group == plugins.GROUP_ANALYZERS else [])

    monkeypatch.setattr(plugins, "discover", discover)
    loaded = Analyzers.load()
    names = [s.info.name for s in loaded.slots]
    assert "broken-head" not in names and {"tags", "levels", "similarity"} <= set(names)
    warned = [r.getMessage() for r in caplog.records if "broken-head" in r.getMessage()]
    assert len(warned) == 1 and "broken-dist 9.9" in warned[0] and "left out" in warned[0]
    with pytest.raises(EmberdError, match="broken-dist"):
        Analyzers.load(["broken-head"])


def test_hit_analyzer_and_osc_hit_datagram() -> None:
    """A hit analyser adds its field to hit.<c>; the built-in OSC sink turns the message
    into /emberd/hit with the top answer."""
    import socket

    from emberd.clients import osc_format as fmt
    from emberd.daemon.analyzers import Analyzers, AnalyzerSlot
    from emberd.daemon.hits import HitResult
    from emberd.daemon.outputs import Outputs, start_sinks

    class Accent:
        kind, stage = "hit", "hit"

        def analyze(self, header: dict[str, Any]) -> dict[str, Any]:
            return {"accent": header["peak_db"] > -10.0}

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    stats = DaemonStats(0.0058)
    runners = start_sinks([("osc", {"targets": "{}:{}".format(*rx.getsockname()),
                                    "start_time": "99.0"})], stats, lossless=True)  # fmt: skip
    slot = AnalyzerSlot(_Info.make("accent"), Accent(), "hit", "hit")
    outputs = Outputs(runners, Analyzers([slot]), stats)
    hit = HitResult(channel=1, hit=3, stage="final", onset_time=100.0, onset_s=1.0,
                    capture_time=100.25, window_ms=245.0, peak_db=-6.0, model="m",
                    matches=[{"path": "/lib/Snares/s.wav", "name": "s", "tags": ["Snares"],
                              "kind": "exact", "confidence": 0.8}])  # fmt: skip
    ((_, header, _),) = outputs.batch(hit).messages
    assert header["accent"] is True
    outputs.put(hit)
    dgram = fmt.decode(rx.recv(65536))
    outputs.close()
    runners[0].join(5)
    rx.close()
    assert dgram.address == fmt.ADDR_HIT
    assert dgram.args[3:6] == (1, 3, "final") and dgram.args[6] == 1000  # onset ms
    assert "exact" in dgram.args and "/lib/Snares/s.wav" in dgram.args
    assert runners[0].describe()["errors"] == 0


def test_watch_shows_outputs_and_what_it_lost() -> None:
    from rich.console import Console

    from emberd.clients.watch import WatchState, render

    state = WatchState(endpoint="tcp://127.0.0.1:5556", lost=3)
    state.status = {"outputs": {"zmq": {"dropped": 0, "errors": 0, "disabled": False},
                                "osc": {"dropped": 12, "errors": 0, "disabled": False}}}
    console = Console(record=True, width=160)
    console.print(render(state))
    text = console.export_text()
    assert "osc 12 dropped" in text and "zmq ok" in text and "this view lost 3" in text
