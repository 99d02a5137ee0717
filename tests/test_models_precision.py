"""``--precision fp32|int8``: the switch between aiSFX and its int8 variant on index, query, run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.errors import EmberdError
from emberd.models.precision import model_for

KIT = "Audiophob"  # the smallest kit: 14 samples


def _emberd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emberd", *args], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_precision_maps_models_to_their_variant() -> None:
    assert model_for(None, None) is None  # no switch: the command's own default and fallback
    assert model_for(None, "fp32") is None  # the default already is fp32: keep its fallback
    assert model_for("aisfx", None) == "aisfx"
    assert model_for("aisfx", "fp32") == "aisfx"
    assert model_for("aisfx", "int8") == "aisfx-int8"
    assert model_for(None, "int8") == "aisfx-int8"
    assert model_for("aisfx-int8", "int8") == "aisfx-int8"
    assert model_for("aisfx-int8", "fp32") == "aisfx"
    assert model_for("dsp-baseline", "fp32") == "dsp-baseline"
    with pytest.raises(EmberdError, match=r"dsp-baseline has no int8 variant.*works with: aisfx"):
        model_for("dsp-baseline", "int8")
    with pytest.raises(EmberdError, match="choose from fp32, int8"):
        model_for("aisfx", "fp16")


def test_run_and_demo_take_the_int8_model() -> None:
    from emberd.cli import build_parser
    from emberd.daemon.cli import config_from_args

    parser = build_parser()
    args = parser.parse_args(["run", "--library", "lib", "--precision", "int8"])
    assert config_from_args(args).model == "aisfx-int8"
    args = parser.parse_args(["run", "--library", "lib"])
    assert config_from_args(args).model is None  # aiSFX with its loud fallback, as before
    args = parser.parse_args(["demo", "--precision", "fp32", "--model", "aisfx-int8"])
    assert config_from_args(args).model == "aisfx"


def test_bad_precision_is_one_line() -> None:
    bad = _emberd("query", "x.wav", "--library", "lib", "--precision", "int4")
    assert bad.returncode == 2 and "invalid choice: 'int4'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    none = _emberd("index", "d", "--library", "lib", "--model", "dsp-baseline",
                   "--precision", "int8")
    assert none.returncode == 2, none.stderr
    assert none.stderr.strip().splitlines() == [
        "emberd: error: model dsp-baseline has no int8 variant (--precision int8 works with: "
        "aisfx)"]


def test_index_and_query_with_int8(aisfx_manifest_path: Path, drumkit_dir: Path,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBERD_DATA_DIR", str(tmp_path / "data"))  # children inherit it
    shutil.copytree(aisfx_manifest_path.parent, tmp_path / "data" / "models" / "aisfx")
    kit = tmp_path / "Drums" / KIT
    shutil.copytree(drumkit_dir / KIT, kit)
    lib = tmp_path / "lib"
    first = _emberd("index", str(tmp_path / "Drums"), "--library", str(lib), "--jobs", "1",
                    "--precision", "int8")
    assert first.returncode == 0 and "indexed 14," in first.stdout, first.stderr[-2000:]
    info = json.loads(_emberd("library", "info", "--library", str(lib), "--json").stdout)
    assert set(info["models"]) == {"aisfx-int8"}  # int8 vectors only, no fp32 ones

    source = sorted(kit.glob("*.wav"))[0]
    y, sr = sf.read(source, dtype="float32", always_2d=True)
    noisy = 0.5 * y + 0.01 * np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    query = tmp_path / "query.wav"
    sf.write(query, noisy, sr)
    q = _emberd("query", str(query), "--library", str(lib), "--precision", "int8", "--json")
    assert q.returncode == 0, q.stderr[-2000:]
    best = json.loads(q.stdout)["matches"][0]
    assert best["path"] == str(source)
    # fp32 (the default) asks for aiSFX vectors, which this library does not have: one line.
    fp32 = _emberd("query", str(query), "--library", str(lib), "--precision", "fp32")
    assert fp32.returncode == 2
    assert "not indexed with model aisfx (has: aisfx-int8)" in fp32.stderr


def test_demo_takes_precision() -> None:
    """``demo --precision`` chooses the demo's model too (it used to be accepted and ignored:
    the demo ran the float model): a model without an int8 variant is refused at once."""
    run = _emberd("demo", "--model", "dsp-baseline", "--precision", "int8", "--duration", "1")
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [
        "emberd: error: model dsp-baseline has no int8 variant (--precision int8 works with: "
        "aisfx)"]
