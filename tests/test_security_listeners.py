"""What another web page, or a program speaking the wrong protocol, gets from emberd's listeners.

The panel answers its own page only: a WebSocket handshake or a fetch carrying a
foreign ``Origin`` (or ``Sec-Fetch-Site: cross-site``) gets 403 and nothing else;
tested with a plain websockets client and from headless Chromium running a page
served by a second HTTP server on another port (another origin). The daemon's
ZeroMQ sockets refuse legacy ZMTP 1.0 peers, the only ZeroMQ framing a stream of
HTTP bytes could ever be read as.
"""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from test_clients_panel import RunningPanel
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from emberd.clients.panel.guard import refusal
from emberd.clients.panel.libmap import LibraryMap, load_library_map
from emberd.testing import smalllib
from emberd.testing.harness import Daemon, wait_for

WAIT_S = 10.0  # anything on loopback arrives well within this
BROWSER_WAIT_S = 90.0  # chromium starts slowly on a busy 2-core machine
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smalllib.build_library(tmp_path_factory.mktemp("seclib"), per_folder=2)


@pytest.fixture(scope="module")
def daemon(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("secd")
    perf = smalllib.write_performance(base / "perf.wav", seconds=6.0)
    with Daemon(smalllib.daemon_args(library, perf), base / "daemon.log") as d:
        yield d


@pytest.fixture
def panel(daemon: Daemon, library: Path) -> Iterator[tuple[RunningPanel, LibraryMap]]:
    lib_map, _ = load_library_map(library)
    running = RunningPanel(daemon.pub, lib_map).start()
    yield running, lib_map
    running.close()


def _http(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_guard_rules() -> None:
    own = {"Host": "127.0.0.1:8765"}
    assert refusal(own, "/ws", "127.0.0.1") is None  # a program: no Origin
    assert refusal({**own, "Origin": "http://127.0.0.1:8765"}, "/ws", "127.0.0.1") is None
    for origin in (EVIL, "null", "http://127.0.0.1:8766", "https://127.0.0.1:8765",
                   "http://localhost:8765", "http://127.0.0.1:8765.evil.example"):
        assert refusal({**own, "Origin": origin}, "/ws", "127.0.0.1") == "foreign origin", origin
    assert refusal({"Host": "evil.example:8765"}, "/", "127.0.0.1") == "forbidden host"
    # Listening on the network: IP literals pass, a rebound name still does not.
    assert refusal({"Host": "192.0.2.7:8765"}, "/", "0.0.0.0") is None
    assert refusal({"Host": "evil.example:8765"}, "/", "0.0.0.0") == "forbidden host"
    cross = {**own, "Sec-Fetch-Site": "cross-site"}
    assert refusal({**cross, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "audio"},
                   "/audio/1", "127.0.0.1") == "cross-site request"
    link = {**cross, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert refusal(link, "/", "127.0.0.1") is None  # a link to the panel opens it
    assert refusal({**link, "Sec-Fetch-Dest": "iframe"}, "/", "127.0.0.1") is not None


def test_plain_client_with_a_foreign_origin_gets_nothing(
    panel: tuple[RunningPanel, LibraryMap],
) -> None:
    running, lib_map = panel
    port = running.server.port
    url = f"ws://127.0.0.1:{port}/ws"
    for origin in (EVIL, "null", f"http://127.0.0.1:{port + 1}"):
        with pytest.raises(InvalidStatus) as err:
            connect(url, origin=origin, open_timeout=WAIT_S)  # type: ignore[arg-type]
        assert err.value.response.status_code == 403, origin
        assert b"foreign origin" in err.value.response.body
    # The panel's own page, and a program without Origin, get the hello.
    for own in (f"http://127.0.0.1:{port}", None):
        with connect(url, origin=own, open_timeout=WAIT_S) as ws:  # type: ignore[arg-type]
            assert json.loads(ws.recv(timeout=WAIT_S))["kind"] == "hello"
    some_id = lib_map.points[0]["id"]
    assert _http(port, f"/audio/{some_id}", {"Origin": EVIL})[0] == 403
    assert _http(port, f"/audio/{some_id}", {"Sec-Fetch-Site": "cross-site",
                                               "Sec-Fetch-Mode": "no-cors"})[0] == 403
    assert _http(port, "/map.json", {"Sec-Fetch-Site": "same-site"})[0] == 403
    status, headers = _http(port, f"/audio/{some_id}", {})
    assert status == 200 and headers["Cross-Origin-Resource-Policy"] == "same-origin"
    assert running.server.refused == 3 + 3


def test_zeromq_sockets_refuse_legacy_zmtp_peers(daemon: Daemon) -> None:
    # ZMTP 1.0 framing of a REQ message: identity frame, empty delimiter, the request.
    # libzmq accepts such a peer unless the socket has a ZAP domain.
    body = json.dumps({"cmd": "pause"}).encode()
    for port in (daemon.control_port, daemon.pub_port):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as s:
            s.sendall(b"\x01\x00" + b"\x01\x01" + bytes([len(body) + 1, 0]) + body)
            received, closed = b"", False
            try:
                while chunk := s.recv(4096):
                    received += chunk
                closed = True
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                pass  # still connected: the peer was accepted
        assert closed, f"port {port} kept a ZMTP 1.0 peer connected"
        assert len(received) <= 10, received  # at most ZeroMQ's own greeting
    assert daemon.status()["paused"] is False


# ----------------------------------------------------------------------- headless Chromium
EVIL_PAGE = """<!doctype html><meta charset="utf-8"><title>another site</title><script>
const P = "127.0.0.1:%(panel)d", R = window.results = {};
function ws() { return new Promise(done => {
  const got = []; const w = new WebSocket("ws://" + P + "/ws");
  w.onopen = () => got.push("open"); w.onmessage = e => got.push(String(e.data).slice(0, 80));
  w.onclose = e => done({events: got, code: e.code});
  setTimeout(() => { try { w.close(); } catch (_) {} done({events: got, timeout: true}); }, 8000);
}); }
async function get(url, opts) {
  try { const r = await fetch(url, opts); let body = "";
        try { body = (await r.text()).slice(0, 80); } catch (_) {}
        return {type: r.type, status: r.status, body}; }
  catch (e) { return {error: String(e)}; }
}
function media(url) { return new Promise(done => {
  const a = new Audio(); a.onloadedmetadata = () => done("loaded"); a.onerror = () => done("error");
  a.src = url; setTimeout(() => done("timeout"), 8000); }); }
(async () => {
  R.ws = await ws();
  R.map = await get("http://" + P + "/map.json");
  R.mapNoCors = await get("http://" + P + "/map.json", {mode: "no-cors"});
  R.audio = await media("http://" + P + "/audio/%(id)d");
  R.control = await get("http://127.0.0.1:%(control)d/",
                        {method: "POST", mode: "no-cors", body: '{"cmd": "pause"}'});
  window.done = true;
})();
</script>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_page_on_another_origin_gets_nothing_in_chromium(
    panel: tuple[RunningPanel, LibraryMap], daemon: Daemon, tmp_path: Path,
) -> None:
    require(Path("/usr/bin/chromium").exists(), "chromium")
    require(Path("/usr/bin/chromedriver").exists(), "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    running, lib_map = panel
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(EVIL_PAGE % {
        "panel": running.server.port, "id": lib_map.points[0]["id"],
        "control": daemon.control_port})
    evil = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        WebDriverWait(driver, BROWSER_WAIT_S, poll_frequency=0.2).until(
            lambda d: d.execute_script("return window.done === true"))
        r = driver.execute_script("return window.results")
        # The panel's own page, in the same browser, still works (the test can see a success).
        driver.get(running.server.url())
        WebDriverWait(driver, BROWSER_WAIT_S, poll_frequency=0.2).until(
            lambda d: d.find_element("id", "conn").get_attribute("data-state") == "connected")
    finally:
        driver.quit()
        evil.shutdown()
        evil.server_close()
    assert r["ws"]["events"] == [], r["ws"]  # never opened, no hello, no live stream
    assert "error" in r["map"], r["map"]  # CORS: the page cannot read the map
    assert r["mapNoCors"].get("body", "") == "", r["mapNoCors"]  # opaque at best
    assert r["audio"] == "error", r["audio"]
    # Server side: the handshake, both map fetches and the audio load were refused.
    assert running.server.refused >= 4
    # The control port is ZeroMQ: the browser's HTTP bytes did nothing.
    wait_for(lambda: daemon.try_status() is not None, WAIT_S, what="daemon status")
    assert daemon.status()["paused"] is False


def test_set_model_takes_a_name_never_a_path(daemon: Daemon, tmp_path: Path) -> None:
    import shutil

    from emberd import models
    from emberd.paths import models_dir

    # A model folder anywhere on disk (another local user could leave one in /tmp).
    planted = tmp_path / "planted"
    shutil.copytree(models_dir() / smalllib.FAST_MODEL, planted)
    manifest = json.loads((Path(models.__file__).parent / "builtin" / "dsp-baseline.json")
                          .read_text())
    (planted / "manifest.json").write_text(json.dumps({**manifest, "name": "planted"}))
    for name in (str(planted), f"../../../../../../..{planted}"):
        reply = daemon.request("set_model", model=name)
        assert reply["ok"] is False and "model name" in reply["error"], reply
    assert daemon.request("set_model", model=smalllib.FAST_MODEL)["ok"] is True
