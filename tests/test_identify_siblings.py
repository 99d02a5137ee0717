"""The sibling tie-break (issue 13): velocity layers of one instrument told apart by their
whole sound when their onsets correlate nearly alike.

Two synthetic velocity layers of a tom share their first 245 ms (tone and body noise); the
hard layer adds a bright click to the attack and rings on, the soft one is damped from
245 ms. Played at 11 kHz (lo-fi), the hard layer loses its click, so the *soft* layer's
snippet correlates a little better with it (0.998 against 0.995): the waveform stage alone
names the wrong layer. Over the whole sound the hard layer matches (0.996 against 0.92).
The tests fail without the tie-break (margin 0), when the whole-sound comparison misaligns
(a cut attack must align at 1.0 with its own file), and when a changed file is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr

from emberd.library import Library
from emberd.library import query as query_mod
from emberd.library import waveform as wf
from emberd.library.indexer import Indexer
from emberd.testing import smalllib

SR = smalllib.SR
MODEL = smalllib.FAST_MODEL
LOFI_SR = 11025
DAMP_S = 0.245  # the soft layer is damped from here (its snippet ends at 0.25 s + 5 ms)
CLICK_GAIN = 0.6  # the hard layer's bright click (above 4 kHz)


def layers() -> tuple[np.ndarray, np.ndarray]:
    """(soft, hard): two velocity layers of one synthetic tom, 1.2 s each."""
    n = int(1.2 * SR)
    rng = np.random.default_rng(3)
    t = np.arange(n) / SR
    d = np.maximum(t - 0.01, 0.0)
    ring = np.exp(-d / 0.3) * (t >= 0.01)
    damped = ring * np.exp(-np.maximum(d - DAMP_S, 0.0) / 0.03)
    tone = np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 410 * t)
    noise = rng.standard_normal(n)
    body = soxr.resample(soxr.resample(noise, SR, 8000), 8000, SR)[:n]
    click = (noise - body) * np.exp(-d / 0.01) * (t >= 0.01)
    soft = (0.7 * tone + 0.3 * body) * damped
    hard = (0.7 * tone + 0.3 * body) * ring + CLICK_GAIN * click
    return (0.5 * soft / np.abs(soft).max()).astype(np.float32), (
        0.8 * hard / np.abs(hard).max()).astype(np.float32)


def lofi(y: np.ndarray) -> np.ndarray:
    """Played at 11.025 kHz: everything above 5.5 kHz gone."""
    return np.asarray(soxr.resample(soxr.resample(y, SR, LOFI_SR), LOFI_SR, SR)[: len(y)],
                      np.float32)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("siblings")
    sounds = root / "sounds"
    smalllib.write_sounds(sounds, per_folder=2)
    (sounds / "Toms").mkdir()
    soft, hard = layers()
    sf.write(sounds / "Toms" / "tom_soft.wav", soft, SR)
    sf.write(sounds / "Toms" / "tom_hard.wav", hard, SR)
    ix = Indexer(root / "lib", MODEL, jobs=0)
    try:
        assert ix.run([str(sounds)]).indexed == 10
    finally:
        ix.close()
    lib = Library.open(root / "lib")
    yield {"lib": lib, "soft": soft, "hard": hard, "sounds": sounds}
    lib.close()


def test_the_snippets_alone_name_the_wrong_layer(kit: dict[str, Any]) -> None:
    """The premise: within the shipped margin, the soft layer correlates best."""
    assert query_mod.SIBLING_RHO > 0  # the shipped fit has the tie-break on
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(query_mod, "SIBLING_RHO", 0.0)
        got = kit["lib"].identify(lofi(kit["hard"]), SR)
    assert got[0]["name"] == "tom_soft.wav" and got[0]["stage"] == "waveform"


def test_velocity_layers_are_told_apart_by_their_whole_sound(kit: dict[str, Any]) -> None:
    got = kit["lib"].identify(lofi(kit["hard"]), SR)
    assert got[0]["name"] == "tom_hard.wav" and got[0]["stage"] == "waveform"
    # The reported rho is the hard layer's own (a little under the soft layer's).
    assert got[0]["rho"] < 0.999
    soft = kit["lib"].identify(lofi(kit["soft"]), SR)  # the other way round stays right
    assert soft[0]["name"] == "tom_soft.wav"


def test_a_changed_file_is_not_read(kit: dict[str, Any], tmp_path: Path) -> None:
    """A sibling whose file changed since indexing is not compared (its snippet would not
    describe what is read): the answer stays the waveform stage's."""
    lib, path = kit["lib"], kit["sounds"] / "Toms" / "tom_hard.wav"
    st = path.stat()
    try:
        sf.write(path, np.zeros(SR, np.float32), SR)
        got = lib.identify(lofi(kit["hard"]), SR)
        assert got[0]["name"] == "tom_soft.wav"
    finally:
        sf.write(path, kit["hard"], SR)
        import os

        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lib.identify(lofi(kit["hard"]), SR)[0]["name"] == "tom_hard.wav"


def test_sound_rho_aligns_a_cut_attack_with_its_file() -> None:
    """The query starts 25 ms after the onset: aligned where the snippet says, the whole
    sound is the file itself (1.0); one block off, it is not."""
    soft, hard = layers()
    y = wf.mono_at(hard, SR, wf.WAVE_SR)
    on = wf.onset_sample(y)
    cut = int(0.025 * wf.WAVE_SR)
    q = y[on + cut :]
    tie = wf.Tie(1, 1.0, 0.0, 0.0, -cut - wf.PRE_ROLL_SAMPLES)
    whole, blocks = wf.sound_rho(q, tie, hard, SR)
    assert whole == pytest.approx(1.0, abs=1e-4) and blocks == pytest.approx(1.0, abs=1e-4)
    off = wf.Tie(1, 1.0, 0.0, 0.0, tie.align + 4 * wf.SOUND_BLOCK_LAG)
    assert wf.sound_rho(q, off, hard, SR)[0] < 0.9
    assert wf.sound_rho(q, tie, soft, SR)[0] < 0.95
