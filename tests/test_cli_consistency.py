"""The command line as a new user meets it: one spelling per flag, validated options with
precise messages, refusals that name what would work, honest exit statuses and output.

Library-backed tests index a small synthetic library with dsp-baseline (no download) and
run the real ``emberd`` command in a child process, as a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require

from emberd.cli import build_parser, main
from emberd.cliopts import MAX_K
from emberd.daemon.app import Daemon, DaemonConfig
from emberd.testing import smalllib

MODEL = smalllib.FAST_MODEL
RUN_TIMEOUT_S = 300  # a busy 2-core machine
PTY_RUN_S = 7.0  # real-time input length: longer than one status-line period (5 s)


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small library indexed with dsp-baseline only."""
    return smalllib.build_library(tmp_path_factory.mktemp("clilib"), per_folder=2)


def _emberd(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emberd", *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          **kw)  # type: ignore[call-overload]


def _sample(lib: Path, folder: str = "Kicks") -> Path:
    return sorted((lib.parent / "sounds" / folder).glob("*.wav"))[0]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand parser by its full name, e.g. ``models info``."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{parser.prog.removeprefix('emberd').strip()} {name}".strip()
                out[full] = sub
                out.update(_subparsers(sub))
    return out


# ------------------------------------------------------------------------------ item 1


def test_flags_mean_one_thing_everywhere() -> None:
    parser = build_parser()
    for cmd in ("run --library L", "demo", "watch", "panel"):
        for flag in ("--zmq", "--zmq-pub"):  # the old spelling stays an alias
            args = parser.parse_args([*cmd.split(), flag, "tcp://127.0.0.1:7001"])
            assert args.zmq == "tcp://127.0.0.1:7001", (cmd, flag)
    for cmd in ("run --library L", "demo", "models info aisfx", "embed a.wav --out x.npy"):
        for flag in ("--provider", "--device"):  # inference device: --provider, alias kept
            args = parser.parse_args([*cmd.split(), flag, "cpu"])
            assert args.provider == "cpu", (cmd, flag)
    # --control: the same default wherever it appears
    controls = {cmd: parser.parse_args(cmd.split()).control
                for cmd in ("run --library L", "demo", "watch", "panel")}  # fmt: skip
    assert len(set(controls.values())) == 1 and None not in controls.values(), controls
    # --threads: one wording; --k: one range
    subs = _subparsers(parser)
    threads = {name: next(a.help for a in sub._actions if "--threads" in a.option_strings)
               for name, sub in subs.items()
               if any("--threads" in a.option_strings for a in sub._actions)}  # fmt: skip
    assert {"run", "demo", "index", "embed"} <= set(threads) and len(set(threads.values())) == 1
    for cmd in ("run --library L", "query f.wav --library L"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*cmd.split(), "--k", str(MAX_K + 1)])
        assert exc.value.code == 2
        assert parser.parse_args([*cmd.split(), "--k", str(MAX_K)]).k == MAX_K


# ------------------------------------------------------------------------------ item 2


def test_every_option_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    assert "live audio embedding daemon" in (parser.description or "")
    missing = []
    for name, sub in _subparsers(parser).items():
        if not sub.description and not any(
            isinstance(a, argparse._SubParsersAction) for a in sub._actions
        ):
            missing.append(f"{name}: description")
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append(f"{name}: {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


@pytest.mark.parametrize(("option", "expect"), [
    (["--hop-ms", "0"], "--hop-ms: 0 must be a number above 0"),
    (["--hop-ms", "-5"], "--hop-ms: -5 must be a number above 0"),
    (["--hop-ms", "5"], "--hop-ms 5: shorter than one mel frame of dsp-baseline (23.22 ms)"),
    (["--hop-ms", "60000"], "--hop-ms 60000: longer than one dsp-baseline window"),
    (["--osc", "127.0.0.1:99999"], "port 99999 is out of range (1..65535)"),
    (["--osc", "127.0.0.1:0"], "port 0 is out of range (1..65535)"),
    (["--threads", "0"], "--threads: 0 is out of range"),
    (["--osc-proj", "100000"], "--osc-proj 100000: must be in 0.."),
])  # fmt: skip
def test_run_refuses_what_it_cannot_honour_with_a_precise_line(
    lib: Path, option: list[str], expect: str
) -> None:
    proc = _emberd("run", "--library", str(lib), "--model", MODEL, "--input",
                   str(_sample(lib)), "--pace", "fast", "--zmq", "tcp://127.0.0.1:0",
                   "--control", "none", *option)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], proc.stderr
    assert "expected HOST:PORT" not in proc.stderr


def test_run_honours_a_hop_in_whole_frames(lib: Path) -> None:
    cfg = DaemonConfig(library=lib, input=str(_sample(lib)), pace="fast", model=MODEL,
                       device="cpu", zmq_pub="none", control="none", hop_ms=50.0)  # fmt: skip
    with Daemon(cfg).start(start_input=False) as daemon:
        assert daemon.worker is not None
        assert daemon.worker.describe()["hop_ms"] == pytest.approx(2 * 1024 / 44100 * 1000, 1e-3)


# ------------------------------------------------------------------------------ item 3


def test_run_refuses_a_model_the_library_was_not_indexed_with(lib: Path) -> None:
    from emberd.models import registry

    aisfx = next(m for m in registry.list_models() if m.name == "aisfx")
    require(registry.available(aisfx), "the fetched aiSFX model (emberd models fetch aisfx)")
    proc = _emberd("run", "--library", str(lib), "--model", "aisfx", "--input",
                   str(_sample(lib)), "--pace", "fast", "--zmq", "none", "--control", "none")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "not indexed with model aisfx" in line and f"(has: {MODEL})" in line, line


# ------------------------------------------------------------------------------ item 4


def test_query_answers_good_files_reports_bad_ones_on_stderr_and_exits_1(
    lib: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    good = _sample(lib)
    for extra in ([], ["--json"]):
        proc = _emberd("query", str(bad), str(good), str(tmp_path / "missing.wav"),
                       "--library", str(lib), "--model", MODEL, "--k", "2", *extra)
        assert proc.returncode == 1, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 2 and str(bad) in err[0] and "missing.wav" in err[1], err
        assert "error" not in proc.stdout and str(bad) not in proc.stdout
        if extra:
            (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
            assert record["query"] == str(good) and record["matches"]
        else:
            assert proc.stdout.startswith(str(good)) and good.name in proc.stdout
    ok = _emberd("query", str(good), "--library", str(lib), "--model", MODEL)
    assert ok.returncode == 0 and not ok.stderr.strip(), ok.stderr
    assert "exit status" in _emberd("query", "--help").stdout


# ------------------------------------------------------------------------------ item 5


def test_run_prints_a_readable_start_block_and_the_summary(lib: Path) -> None:
    proc = _emberd("run", "--library", str(lib), "--model", MODEL, "--input", str(_sample(lib)),
                   "--pace", "fast", "--zmq", "tcp://127.0.0.1:0", "--control", "none")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "None" not in err, err
    assert re.search(r"emberd run: dsp-baseline \(windowed encoder\) on \w+, hop 23\.2 ms", err)
    assert "played once" in err and "control off" in err and "control in off" in err, err
    assert re.search(r"PUB tcp://127\.0\.0\.1:\d+", err), err
    m = re.search(r"emberd run: (\d+) hops in [\d.]+ s, latency p50", err)
    assert m and int(m.group(1)) > 0, err


def test_run_prints_a_status_line_every_few_seconds_on_a_terminal(
    lib: Path, tmp_path: Path
) -> None:
    perf = smalllib.write_performance(tmp_path / "perf.wav", seconds=PTY_RUN_S)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emberd", "run", "--library", str(lib), "--model", MODEL,
             "--input", str(perf), "--zmq", "none", "--control", "none"],
            stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
    finally:
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    status = re.findall(r"emberd: +[\d.]+ s \| hops \d+ \| latency p50 [\d.]+ / p99 [\d.]+ ms"
                        r" \|.*overflows \d+, dropped hops \d+", text)  # fmt: skip
    assert status, text
    assert "Ctrl-C stops" in text and re.search(r"emberd run: \d+ hops in", text), text


def test_one_line_usage_errors() -> None:
    proc = _emberd("run", "--library", "L", "--k", "zero")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("emberd run: error: argument --k: 'zero' is not a whole number")
    assert main([]) == 2  # no command: help, exit 2
