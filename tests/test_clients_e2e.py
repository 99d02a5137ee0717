"""Every client against a real running daemon.

One ``emberd run`` (a small library built with ``emberd index`` and the fast
``dsp-baseline`` model, a two-channel performance file played in real time,
looping) sends OSC to four ports at once: Pure Data, sclang, liblo's oscdump
and our own :class:`OscReceiver` each listen on one. The typed ZeroMQ client,
the control client, ``emberd watch`` and the web panel (in headless Chromium)
use its ZeroMQ endpoints. Each test checks that what the client printed or
showed names real files of the library.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import require

from emberd.clients.control_client import ControlClient
from emberd.clients.messages import (
    ConnectionEvent,
    EmbMessage,
    MatchMessage,
    StatusMessage,
    TagMessage,
)
from emberd.clients.osc_client import OscReceiver
from emberd.clients.subscriber import Subscriber
from emberd.clients.watch import WatchState, render

MODEL = "dsp-baseline"
TAGS = {"Kicks", "Snares", "Hats", "Pads"}
PATCHES = Path(__file__).resolve().parents[1] / "emberd" / "clients" / "patches"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CLIENT_WAIT_S = 90.0  # sclang and chromium start slowly on a busy 2-core machine
NAME_RE = re.compile(r"(kick|snare|hat|pad)_\d{3}\.wav")


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Setup:
    daemon: Any
    library: Path
    names: set[str]
    osc_ports: dict[str, int]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("clients-e2e")
    with pytest.MonkeyPatch.context() as mp:  # the panel map cache, for this module only
        mp.setenv("EMBERD_CACHE_DIR", str(base / "cache"))
        yield from _setup(base)


def _setup(base: Path) -> Iterator[Setup]:
    from emberd.testing import smalllib
    from emberd.testing.harness import Daemon

    files = smalllib.write_sounds(base / "samples", per_folder=3)
    lib = base / "lib"
    done = smalllib.index([base / "samples"], lib)
    assert done.returncode == 0, done.stderr
    perf = smalllib.write_performance(base / "perf.wav", seconds=6.0, channels=2)
    ports = {name: _udp_port() for name in ("pd", "sclang", "oscdump", "typed")}
    args = ["--library", str(lib), "--input", str(perf), "--pace", "realtime", "--loop",
            "--model", MODEL, "--channels", "all", "--k", "5", "--threads", "1"]
    for port in ports.values():
        args += ["--osc", f"127.0.0.1:{port}"]
    daemon = Daemon(args, base / "daemon.log").start()
    try:
        yield Setup(daemon, lib, {p.name for p in files}, ports)
    finally:
        daemon.stop()


class Lines:
    """Collect a child process's output lines in a thread (never an unread pipe)."""

    def __init__(self, stream: IO[bytes], context: Callable[[], str]) -> None:
        self.context = context  # more to show on failure: the daemon's log tail
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait(self, pred: Callable[[str], bool], count: int, timeout: float) -> list[str]:
        """Return the first ``count`` lines that satisfy ``pred``; fail after ``timeout``."""
        hits: list[str] = []
        end = time.monotonic() + timeout
        while len(hits) < count:
            left = end - time.monotonic()
            if left <= 0:
                tail = "\n".join(self.seen[-30:])
                raise AssertionError(f"only {len(hits)}/{count} lines in {timeout} s:\n{tail}\n"
                                     f"--- daemon log ---\n{self.context()}")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.seen.append(line)
            if pred(line):
                hits.append(line)
        return hits


def _spawn(
    setup: Setup, cmd: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Lines]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                            start_new_session=True)
    assert proc.stdout is not None
    return proc, Lines(proc.stdout, setup.daemon.log_tail)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: sclang's helpers go too
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _assert_changes_only(top1: list[tuple[str, str, str]]) -> None:
    """Receivers print a channel's top-1 (rank 0) only when it changes, not every hop."""
    assert {rank for _ch, rank, _name in top1} == {"0"}, top1
    last: dict[str, str] = {}
    for channel, _rank, name in top1:
        assert last.get(channel) != name, f"channel {channel}: {name} printed twice in a row"
        last[channel] = name


def _names_in(lines: list[str]) -> set[str]:
    return {m.group(0) for line in lines for m in [NAME_RE.search(line)] if m}


# ----------------------------------------------------------------------- OSC peers
def test_pd_patch_prints_matches_and_tags_from_the_daemon(setup: Setup) -> None:
    pd = shutil.which("pd") or shutil.which("puredata")  # Debian: an alternatives link
    require(pd is not None, "puredata (pd)")
    assert pd is not None
    port = setup.osc_ports["pd"]
    proc, out = _spawn(setup, [pd, "-nogui", "-nosound", "-noprefs", "-stderr",
                        "-send", f"emberd-port {port}", str(PATCHES / "emberd.pd")])
    try:
        matches = out.wait(lambda s: s.startswith("emberd-match:"), 10, CLIENT_WAIT_S)
        tags = out.wait(lambda s: s.startswith("emberd-tags:"), 2, CLIENT_WAIT_S)
        status = out.wait(lambda s: s.startswith("emberd-status:"), 1, CLIENT_WAIT_S)
    finally:
        _stop(proc)
    # "emberd-match: seq capture_ms publish_ms channel rank score name path", printed only
    # when the channel's top-1 changes: rank 0, never the same name twice in a row.
    fields = matches[0].split()
    assert len(fields) == 9 and fields[4] in ("0", "1") and fields[5] == "0"
    assert 0.0 < float(fields[6]) <= 1.0001
    _assert_changes_only([(f.split()[4], f.split()[5], f.split()[7]) for f in matches])
    assert _names_in(matches) <= setup.names and len(_names_in(matches)) >= 2
    assert any(tag in line for line in tags for tag in TAGS)
    assert MODEL in status[0]


def test_sclang_prints_matches_and_tags_from_the_daemon(setup: Setup) -> None:
    sclang = shutil.which("sclang")
    require(sclang is not None, "supercollider-language (sclang)")
    assert sclang is not None
    port = setup.osc_ports["sclang"]
    # No display, and QtWebEngine refuses to start as root without this.
    env = {"QT_QPA_PLATFORM": "offscreen", "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    proc, out = _spawn(setup, [sclang, str(PATCHES / "emberd.scd"), str(port)], env)
    try:
        out.wait(lambda s: s.startswith(f"emberd: listening for OSC on port {port}"), 1,
                 CLIENT_WAIT_S)
        matches = out.wait(lambda s: s.startswith("emberd match ch "), 10, CLIENT_WAIT_S)
        tags = out.wait(lambda s: s.startswith("emberd tags ch "), 2, CLIENT_WAIT_S)
        status = out.wait(lambda s: s.startswith("emberd status "), 1, CLIENT_WAIT_S)
    finally:
        _stop(proc)
    assert re.match(r"emberd match ch [01] #0 [0-9.]+ ", matches[0])
    _assert_changes_only([(m.split()[3], m.split()[4].lstrip("#"), m.split()[6]) for m in matches])
    assert _names_in(matches) <= setup.names and len(_names_in(matches)) >= 2
    assert any(tag in line for line in tags for tag in TAGS)
    assert f"model {MODEL}" in status[0] and "provider " in status[0]


def test_oscdump_sees_the_documented_address_space(setup: Setup) -> None:
    oscdump = shutil.which("oscdump")
    require(oscdump is not None, "liblo-tools (oscdump)")
    assert oscdump is not None
    proc, out = _spawn(setup, [oscdump, "-L", str(setup.osc_ports["oscdump"])])
    try:
        matches = out.wait(lambda s: " /emberd/match " in f" {s} ", 10, CLIENT_WAIT_S)
        tags = out.wait(lambda s: " /emberd/tags " in f" {s} ", 2, CLIENT_WAIT_S)
        levels = out.wait(lambda s: " /emberd/level " in f" {s} ", 2, CLIENT_WAIT_S)
    finally:
        _stop(proc)
    # oscdump: "[timetag] /emberd/match iiiiifss 12 1000 1031 0 0 0.912 "kick_000.wav" "...""
    assert all(" iiiiifss " in line for line in matches), matches[:2]
    assert all(re.search(r" iiii(sf)*( |$)", line) for line in tags), tags[:2]
    assert all(" iiiiffi " in line for line in levels), levels[:2]
    assert _names_in(matches) <= setup.names and _names_in(matches)


def test_osc_receiver_decodes_the_daemon_into_typed_messages(setup: Setup) -> None:
    seen: dict[type, Any] = {}
    with OscReceiver(setup.osc_ports["typed"]) as rx:
        end = time.monotonic() + CLIENT_WAIT_S
        while time.monotonic() < end and not {MatchMessage, TagMessage, EmbMessage,
                                               StatusMessage} <= set(seen):
            item = rx.recv(timeout_s=1.0)
            if item is not None and not isinstance(item, ConnectionEvent):
                seen.setdefault(type(item), item)
    assert {MatchMessage, TagMessage, EmbMessage, StatusMessage} <= set(seen), seen.keys()
    m = seen[MatchMessage]
    assert m.matches and {x.name for x in m.matches} <= setup.names
    assert [x.rank for x in m.matches] == list(range(len(m.matches)))
    assert seen[EmbMessage].embedding.shape == (64,)  # dsp-baseline dim, reassembled
    assert seen[StatusMessage].status["model"] == MODEL


# ----------------------------------------------------------------------- ZeroMQ
def test_subscriber_and_control_client_against_the_daemon(setup: Setup) -> None:
    d = setup.daemon
    with ControlClient(d.control_endpoint, timeout=5.0) as ctl:
        status = ctl.status()["status"]
        assert status["model"] == MODEL and status["provider"]
        with Subscriber(d.pub, ["match", "tag", "status"]) as sub:
            got: dict[type, Any] = {}
            end = time.monotonic() + CLIENT_WAIT_S
            while time.monotonic() < end and len(got) < 3:
                item = sub.recv(timeout_s=1.0)
                if isinstance(item, (MatchMessage, StatusMessage)) or (
                    isinstance(item, TagMessage) and item.tags  # a silent hop votes no tags
                ):
                    got.setdefault(type(item), item)
            m = got[MatchMessage]
            assert len(m.matches) == 5 and {x.name for x in m.matches} <= setup.names
            assert all(Path(x.path).is_absolute() and x.tags for x in m.matches)
            assert set(got[TagMessage].tags[0].tag.split()) & TAGS
            ctl.set_k(2)

            def two() -> bool:
                item = sub.recv(timeout_s=1.0)
                return isinstance(item, MatchMessage) and len(item.matches) == 2
            assert any(two() for _ in range(200)), "set_k(2) never took effect"
            ctl.set_k(5)
        assert sub.malformed == 0
        # capture answers only after recording: longer than the per-try timeout of 5 s.
        captured = ctl.capture(6.0, channel=1)
        (result,) = captured["results"]
        assert result["channel"] == 1 and {m["name"] for m in result["matches"]} <= setup.names
        assert ctl.timeouts == 0


def test_watch_shows_the_daemon(setup: Setup) -> None:
    from rich.console import Console

    d = setup.daemon
    state = WatchState(endpoint=d.pub)
    with Subscriber(d.pub, ["match", "tag", "level", "status"]) as sub:
        end = time.monotonic() + CLIENT_WAIT_S
        while time.monotonic() < end and not (state.status and len(state.channels) == 2
                                              and all(v.tags for v in state.channels.values())):
            item = sub.recv(timeout_s=1.0)
            if item is not None:
                state.update(item)
    console = Console(record=True, width=120, color_system=None)
    console.print(render(state))
    text = console.export_text()
    assert "channel 0" in text and "channel 1" in text
    assert _names_in([text]) <= setup.names and _names_in([text])
    assert "live tags:" in text and MODEL in text
    assert re.search(r"hop p50 \d+\.\d ms", text)


def test_watch_command_against_the_daemon(setup: Setup) -> None:
    d = setup.daemon
    out = subprocess.run(
        [sys.executable, "-m", "emberd", "watch", "--zmq", d.pub, "--control",
         d.control_endpoint, "--duration", "4"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert out.returncode == 0, out.stderr
    assert "connected" in out.stdout and _names_in([out.stdout]) <= setup.names
    assert _names_in([out.stdout])


# ----------------------------------------------------------------------- web panel
def test_panel_in_headless_chromium(setup: Setup, tmp_path: Path) -> None:
    require(Path("/usr/bin/chromium").exists(), "chromium")
    require(Path("/usr/bin/chromedriver").exists(), "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_clients_panel import RunningPanel

    from emberd.clients.panel.libmap import load_library_map

    lib_map, _ = load_library_map(setup.library, MODEL)
    running = RunningPanel(setup.daemon.pub, lib_map).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1400,900",
                 "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(running.server.url())
        wait = WebDriverWait(driver, CLIENT_WAIT_S, poll_frequency=0.2)
        js = "return window.emberdState && window.emberdState.{}"
        wait.until(lambda d: (d.execute_script(js.format("map.points.length")) or 0) > 0)
        wait.until(lambda d: d.find_element(By.ID, "conn").get_attribute("data-state")
                   == "connected")
        wait.until(lambda d: (d.execute_script(js.format("matchMessages")) or 0) >= 4)
        first = driver.execute_script("return JSON.stringify(window.emberdState.cursors)")
        wait.until(lambda d: (d.execute_script(js.format("cursorMoves")) or 0) >= 5)
        wait.until(lambda d: d.execute_script(
            "return JSON.stringify(window.emberdState.cursors)") != first)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".channel")) == 2)
        # Read the DOM in one script: the rows update every animation frame.
        names = driver.execute_script(
            "return [...document.querySelectorAll('.match .n')].map(e => e.textContent)")
        assert names and _names_in(names) <= setup.names and _names_in(names)
        tags = driver.execute_script(
            "return [...document.querySelectorAll('.channel .tag')].map(e => e.textContent)")
        assert tags and any(t.split()[0] in TAGS for t in tags)
        # Status from the daemon, and levels moving.
        wait.until(lambda d: d.find_element(By.ID, "st-model").text == MODEL)
        assert driver.find_element(By.ID, "st-p50").text.endswith(" ms")
        # Clicking a match auditions it: the player loads /audio/<library id>.
        driver.find_element(By.CSS_SELECTOR, ".match").click()
        src = wait.until(lambda d: d.execute_script(
            "return document.getElementById('player').src"))
        assert re.search(r"/audio/\d+$", src)
        fetched = driver.execute_async_script(
            "const cb = arguments[arguments.length - 1];"
            "fetch(document.getElementById('player').src)"
            ".then(r => r.arrayBuffer().then(b => cb([r.status, b.byteLength])));")
        assert fetched[0] == 200 and fetched[1] > 1000
        wait.until(lambda d: d.execute_script(js.format("similarity")) is not None)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "panel.png"))
    finally:
        driver.quit()
        running.close()


# ----------------------------------------------------------------------- restart
def _replace_option(args: list[str], option: str, value: str | None) -> list[str]:
    """``args`` with ``option VALUE`` set to ``value`` (removed when None)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == option and i + 1 < len(args):
            skip = True
            continue
        out.append(arg)
    return out if value is None else [*out, option, value]


def test_subscriber_reports_a_daemon_restart(setup: Setup, tmp_path: Path) -> None:
    """Runs last: a second daemon on the same endpoints replaces the first."""
    from rich.console import Console

    from emberd.testing.harness import Daemon

    first = setup.daemon
    watch = WatchState(endpoint=first.pub)  # what `emberd watch` would show

    def screen() -> str:
        console = Console(record=True, width=120, color_system=None)
        console.print(render(watch))
        return console.export_text()

    with Subscriber(first.pub, ["match", "status"], silence_s=2.0) as sub:
        def wait_state(*states: str) -> ConnectionEvent:
            end = time.monotonic() + CLIENT_WAIT_S
            while time.monotonic() < end:
                item = sub.recv(timeout_s=1.0)
                if item is not None:
                    watch.update(item)
                if isinstance(item, ConnectionEvent) and item.state in states:
                    return item
            raise AssertionError(f"no {states} event")

        wait_state("connected")
        # The same PUB endpoint for the new process (the first one bound port 0).
        args = _replace_option(list(first.args), "--zmq", first.pub)
        args = _replace_option(args, "--control", "tcp://127.0.0.1:0")
        args = _replace_option(args, "--osc-in", None)
        first.stop()
        gone = wait_state("silent", "stopped")  # "stopped" if its final status got out
        assert f"daemon {gone.state}" in screen()
        second = Daemon(args, tmp_path / "daemon2.log", osc_in=False).start()
        try:
            event = wait_state("restarted")
            assert "daemon restarted" in event.detail
            assert sub.restarts == 1
            assert "daemon restarted (1×)" in screen()
        finally:
            second.stop()
