"""The panel server: library map, static files, audio by id only, WebSocket bridge from ZeroMQ."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_clients_lib import WAIT_S, Publisher, match_fields
from websockets.sync.client import connect

from emberd.clients.panel.libmap import LibraryMap, fit_map, load_library_map
from emberd.clients.panel.server import PanelServer
from emberd.errors import EmberdError

KIT = "ElectricEmpireKit"
FOLDERS = {"Kicks": "EE_Kick_", "Snares": "EE_Snare_", "Hats": "EE_Hat_"}
MODEL = "dsp-baseline"


def build_drum_library(drumkit_dir: Path, root: Path, lib: Path) -> Path:
    """A small real library: real drum samples in tag folders, indexed by ``emberd index``."""
    from emberd.testing import smalllib

    kit = drumkit_dir / KIT
    for folder, prefix in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        for src in sorted(kit.glob(prefix + "*.flac"))[:4]:
            shutil.copy(src, root / folder / src.name)
    done = smalllib.index([root], lib, model=MODEL)
    assert done.returncode == 0, done.stderr
    return lib


@pytest.fixture(scope="module")
def library(drumkit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("panel")
    return build_drum_library(drumkit_dir, base / "samples", base / "lib")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBERD_CACHE_DIR", str(tmp_path / "cache"))


def test_fit_map_projects_library_vectors_onto_their_points() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(20, 16)).astype(np.float32)
    m = fit_map("m", np.arange(20), vecs, [f"n{i}" for i in range(20)], [["T"]] * 20,
                [f"/p/{i}.wav" for i in range(20)])
    for i in (0, 7, 19):
        x, y = m.project(vecs[i] * 3.0)  # scale does not matter: vectors are normalised
        assert (x, y) == pytest.approx((m.points[i]["x"], m.points[i]["y"]), abs=1e-4)
    xs = np.array([[p["x"], p["y"]] for p in m.points])
    assert np.abs(xs).max(axis=0) == pytest.approx([1.0, 1.0])
    assert m.project(np.zeros(16)) == (0.0, 0.0)
    with pytest.raises(EmberdError, match="16"):
        m.project(np.ones(8))
    one = fit_map("m", np.arange(1), vecs[:1], ["a"], [[]], ["/a.wav"])
    assert one.project(vecs[0]) == (0.0, 0.0)


def test_library_map_is_cached_until_the_library_changes(library: Path) -> None:
    from emberd.library.store import Store

    m1, cached1 = load_library_map(library)
    m2, cached2 = load_library_map(library, MODEL)
    assert (cached1, cached2) == (False, True)
    assert m1.points == m2.points and len(m1.points) == 12
    assert {p["tags"][0] for p in m1.points} == set(FOLDERS)
    np.testing.assert_allclose(m1.axes, m2.axes)
    store = Store(library, create=False)
    try:
        with store.transaction():
            store.bump_generation()
    finally:
        store.close()
    _, cached3 = load_library_map(library)
    assert cached3 is False
    with pytest.raises(EmberdError, match="not indexed with model aisfx"):
        load_library_map(library, "aisfx")


def test_library_map_refuses_a_non_library(tmp_path: Path) -> None:
    with pytest.raises(EmberdError, match="no emberd library"):
        load_library_map(tmp_path / "nothing")


class RunningPanel:
    """A PanelServer on a free port in its own thread + event loop."""

    def __init__(self, zmq_endpoint: str, lib_map: LibraryMap | None) -> None:
        self.server = PanelServer(zmq_endpoint, lib_map, port=0, silence_s=30.0)
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop = self.loop.create_future()
        try:
            self.loop.run_until_complete(self.server.serve(self.stop))
        except BaseException as exc:  # surfaced by start()
            self.error = exc
            self.server.started.set()

    def start(self) -> RunningPanel:
        self.thread.start()
        assert self.server.started.wait(WAIT_S)
        if self.error:
            raise self.error
        return self

    def close(self) -> None:
        def _stop() -> None:
            if self.stop is not None and not self.stop.done():
                self.stop.set_result(None)
        self.loop.call_soon_threadsafe(_stop)
        self.thread.join(WAIT_S)

    def get(self, path: str, host: str | None = None) -> tuple[int, bytes, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.server.port}{path}")
        if host:
            req.add_header("Host", host)
        try:
            with urllib.request.urlopen(req, timeout=WAIT_S) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")


@pytest.fixture
def panel(library: Path) -> Iterator[tuple[RunningPanel, Publisher, LibraryMap]]:
    lib_map, _ = load_library_map(library)
    pub = Publisher()
    running = RunningPanel(pub.endpoint, lib_map).start()
    yield running, pub, lib_map
    running.close()
    pub.close()


def test_panel_serves_page_map_and_audio_by_id_only(
    panel: tuple[RunningPanel, Publisher, LibraryMap],
) -> None:
    running, _pub, _lib_map = panel
    status, body, ctype = running.get("/")
    assert status == 200 and b"<canvas id=\"map\"" in body and ctype.startswith("text/html")
    assert b"http" not in body.split(b"<body>")[0].replace(b"http-equiv", b"")  # no CDN
    assert running.get("/app.js")[0] == 200 and running.get("/style.css")[0] == 200
    status, body, _ = running.get("/map.json")
    pub_map = json.loads(body)
    assert status == 200 and len(pub_map["points"]) == 12 and b"/" not in body.split(b"points")[0]
    assert "path" not in pub_map["points"][0]
    some_id = pub_map["points"][0]["id"]
    status, wav, ctype = running.get(f"/audio/{some_id}")
    assert status == 200 and ctype == "audio/wav" and wav[:4] == b"RIFF" and len(wav) > 1000
    for bad in ("/audio/99999", "/audio/../../etc/passwd", "/audio/%2Fetc%2Fpasswd",
                "/etc/passwd", "/static/../server.py", "/audio/-1"):
        assert running.get(bad)[0] == 404, bad
    assert running.get("/", host="evil.example:80")[0] == 403  # DNS rebinding


def _recv_until(ws: Any, pred: Any, what: str) -> dict[str, Any]:
    for _ in range(200):
        msg = json.loads(ws.recv(timeout=WAIT_S))
        if pred(msg):
            return msg
    raise AssertionError(f"never got {what}")


def test_panel_bridges_zeromq_to_websocket(
    panel: tuple[RunningPanel, Publisher, LibraryMap],
) -> None:
    running, pub, lib_map = panel
    with connect(f"ws://127.0.0.1:{running.server.port}/ws") as ws:
        hello = json.loads(ws.recv(timeout=WAIT_S))
        assert hello["kind"] == "hello" and hello["model"] == MODEL
        pub.wait_subscribed(6)  # the bridge subscribes to six topics
        path = lib_map.paths[lib_map.points[3]["id"]]
        fields = match_fields(["x.wav"])
        fields["matches"][0].update(path=path, name=Path(path).name)
        pub.send("match", 0, **fields)
        m = _recv_until(ws, lambda x: x["kind"] == "match", "match")
        assert m["matches"][0]["id"] == lib_map.points[3]["id"]
        assert "path" not in m["matches"][0]  # the page gets ids, never paths
        vec = lib_map.mean + lib_map.axes[0] * 0.5 * lib_map.scale[0]  # a point right of centre
        pub.send("emb", 1, array=vec.astype(np.float32))
        c = _recv_until(ws, lambda x: x["kind"] == "cursor", "cursor")
        assert c["channel"] == 1 and c["x"] > 0.3
        pub.send("emb", 1, array=np.ones(7, np.float32))  # wrong model: dropped, not a crash
        pub.send("similarity", channels=[0, 1], array=np.eye(2, dtype=np.float32))
        s = _recv_until(ws, lambda x: x["kind"] == "similarity", "similarity")
        assert s["matrix"] == [[1.0, 0.0], [0.0, 1.0]]
    # A page that connects later first gets the latest state.
    with connect(f"ws://127.0.0.1:{running.server.port}/ws") as ws2:
        kinds = {json.loads(ws2.recv(timeout=WAIT_S))["kind"] for _ in range(5)}
        assert kinds == {"hello", "connection", "match", "cursor", "similarity"}


def test_panel_command_serves_and_refuses_bad_input(library: Path) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "emberd", "panel", "--port", "0", "--zmq", "tcp://127.0.0.1:9",
           "--library", str(library)]
    # A shell starts background jobs with SIGINT ignored, and children inherit that and the
    # signal mask: give the panel Ctrl-C's default so the SIGINT below works however the suite
    # was started.
    def ctrl_c_default() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy(), preexec_fn=ctrl_c_default)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        pattern = r"emberd panel: library map of 12 files \(dsp-baseline, (cached|computed)\)"
        assert re.match(pattern, first), first
        url = re.search(r"open (http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        assert url, "no URL printed"
        with urllib.request.urlopen(url.group(1) + "map.json", timeout=WAIT_S) as r:
            assert len(json.loads(r.read())["points"]) == 12
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(WAIT_S)
    for bad, message in ((["--library", str(library / "nope")], "no emberd library"),
                         (["--port", "70000"], "--port: 70000 is out of range (must be 0..65535)"),
                         (["--library", str(library), "--model", "aisfx"], "not indexed")):
        out = subprocess.run([sys.executable, "-m", "emberd", "panel", *bad],
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 2, out
        assert out.stderr.startswith(("emberd: error: ", "emberd panel: error: "))
        assert message in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
