"""aiSFX conversion: torch-free checkpoint reading, BN folding, ONNX parity with numpy.

The reference below is a plain numpy transcription of aiSFX's
``EmbeddingNet('max', 3, 1, 64)`` (``aisfx/models/cnn2d.py``) using the
*unfolded* checkpoint tensors (conv -> BatchNorm(eval) -> ReLU), so it checks
the folding as well as the graph.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from emberd.errors import EmberdError
from emberd.models import aisfx
from emberd.models.manifest import load_manifest
from emberd.models.runtime import Encoder

TOL = 1e-4  # absolute, as the issue asks


def conv3x3(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Conv2d, kernel 3x3, stride 1, zero padding 1, no bias: im2col + einsum."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return np.einsum("bchwij,ocij->bohw", cols, w, optimize=True)


def reference_embedding(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """numpy EmbeddingNet: input [B, time, mel] -> [B, 512] (float64 inside)."""
    h = x[:, None].astype(np.float64)  # unsqueeze(1): [B, 1, time, mel]
    for block in range(1, 5):
        for conv in (1, 2):
            p = f"embedding_net.conv_block{block}"
            h = conv3x3(h, state[f"{p}.conv{conv}.weight"].astype(np.float64))
            g, b = state[f"{p}.bn{conv}.weight"], state[f"{p}.bn{conv}.bias"]
            m, v = state[f"{p}.bn{conv}.running_mean"], state[f"{p}.bn{conv}.running_var"]
            h = (h - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5) * g[:, None, None]
            h = np.maximum(h + b[:, None, None], 0.0)
        if block < 4:  # max_pool2d 2x2, floor mode; block 4 pools 1x1 (identity)
            bsz, ch, t, f = h.shape
            h = h[:, :, : t // 2 * 2, : f // 2 * 2]
            h = h.reshape(bsz, ch, t // 2, 2, f // 2, 2).max(axis=(3, 5))
    return h.mean(axis=3).max(axis=2)  # mean over mel, then max over time


@pytest.fixture(scope="module")
def state(aisfx_manifest_path: Path) -> dict[str, np.ndarray]:
    from emberd.paths import cache_dir

    sd, _ds = aisfx.load_checkpoint(cache_dir() / aisfx.WHEEL_NAME)
    return sd


@pytest.fixture(scope="module")
def encoder(aisfx_manifest_path: Path) -> Encoder:
    return Encoder(load_manifest(aisfx_manifest_path), device="cpu", threads=2)


def test_checkpoint_contents(aisfx_manifest_path: Path) -> None:
    from emberd.paths import cache_dir

    sd, ds = aisfx.load_checkpoint(cache_dir() / aisfx.WHEEL_NAME)
    assert sd["embedding_net.conv_block1.conv1.weight"].shape == (64, 1, 3, 3)
    assert sd["embedding_net.conv_block4.conv2.weight"].shape == (512, 512, 3, 3)
    assert sd["embedding_net.conv_block2.bn1.running_var"].dtype == np.float32
    assert sd["embedding_net.conv_block1.bn1.num_batches_tracked"].dtype == np.int64
    assert (sd["embedding_net.conv_block3.bn2.running_var"] > 0).all()
    # ds_dict: dataset -> (classifier head index, classes); nine heads fc.0 .. fc.8
    assert sorted(i for i, _ in ds.values()) == list(range(9))
    assert sd["fc.0.4.weight"].shape[0] == ds["prosfx"][1]


def test_onnx_matches_numpy_on_random_input(state: dict[str, np.ndarray], encoder: Encoder) -> None:
    x = np.random.default_rng(7).random((3, 100, 96), dtype=np.float32)
    got = encoder.embed(x)
    want = reference_embedding(state, x)
    assert got.shape == (3, 512) and got.dtype == np.float32
    assert np.abs(got - want).max() <= TOL
    assert np.abs(want).max() > 0.1  # a dead network would pass trivially


def test_onnx_matches_numpy_with_dynamic_frames(
    state: dict[str, np.ndarray], encoder: Encoder
) -> None:
    x = np.random.default_rng(8).random((1, 37, 96), dtype=np.float32)
    assert np.abs(encoder.embed(x) - reference_embedding(state, x)).max() <= TOL


def test_onnx_matches_numpy_on_real_drum(
    state: dict[str, np.ndarray], encoder: Encoder, drumkit_dir: Path
) -> None:
    import soundfile as sf
    import soxr

    from emberd.dsp.config import preset
    from emberd.dsp.frontend import melspectrogram

    path = drumkit_dir / "ForzeeStereo" / "CrashRide18-2.wav"  # 12 s crash/ride
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = soxr.resample(y.mean(axis=1), sr, 44100)
    mel = melspectrogram(y, preset("aisfx"))[:100]
    assert mel.shape[0] == 100 and mel.max() > 0.2  # a real, loud cymbal
    x = mel[None]
    got, want = encoder.embed(x), reference_embedding(state, x)
    assert np.abs(got - want).max() <= TOL


def test_batch_rows_are_independent(encoder: Encoder) -> None:
    x = np.random.default_rng(9).random((4, 100, 96), dtype=np.float32)
    batch = encoder.embed(x)
    single = np.concatenate([encoder.embed(x[i : i + 1]) for i in range(4)])
    assert np.abs(batch - single).max() <= 1e-5


def test_folding_matches_unfolded_on_first_layer(state: dict[str, np.ndarray]) -> None:
    w, b = aisfx.folded_weights(state)[0]
    x = np.random.default_rng(1).random((1, 1, 10, 12))
    p = "embedding_net.conv_block1"
    g, beta = state[f"{p}.bn1.weight"], state[f"{p}.bn1.bias"]
    m, v = state[f"{p}.bn1.running_mean"], state[f"{p}.bn1.running_var"]
    unfolded = conv3x3(x, state[f"{p}.conv1.weight"].astype(np.float64))
    unfolded = (unfolded - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5)
    unfolded = unfolded * g[:, None, None] + beta[:, None, None]
    folded = conv3x3(x, w.astype(np.float64)) + b[:, None, None]
    assert np.abs(folded - unfolded).max() <= 1e-4


# ----------------------------------------------------------- hostile checkpoints


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _torch_zip(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return path


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(({"w": _Evil(f"touch {marker}")}, {}), protocol=2)
    ckpt = _torch_zip(tmp_path / "checkpoint.pth", evil)
    with pytest.raises(EmberdError, match=r"refusing global (posix|os|nt)\.system"):
        aisfx.load_checkpoint(ckpt)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins_eval(tmp_path: Path) -> None:
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(EmberdError, match=r"refusing global builtins\.eval"):
        aisfx.load_checkpoint(_torch_zip(tmp_path / "c.pth", payload))


def test_restricted_unpickler_refuses_object_dtype(tmp_path: Path) -> None:
    payload = b"cnumpy\ndtype\n(S'O'\ntR."
    with pytest.raises(EmberdError, match="refusing numpy dtype"):
        aisfx.load_checkpoint(_torch_zip(tmp_path / "c.pth", payload))


def test_tensor_past_its_storage_is_refused(tmp_path: Path) -> None:
    # A float tensor of 10 elements claiming a 4-element storage.
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
        b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
        b"K\x00K\n\x85K\x01\x85\x89)tR}\x86."
    )
    path = tmp_path / "c.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    with pytest.raises(EmberdError, match="past its storage"):
        aisfx.load_checkpoint(path)


def test_strided_tensor_is_read_with_offset_and_stride(tmp_path: Path) -> None:
    # 2x2 tensor at offset 1 with strides (3, 1) over a 6-element storage.
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
        b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ"
        b"K\x01K\x02K\x02\x86K\x03K\x01\x86\x89)tR}\x86."
    )
    path = tmp_path / "c.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/data/0", np.arange(6, dtype=np.float32).tobytes())
    with zipfile.ZipFile(path) as zf:
        got = aisfx.RestrictedUnpickler(zf.read("archive/data.pkl"), zf, "archive/", "<").load()
    np.testing.assert_array_equal(got[0], [[1.0, 2.0], [4.0, 5.0]])


def test_not_a_zip_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(EmberdError, match="not a zip"):
        aisfx.load_checkpoint(bad)
    with pytest.raises(EmberdError, match="not found"):
        aisfx.load_checkpoint(tmp_path / "missing.pth")


def test_wrong_wheel_hash_is_one_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / aisfx.WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(aisfx.CHECKPOINT_MEMBER, b"")
    with pytest.raises(EmberdError, match=r"sha256 .* does not match"):
        aisfx.fetch_wheel(tmp_path)


def test_unpickler_handles_protocol2_numpy_scalars() -> None:
    # ds_dict values in the real checkpoint are numpy int64 scalars pickled this way.
    raw = pickle.dumps(({}, {"a": (np.int64(3), 5)}), protocol=2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", raw)
    with zipfile.ZipFile(buf) as zf:
        state, ds = aisfx.RestrictedUnpickler(raw, zf, "archive/", "<").load()
    assert state == {} and ds == {"a": (3, 5)}
