"""Manifests, the registry and bring-your-own models: one clear error per problem.

Registry tests point ``EMBERD_DATA_DIR`` at a per-test temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emberd.cli import main
from emberd.errors import ComponentMissing, EmberdError
from emberd.models import registry
from emberd.models.manifest import builtin_manifest_dict, load_manifest, parse_manifest
from emberd.models.runtime import Encoder


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBERD_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def mean_model(path: Path, *, frames: int | str = "frames", n_mels: int = 96) -> Path:
    """A tiny real ONNX encoder: mean over time of [B, frames, n_mels] -> [B, n_mels]."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)
    graph = helper.make_graph(
        [node],
        "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", frames, n_mels])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_mels])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def user_manifest(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "mean96",
        "version": "1",
        "file": "mean.onnx",
        "frontend": {"preset": "aisfx", "params": {}},
        "window_frames": 100,
        "hop_frames": 50,
        "input": {"name": "x", "shape": ["batch", "frames", 96]},
        "output": {"name": "y", "shape": ["batch", 96]},
        "dim": 96,
        "licence": "MIT",
        "source": "tests",
        "citation": "none",
    }
    data.update(overrides)
    return data


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_builtin_manifests_are_valid() -> None:
    for name in registry.BUILTINS:
        m = parse_manifest(builtin_manifest_dict(name), Path("/x"), where=name)
        assert m.frontend().n_mels == m.n_mels == 96
        assert m.frontend().sr == m.sample_rate == 44100
    aisfx = builtin_manifest_dict("aisfx")
    assert "Ma" in aisfx["citation"] and "Lerch" in aisfx["citation"]
    assert "CC-BY-4.0" in aisfx["licence"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": 0}, "dim: must be a positive integer"),
        ({"window_frames": "100"}, "window_frames: must be a positive integer"),
        ({"input": {"name": "x", "shape": ["batch", 96]}}, "input.shape must be"),
        ({"input": {"name": "x", "shape": ["batch", 50, 96]}}, "contradicts window_frames"),
        ({"output": {"name": "y", "shape": ["batch", 32]}}, "contradicts dim"),
        ({"frontend": {"preset": "nope"}}, "preset 'nope': unknown"),
        ({"frontend": {"preset": "aisfx", "params": {"n_mels": 64}}}, "64 bands"),
        ({"sample_rate": 22050}, "sample_rate=22050 contradicts"),
        ({"name": "../evil"}, "plain folder name"),
    ],
)
def test_malformed_manifest_fields(change: dict[str, Any], message: str) -> None:
    with pytest.raises(EmberdError, match=message.replace("(", r"\(")):
        parse_manifest(user_manifest(**change), Path("/x"), where="m.json")


def test_missing_fields_and_bad_json(tmp_path: Path) -> None:
    data = user_manifest()
    del data["licence"], data["dim"]
    with pytest.raises(EmberdError, match="missing field"):
        load_manifest(write_json(tmp_path / "m.json", data))
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(EmberdError, match="invalid JSON at line 1"):
        load_manifest(tmp_path / "bad.json")
    with pytest.raises(EmberdError, match="manifest not found"):
        load_manifest(tmp_path / "absent.json")


def test_import_runs_through_the_same_runtime(tmp_path: Path, data_dir: Path) -> None:
    onnx_path = mean_model(tmp_path / "mean.onnx")
    manifest_path = write_json(tmp_path / "m.json", user_manifest())
    assert main(["models", "import", str(onnx_path), "--manifest", str(manifest_path)]) == 0
    m = registry.resolve("mean96")
    assert m.path == (data_dir / "models" / "mean96" / "model.onnx").resolve()
    x = np.random.default_rng(0).random((2, 100, 96), dtype=np.float32)
    enc = Encoder(m, device="cpu", threads=1)
    np.testing.assert_allclose(enc.embed(x), x.mean(axis=1), atol=1e-6)
    assert "mean96" in [mm.name for mm in registry.list_models()]


def test_import_rejects_shape_contradiction(tmp_path: Path, data_dir: Path) -> None:
    fixed = mean_model(tmp_path / "fixed.onnx", frames=50)
    manifest_path = write_json(tmp_path / "m.json", user_manifest())
    with pytest.raises(EmberdError, match="graph takes 50 frames, manifest window_frames is 100"):
        registry.import_model(fixed, manifest_path)
    narrow = mean_model(tmp_path / "narrow.onnx", n_mels=64)
    with pytest.raises(EmberdError, match=r"contradicts manifest input\.shape"):
        registry.import_model(narrow, manifest_path)
    wrong_name = write_json(
        tmp_path / "m2.json", user_manifest(input={"name": "mel", "shape": ["b", "f", 96]})
    )
    with pytest.raises(EmberdError, match="graph's input is 'x'"):
        registry.import_model(mean_model(tmp_path / "ok.onnx"), wrong_name)
    assert not (data_dir / "models" / "mean96").exists()


def test_encoder_rejects_contradicting_manifest_directly(tmp_path: Path) -> None:
    mean_model(tmp_path / "mean.onnx", n_mels=64)
    m = parse_manifest(user_manifest(), tmp_path, where="m.json")
    with pytest.raises(EmberdError, match="axis 2: 64 != 96"):
        Encoder(m, device="cpu")


def test_missing_files_give_one_clear_error(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(EmberdError, match="ONNX file not found"):
        registry.import_model(tmp_path / "absent.onnx", tmp_path / "m.json")
    m = parse_manifest(user_manifest(), tmp_path, where="m.json")
    with pytest.raises(EmberdError, match="not found"):
        Encoder(m, device="cpu")
    (tmp_path / "mean.onnx").write_bytes(b"garbage")
    with pytest.raises(EmberdError, match="cannot load"):
        Encoder(m, device="cpu")
    with pytest.raises(EmberdError, match="unknown"):
        registry.resolve("no-such-model")


def test_import_refuses_builtin_names(tmp_path: Path, data_dir: Path) -> None:
    manifest_path = write_json(tmp_path / "m.json", user_manifest(name="aisfx"))
    with pytest.raises(EmberdError, match="reserved"):
        registry.import_model(mean_model(tmp_path / "mean.onnx"), manifest_path)


def test_unfetched_aisfx_and_loud_fallback(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ComponentMissing, match="emberd models fetch aisfx"):
        registry.resolve("aisfx")
    with caplog.at_level("WARNING"):
        m = registry.resolve_default(None, auto_fetch=False)
    assert m.name == "dsp-baseline" and m.path.is_file()
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "FALLING BACK" in warning[0]
    assert "emberd models fetch aisfx" in warning[0]


def test_cli_list_and_info_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"aisfx", "dsp-baseline"}
    assert main(["models", "info", "dsp-baseline", "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert Path(info["path"]).is_file() and info["provider"] == "CPUExecutionProvider"
    assert main(["models", "info", "aisfx", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ready"] is False and info["provider"] is None
    assert main(["models", "info", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_cli_info_fetched_aisfx(
    aisfx_manifest_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    shutil.copytree(aisfx_manifest_path.parent, data_dir / "models" / "aisfx")
    assert main(["models", "info", "aisfx", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ready"] is True and info["dim"] == 512
    assert info["path"] == str((data_dir / "models" / "aisfx" / "model.onnx").resolve())
    assert info["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")


def test_failed_fetch_falls_back_loudly(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An empty wheel cache and pip told to use no index: the download fails at once.
    monkeypatch.setenv("EMBERD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(ComponentMissing, match=r"pip download aisfx==0\.1\.2' failed"):
        registry.fetch("aisfx")
    with caplog.at_level("WARNING"):
        m = registry.resolve_default(None)
    assert m.name == "dsp-baseline"
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("FALLING BACK" in msg and "pip download" in msg for msg in messages)
    assert main(["models", "fetch", "aisfx"]) == 2
