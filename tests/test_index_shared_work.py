"""The indexer's shared per-file work (one resampling for the fingerprint stages, the cached
filterbank, one BLAS thread) stores exactly what each stage computes on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emberd.dsp import frontend as fe_mod
from emberd.dsp.sources import load_audio
from emberd.library import fingerprint, waveform
from emberd.library.indexer import _Job, prepare_file
from emberd.models.manifest import builtin_manifest_dict, parse_manifest


def _files(drumkit_dir: Path) -> list[Path]:
    wavs = sorted(drumkit_dir.glob("*/*.wav")) + sorted(drumkit_dir.glob("*/*.flac"))
    return wavs[::97][:4]  # short and long sounds from different kits


def test_prepared_file_equals_each_stage_alone(drumkit_dir: Path, tmp_path: Path) -> None:
    config = parse_manifest(builtin_manifest_dict("aisfx"), tmp_path, where="t").frontend()
    for path in _files(drumkit_dir):
        res = prepare_file(_Job(str(path), need_fingerprint=True), config)
        assert res["ok"], res
        y, _ = load_audio(path, sr=config.sr, mono=True)
        if len(y) < config.n_fft:
            y = np.pad(y, (0, config.n_fft - len(y)))
        hashes, times, _bands = fingerprint.landmarks(y, config.sr)  # resamples on its own
        got_hashes, got_times, got_template, got_snippet = res["fp"]
        np.testing.assert_array_equal(got_hashes, hashes)
        np.testing.assert_array_equal(got_times, times)
        np.testing.assert_array_equal(got_template, fingerprint.template(y, config.sr))
        alone = waveform.snippet(y, config.sr)
        assert got_snippet.scale == alone.scale and got_snippet.data == alone.data
        # The cached sparse filterbank gives the frames a freshly built one gives.
        fe_mod._sparse_config.cache_clear()
        np.testing.assert_array_equal(res["mel"], fe_mod.melspectrogram(y, config))
