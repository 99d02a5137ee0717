"""The worker's hop schedule: every hop analysed with its own audio, late hops caught up.

A file played fast arrives faster than hops are analysed, so one drain of the ring can
hold several hops of audio: each hop must still report the level of its own audio (a
drain that merged them gave the first hop the sum and the rest digital silence). The
streaming encoder, far behind, jumps to the newest window instead of stepping through
every frame, and what it gives is what stepping gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_daemon_e2e import _config, _run_collect

from emberd.clients import wire
from emberd.testing import smalllib

SR = 22050
SEGMENT_S = 0.5  # alternating loud and quiet segments
LOUD_DB, QUIET_DB = -10.0, -40.0  # RMS, dBFS
LEVEL_TOL_DB = 1.5  # a hop of white noise measures within this of its segment's RMS


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hopslib")
    smalllib.write_sounds(root / "sounds", per_folder=2)
    proc = smalllib.index([root / "sounds"], root / "lib")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "lib"


def test_every_hop_reports_the_level_of_its_own_audio(library: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    segments = 8
    n = int(SEGMENT_S * SR)
    audio = np.concatenate([
        rng.standard_normal(n) * 10 ** ((LOUD_DB if k % 2 == 0 else QUIET_DB) / 20)
        for k in range(segments)
    ]).astype(np.float32)  # fmt: skip
    path = tmp_path / "steps.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    msgs, status = _run_collect(_config(library, path))
    levels = [m for m in msgs if m.kind == wire.KIND_LEVEL]
    assert status["skipped_hops"] == 0
    duration = segments * SEGMENT_S
    hop_s = status["hop_ms"] / 1000.0
    checked = 0
    for m in levels:
        start = float(m.header["stream_s"])  # the hop's newest audio: [start, start + hop_s)
        if start + hop_s > duration:
            continue  # the silence that pads the end of a file
        seg = int(start / SEGMENT_S)
        if seg != int((start + hop_s) / SEGMENT_S - 1e-9):
            continue  # straddles two segments
        want = LOUD_DB if seg % 2 == 0 else QUIET_DB
        got = m.header["rms_db"]
        assert abs(got - want) <= LEVEL_TOL_DB, (start, got, want)
        checked += 1
    assert checked >= 0.8 * duration / hop_s


def test_streaming_encoder_far_behind_jumps_to_the_same_embeddings(
    aisfx_manifest_path: Path, drumkit_dir: Path
) -> None:
    from emberd.daemon.engine import RESTART_STEPS, StreamingHopEncoder, build_engine
    from emberd.models.manifest import load_manifest

    manifest = load_manifest(aisfx_manifest_path)
    files = sorted(drumkit_dir.glob("*/*.wav"))[:40:4]
    y = np.concatenate([sf.read(f, dtype="float32", always_2d=True)[0][:, 0] for f in files])
    cfg = manifest.frontend()
    assert cfg.sr == 44100, "aiSFX runs at 44.1 kHz (the hydrogen files are read as is)"
    audio = np.stack([y[: 6 * cfg.sr], y[cfg.sr : 7 * cfg.sr]])  # 2 channels, 6 s
    on_time, behind = (build_engine(manifest, channels=2, device="cpu", hop_ms=None)
                       for _ in range(2))  # fmt: skip
    for eng in (on_time, behind):
        for c in range(2):
            eng.fronts[c].push(audio[c])
    total = on_time.fronts[0].frames.total
    late = 150  # the consumer behind wakes here: far more than RESTART_STEPS steps
    assert late > 8 * RESTART_STEPS
    got, want = {}, {}
    for end in range(1, total + 1):
        emb = on_time.encoder.embed_hop(on_time.fronts, end)
        if emb is not None:
            want[end] = emb.copy()
        if end >= late:
            got[end] = behind.encoder.embed_hop(behind.fronts, end).copy()
    assert isinstance(behind.encoder, StreamingHopEncoder)
    assert isinstance(on_time.encoder, StreamingHopEncoder)
    assert behind.encoder.restarts == 1
    assert on_time.encoder.restarts == 0
    for end, emb in got.items():
        assert np.abs(emb - want[end]).max() <= 1e-4, end


def test_windowed_at_the_streaming_cadence_equals_the_streaming_encoder(
    aisfx_manifest_path: Path, drumkit_dir: Path
) -> None:
    # What aisfx-int8 runs by default: a window every 8 frames on the streaming grid.
    # With the fp32 network it must give the streaming encoder's embeddings at every hop,
    # and the same object between grid points (the worker reuses its search then).
    from emberd.daemon.engine import (
        STREAMING_STEP_FRAMES,
        WindowedEncoder,
        build_engine,
        silence_frame,
    )
    from emberd.models.manifest import load_manifest
    from emberd.models.plugin import load_encoder

    manifest = load_manifest(aisfx_manifest_path)
    files = sorted(drumkit_dir.glob("*/*.wav"))[3:60:6]
    y = np.concatenate([sf.read(f, dtype="float32", always_2d=True)[0][:, 0] for f in files])
    sr = manifest.frontend().sr
    streaming = build_engine(manifest, channels=2, device="cpu", hop_ms=None)
    windowed = build_engine(manifest, channels=2, device="cpu", hop_ms=None, strategy="windowed")
    grid = WindowedEncoder(load_encoder(manifest, device="cpu", threads=2), 2,
                           silence_frame(manifest.frontend()), STREAMING_STEP_FRAMES)  # fmt: skip
    audio = np.stack([y[: 4 * sr], y[sr : 5 * sr]])
    for eng in (streaming, windowed):
        for c in range(2):
            eng.fronts[c].push(audio[c])
    total = streaming.fronts[0].frames.total
    previous, computed = None, 0
    for end in range(1, total + 1):
        want = streaming.encoder.embed_hop(streaming.fronts, end)
        got = grid.embed_hop(windowed.fronts, end)
        assert (want is None) == (got is None), end
        if got is None:
            continue
        assert np.abs(got - want).max() <= 1e-4, end
        computed += got is not previous
        previous = got
    assert computed == len(range(4, total + 1, STREAMING_STEP_FRAMES))

