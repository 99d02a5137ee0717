"""Live, the streaming encoder steps on its own thread: a hop never waits for a step.

The real aiSFX streaming encoder is held inside a step at a gate (an event the test
opens); meanwhile the worker's calls must return at once with the newest *finished*
embedding and say where its window ends. Released, the thread must give exactly what
stepping in one thread gives, and a queue of frames too long for it restarts on the
newest window as the one-thread encoder does when hops were skipped.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from test_daemon_e2e import aisfx_library  # noqa: F401 - a fixture

GATE_TIMEOUT_S = 60.0  # longest wait for the encoder thread to enter a step
ENCODER_THREAD = "emberd-encoder"
EMB_TOL = 1e-4  # max abs difference between the threaded and the one-thread embeddings


class GatedSteps:
    """The real :class:`StreamingEncoder`, each network call held until ``gate`` opens.

    Records the thread of every call. A call while the gate is shut from any thread but
    the encoder's is the bug under test (a hop would wait for the step): it fails at once.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.threads: list[str] = []

    def _hold(self) -> None:
        name = threading.current_thread().name
        self.threads.append(name)
        if name != ENCODER_THREAD and not self.gate.is_set():
            raise AssertionError(f"a step ran in {name}, the hop's thread, and would hold it")
        self.entered.set()
        self.gate.wait(GATE_TIMEOUT_S)

    def push(self, frames: np.ndarray) -> Any:
        self._hold()
        return self.real.push(frames)

    def restart(self, window: np.ndarray, end_frame: int) -> Any:
        self._hold()
        return self.real.restart(window, end_frame)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _engines(manifest_path: Path, drumkit_dir: Path) -> tuple[Any, Any]:
    from emberd.daemon.engine import build_engine
    from emberd.models.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    files = sorted(drumkit_dir.glob("*/*.wav"))[2:50:5]
    y = np.concatenate([sf.read(f, dtype="float32", always_2d=True)[0][:, 0] for f in files])
    sr = manifest.frontend().sr
    audio = np.stack([y[: 4 * sr], y[sr : 5 * sr]])  # 2 channels, 4 s
    engines = [build_engine(manifest, channels=2, device="cpu", hop_ms=None) for _ in range(2)]
    for eng in engines:
        for c in range(2):
            eng.fronts[c].push(audio[c])
    return engines[0], engines[1]


def test_hops_are_answered_while_a_step_runs_and_give_the_one_thread_embeddings(
    aisfx_manifest_path: Path, drumkit_dir: Path
) -> None:
    from emberd.daemon.engine import RESTART_STEPS, STREAMING_STEP_FRAMES, StreamingHopEncoder

    ref, live = _engines(aisfx_manifest_path, drumkit_dir)
    assert isinstance(ref.encoder, StreamingHopEncoder)
    assert isinstance(live.encoder, StreamingHopEncoder)
    total = ref.fronts[0].frames.total
    want: dict[int, np.ndarray] = {}  # newest embedding after each hop, one thread
    ends: dict[int, int | None] = {}
    for end in range(1, total + 1):
        emb = ref.encoder.embed_hop(ref.fronts, end)
        if emb is not None:
            want[end] = emb.copy()
            ends[end] = ref.encoder.embedding_end
    enc = live.encoder
    gated = GatedSteps(enc.streaming)
    enc.streaming = gated
    enc.start_background()
    try:
        first = 40
        for end in range(1, first + 1):  # on time: each hop's frames stepped before the next
            enc.embed_hop(live.fronts, end)
            enc.settle()
        got = enc.embed_hop(live.fronts, first)
        assert got is not None and np.abs(got - want[first]).max() <= EMB_TOL
        assert enc.embedding_end == ends[first]

        # Hold the next step; the hops after it must still be answered, with the old one.
        gated.gate.clear()
        gated.entered.clear()
        enc.embed_hop(live.fronts, first + 1)
        assert gated.entered.wait(GATE_TIMEOUT_S)
        held = first + 2 * STREAMING_STEP_FRAMES  # two more steps' frames arrive meanwhile
        for end in range(first + 2, held + 1):
            during = enc.embed_hop(live.fronts, end)
            assert during is got, end  # the newest finished embedding, not a new one
            assert enc.embedding_end == ends[first]
        gated.gate.set()
        enc.settle()
        # Newer steps have finished, but the end still belongs to the embedding last
        # returned: read apart, a hop could publish one window's vector with another's end.
        assert enc.embedding_end == ends[first]
        after = enc.embed_hop(live.fronts, held)
        assert after is not None and np.abs(after - want[held]).max() <= EMB_TOL
        assert enc.embedding_end == ends[held]
        assert enc.restarts == 0

        # Held while more than RESTART_STEPS steps of frames queue up: a restart on the
        # newest window replaces them, and gives what stepping gives.
        gated.gate.clear()
        gated.entered.clear()
        enc.embed_hop(live.fronts, held + 1)
        assert gated.entered.wait(GATE_TIMEOUT_S)
        late = held + 1 + (RESTART_STEPS + 1) * STREAMING_STEP_FRAMES
        for end in range(held + 2, late + 1):
            assert enc.embed_hop(live.fronts, end) is after
        assert enc.restarts == 1
        gated.gate.set()
        enc.settle()
        last = enc.embed_hop(live.fronts, late)
        assert last is not None and np.abs(last - want[late]).max() <= EMB_TOL
        assert enc.embedding_end == ends[late]
    finally:
        gated.gate.set()
        enc.stop_background()
    assert set(gated.threads) == {ENCODER_THREAD}, set(gated.threads)

    # Stopped, the steps run in the caller's thread again (the end-of-input flush).
    gated.threads.clear()
    final = enc.embed_hop(live.fronts, total)
    assert final is not None and np.abs(final - want[total]).max() <= EMB_TOL
    assert set(gated.threads) == {threading.current_thread().name}


class StepThreads:
    """The real :class:`StreamingEncoder`, recording which thread runs each network call."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.threads: list[str] = []

    def push(self, frames: np.ndarray) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.real.push(frames)

    def restart(self, window: np.ndarray, end_frame: int) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.real.restart(window, end_frame)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_live_worker_never_steps_itself_until_the_flush(
    aisfx_library: tuple[Path, list[Path]],  # noqa: F811 - the fixture imported above
) -> None:
    # A file played once in real time: live, every step on the encoder's thread; the
    # end-of-input flush stepped by the worker (in order, so the one-shot's window comes).
    from test_daemon_e2e import _config, _run_collect

    from emberd.clients import wire

    lib, files = aisfx_library
    played = files[0]
    wrapped: list[StepThreads] = []

    def wrap(daemon: Any) -> None:
        assert daemon.worker is not None
        enc = daemon.worker.engine.encoder
        wrapped.append(StepThreads(enc.streaming))
        enc.streaming = wrapped[0]

    msgs, status = _run_collect(_config(lib, played, model="aisfx", pace="realtime"),
                                before_input=wrap)
    steps = wrapped[0]
    assert status["encoder"] == "streaming"
    live = [i for i, name in enumerate(steps.threads) if name == ENCODER_THREAD]
    flush = [i for i, name in enumerate(steps.threads) if name == "emberd-worker"]
    assert live and flush and len(live) + len(flush) == len(steps.threads), set(steps.threads)
    assert max(live) < min(flush)  # the worker stepped only after the encoder thread stopped
    matches = [m for m in msgs if m.kind == wire.KIND_MATCH]
    hop_s = status["hop_ms"] / 1000.0
    assert matches
    for m in matches:  # an embedding never describes audio after its hop's
        assert m.header["window_end_s"] <= m.header["stream_s"] + hop_s + 1e-6, m.header
    tops = [Path(m.header["matches"][0]["path"]).name for m in matches if m.header["matches"]]
    assert played.name in tops


def test_a_failed_stepper_is_not_stepped_again_inline(aisfx_manifest_path: Path,
                                                     drumkit_dir: Path) -> None:
    """After the encoder thread failed (and was stopped: a model swap), the worker's own
    thread must not go on stepping the failed state: every call reports the failure."""
    import pytest

    from emberd.errors import EmberdError

    _, live = _engines(aisfx_manifest_path, drumkit_dir)
    enc = live.encoder
    assert enc.embed_hop(live.fronts, 120) is not None  # inline, no thread
    enc.error = RuntimeError("a step failed")
    with pytest.raises(EmberdError, match="a step failed"):
        enc.embed_hop(live.fronts, 136)
