"""The mix-down view in Pure Data, SuperCollider and the web panel, from a real running daemon.

One ``emberd run`` (a small library indexed with the fast model, so it has a class
head; three stems played in real time, looping: kicks, a synthetic bass built to
cover the kicks' band, and silence) sends OSC to a Pd port and an sclang port, and
ZeroMQ to the panel in headless Chromium.  Pd and sclang must print classes,
loudness and masking lines; the panel must show classes, meters, "no signal" for
the silent stem, a masking heat map that is hot (canvas pixels) where the bass
masks the kick, its scale and suggestions, the class-coloured map with its legend
beside (not over) the data, search, zoom, the sample view and the DownloadURL drag.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import require

PATCHES = Path(__file__).resolve().parents[1] / "emberd" / "clients" / "patches"
CLIENT_WAIT_S = 90.0  # sclang starts slowly on a busy 2-core machine
CLASSES = {"kick", "snare", "closed_hat", "pad", "none"}


Running = tuple[Any, dict[str, int], Path]  # the daemon, its OSC ports, its library


def _stems(path: Path, seconds: float = 6.0) -> Path:
    """kick (ch 0), bass covering the kick's band (ch 1), silence (ch 2)."""
    import numpy as np
    import soundfile as sf

    from emberd.testing import smalllib, synthstems

    n = int(seconds * smalllib.SR)
    out = np.zeros((n, 3), np.float32)
    kick = smalllib._sound("Kicks", 2, np.random.default_rng(0))
    for start in range(0, n - kick.size, smalllib.SR // 2):
        out[start : start + kick.size, 0] += 0.5 * kick
    out[:, 1] = 0.9 * synthstems.stem("bass", 3, seconds=seconds)[:n]
    sf.write(path, out, smalllib.SR, subtype="PCM_16")
    return path


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    from emberd.testing import smalllib
    from emberd.testing.harness import Daemon

    base = tmp_path_factory.mktemp("mixdown-clients")
    smalllib.write_sounds(base / "samples", per_folder=3)
    lib = base / "lib"
    done = smalllib.index([base / "samples"], lib)
    assert done.returncode == 0, done.stderr
    perf = _stems(base / "stems.wav")
    ports = {"pd": _udp_port(), "sclang": _udp_port()}
    args = [*smalllib.daemon_args(lib, perf), "--channels", "all", "--threads", "1"]
    for port in ports.values():
        args += ["--osc", f"127.0.0.1:{port}"]
    d = Daemon(args, base / "daemon.log").start()
    try:
        yield d, ports, lib
    finally:
        d.stop()


def _lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def read(stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            q.put(raw.decode("utf-8", "replace").rstrip("\n"))

    assert proc.stdout is not None
    threading.Thread(target=read, args=(proc.stdout,), daemon=True).start()
    return q


def _collect(cmd: list[str], env: dict[str, str], want: dict[str, int]) -> dict[str, list[str]]:
    """Run ``cmd`` until it printed ``want[prefix]`` lines for every prefix."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env={**os.environ, **env},
                            start_new_session=True)  # fmt: skip
    got: dict[str, list[str]] = {p: [] for p in want}
    seen: list[str] = []
    q = _lines(proc)
    end = time.monotonic() + CLIENT_WAIT_S
    try:
        while any(len(got[p]) < n for p, n in want.items()):
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("not enough lines:\n" + "\n".join(seen[-30:]))
            try:
                line = q.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            seen.append(line)
            for p in want:
                if line.startswith(p):
                    got[p].append(line)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return got


def test_pd_patch_prints_class_loudness_and_masking(daemon: Running) -> None:
    pd = shutil.which("pd") or shutil.which("puredata")
    require(pd is not None, "puredata (pd)")
    assert pd is not None
    got = _collect([pd, "-nogui", "-nosound", "-noprefs", "-stderr", "-send",
                    f"emberd-port {daemon[1]['pd']}", str(PATCHES / "mixdown.pd")], {},
                   {"emberd-class:": 6, "emberd-loudness:": 6, "emberd-masking:": 2})  # fmt: skip
    # "emberd-class: seq capture_ms publish_ms channel class confidence signal"
    fields = got["emberd-class:"][0].split()
    assert len(fields) == 8 and fields[4] in "012" and fields[5] in CLASSES
    loud = got["emberd-loudness:"][0].split()
    assert len(loud) > 11 and -121.0 <= float(loud[5]) <= 0.0  # momentary LUFS


def test_sclang_prints_class_loudness_and_masking(daemon: Running) -> None:
    sclang = shutil.which("sclang")
    require(sclang is not None, "supercollider-language (sclang)")
    assert sclang is not None
    env = {"QT_QPA_PLATFORM": "offscreen", "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    got = _collect([sclang, str(PATCHES / "mixdown.scd"), str(daemon[1]["sclang"])], env,
                   {"emberd class ch ": 6, "emberd loudness ch ": 6, "emberd masking ": 2})
    assert all(re.match(r"emberd class ch [012] (kick|snare|closed_hat|pad|none) [0-9.]+$", s)
               for s in got["emberd class ch "]), got["emberd class ch "][:3]  # fmt: skip
    assert re.match(r"emberd loudness ch [012] M -?[0-9.]+ S ", got["emberd loudness ch "][0])


def test_panel_mixdown_view_in_headless_chromium(
    daemon: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(Path("/usr/bin/chromium").exists(), "chromium")
    require(Path("/usr/bin/chromedriver").exists(), "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_clients_panel import RunningPanel

    from emberd.clients.panel.libmap import load_library_map

    monkeypatch.setenv("EMBERD_CACHE_DIR", str(tmp_path / "cache"))
    d, _ports, lib = daemon
    lib_map, _ = load_library_map(lib, "dsp-baseline")
    assert {p["cls"] for p in lib_map.points} == {"kick", "snare", "closed_hat", "pad"}
    running = RunningPanel(d.pub, lib_map).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(running.server.url())
        wait = WebDriverWait(driver, CLIENT_WAIT_S, poll_frequency=0.2)
        js = driver.execute_script
        # --- per-channel class, meter, no-signal state
        wait.until(lambda _: len(driver.find_elements(By.CSS_SELECTOR, ".mix-ch")) == 3)
        wait.until(lambda _: js("const c = window.emberdState.mix.channels;"
                                "return c[0] && c[1] && c[0].signal && c[1].signal "
                                "&& c[0].cls !== null"))  # fmt: skip
        silent = driver.find_element(By.CSS_SELECTOR, '.mix-ch[data-ch="2"]')
        assert "nosignal" in silent.get_attribute("class") and "no signal" in silent.text
        live = driver.find_element(By.CSS_SELECTOR, '.mix-ch[data-ch="0"]')
        assert "LUFS" in live.text and "dBTP" in live.text
        width = js("return document.querySelector('.mix-ch[data-ch=\"0\"] .meter > span')"
                   ".style.width")  # fmt: skip
        assert float(width.rstrip("%")) > 0
        bars = js("const cv = document.querySelector('.mix-ch[data-ch=\"1\"] .balance');"
                  "const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;"
                  "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;")
        assert bars > 50  # the bass's 1/3-octave balance is drawn
        # --- masking heat map: hot pixels where the bass masks the kick, dark elsewhere
        wait.until(lambda _: js("return window.emberdState.mix.maskCells.some("
                                "c => c.masker === 1 && c.maskee === 0 && c.value >= 0.9)"))
        pixel = (
            "const cv = document.getElementById('mask'), cells = window.emberdState.mix.maskCells;"
            "const c = cells.find(arguments[0]);"
            "return c ? [...cv.getContext('2d').getImageData(c.x, c.y, 1, 1).data] : null;"
        )
        hot = js(pixel.replace("arguments[0]", "c => c.masker === 1 && c.maskee === 0 "
                                               "&& c.value >= 0.9"))  # fmt: skip
        cold = js(pixel.replace("arguments[0]", "c => c.value === 0"))
        grey = js(pixel.replace("arguments[0]", "c => c.value === null"))  # silent maskee
        assert hot[0] > 200 and hot[2] < 80, hot
        assert cold[0] < 60 and cold[2] > cold[0], cold
        assert grey[:3] == [43, 47, 55], grey  # the "maskee never played" grey, not a colour
        scale = js("const cv = document.getElementById('mask-scale');"
                   "const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;"
                   "let lit = 0; for (let i = 3; i < d.length; i += 4) lit += d[i] > 0;"
                   "return lit;")  # fmt: skip
        assert scale > 1000
        tips = driver.find_element(By.ID, "suggestions").text
        assert "masks ch 0" in tips or "masks kick (ch 0)" in tips, tips
        # --- similarity: the silent channel is shown as silent, never as 1.00
        wait.until(lambda _: js("const s = window.emberdState.similarity;"
                                "return s && s.matrix.length === 3 && s.matrix[2][2] === null"))
        # --- library map: class colours, legend beside the data, search, zoom
        wait.until(lambda _: len(driver.find_elements(By.CSS_SELECTOR, ".legend-item")) == 4)
        legend = driver.find_element(By.ID, "map-legend").rect
        canvas = driver.find_element(By.ID, "map").rect
        assert legend["y"] >= canvas["y"] + canvas["height"] - 1  # below the map, not on it
        drawn = js("const cv = document.getElementById('map');"
                   "const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;"
                   "let n = 0;"
                   "for (let i = 0; i < d.length; i += 4) n += d[i] > 200 && d[i + 1] < 120;"
                   "return n;")  # fmt: skip
        assert drawn > 20  # the kicks' red dots are on the map
        artifacts = Path(__file__).resolve().parents[1] / "artifacts"
        artifacts.mkdir(exist_ok=True)
        driver.save_screenshot(str(artifacts / "panel-mixdown.png"))
        kick_id = js("return window.emberdState.map.points.find(p => p.cls === 'kick').id")
        search = driver.find_element(By.ID, "map-search")
        search.send_keys("snare")
        assert js("return window.emberdState.view.matches") == 3
        js("document.getElementById('map').dispatchEvent(new WheelEvent('wheel', "
           "{deltaY: -100, clientX: 300, clientY: 300, bubbles: true, cancelable: true}))")
        assert js("return window.emberdState.view.zoom") > 1
        # --- sample view: waveform, duration, find similar, drag out
        js("window.emberdMix.select(arguments[0])", kick_id)
        wait.until(lambda _: js("return window.emberdState.mix.waveformDrawn") == kick_id)
        assert driver.find_element(By.ID, "sample-dur").text.endswith(" s")
        assert driver.find_element(By.ID, "sample-cls").text.startswith("kick")
        driver.find_element(By.ID, "sample-similar").click()
        wait.until(lambda _: len(driver.find_elements(By.CSS_SELECTOR, "#similar li[data-id]")) > 0)
        sims = js("return window.emberdState.mix.similar")
        assert kick_id not in [m["id"] for m in sims]
        drag = js("const dt = new DataTransfer();"
                  "document.getElementById('sample-drag').dispatchEvent("
                  "new DragEvent('dragstart', {dataTransfer: dt, bubbles: true}));"
                  "return dt.getData('DownloadURL');")  # fmt: skip
        assert drag.startswith("audio/wav:kick_") and drag.endswith(f"/audio/{kick_id}"), drag
    finally:
        driver.quit()
        running.close()
