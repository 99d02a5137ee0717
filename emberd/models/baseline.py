"""DSP baseline encoder: MFCC and band-contrast statistics, as an ONNX graph.

The fallback when aiSFX cannot be fetched. It reads the same input as aiSFX,
``[batch, frames, 96]`` frames of the ``aisfx`` front-end preset (log-compressed,
min-max scaled mel bands), so the daemon keeps one front end whichever encoder
runs, and it goes through the same ONNX Runtime path as every other model.

Per frame:

* 20 MFCCs: orthonormal DCT-II of the (already logarithmic) mel frame.
* 6 sub-bands of 16 mel bands each: contrast (peak - valley) and valley,
  the mel-domain analogue of librosa's spectral contrast.

Per window: mean and standard deviation over time of those 32 values -> 64-d.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emberd.errors import EmberdError
from emberd.models.onnxgraph import finish_model

N_MELS = 96
N_MFCC = 20
N_SUBBANDS = 6  # 96 mel bands / 6 = 16 bands (~ one octave-ish region) each
FEATURES_PER_FRAME = N_MFCC + 2 * N_SUBBANDS  # 32
DIM = 2 * FEATURES_PER_FRAME  # mean and std: 64
INPUT_NAME = "mel"
OUTPUT_NAME = "embedding"
OPSET = 17


def dct_matrix(*, n_mels: int = N_MELS, n_mfcc: int = N_MFCC) -> np.ndarray:
    """Orthonormal DCT-II basis as a ``[n_mels, n_mfcc]`` float32 matrix.

    ``frames @ dct_matrix()`` equals ``scipy.fft.dct(frames, type=2, norm="ortho")[..., :n_mfcc]``.
    """
    n = np.arange(n_mels)[:, None]
    k = np.arange(n_mfcc)[None, :]
    basis = np.cos(np.pi / n_mels * (n + 0.5) * k) * np.sqrt(2.0 / n_mels)
    basis[:, 0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def build_onnx(*, n_mels: int = N_MELS, opset: int = OPSET) -> Any:
    """Build the baseline encoder graph.

    Parameters
    ----------
    n_mels : int
        Bands per input frame; must be divisible by 6.
    opset : int
        ONNX opset, 13 to 17 (``axes`` as attributes).

    Returns
    -------
    onnx.ModelProto
        Input ``mel`` float32 ``[batch, frames, n_mels]``, output ``embedding``
        float32 ``[batch, 64]``.
    """
    from onnx import TensorProto, helper, numpy_helper

    if n_mels % N_SUBBANDS:
        raise EmberdError(f"dsp-baseline: n_mels={n_mels} is not divisible by {N_SUBBANDS}")
    if not 13 <= opset <= 17:
        raise EmberdError(f"dsp-baseline: opset {opset} unsupported (13..17)")
    per_band = n_mels // N_SUBBANDS
    inits = [
        numpy_helper.from_array(dct_matrix(n_mels=n_mels), "dct"),
        numpy_helper.from_array(np.array([0, 0, N_SUBBANDS, per_band], np.int64), "band_shape"),
    ]
    node = helper.make_node
    nodes = [
        node("MatMul", [INPUT_NAME, "dct"], ["mfcc"]),  # [B, T, 20]
        node("Reshape", [INPUT_NAME, "band_shape"], ["bands"]),  # [B, T, 6, 16]
        node("ReduceMax", ["bands"], ["peak"], axes=[3], keepdims=0),
        node("ReduceMin", ["bands"], ["valley"], axes=[3], keepdims=0),
        node("Sub", ["peak", "valley"], ["contrast"]),
        node("Concat", ["mfcc", "contrast", "valley"], ["feats"], axis=2),  # [B, T, 32]
        node("ReduceMean", ["feats"], ["mean_k"], axes=[1], keepdims=1),
        node("Sub", ["feats", "mean_k"], ["centred"]),
        node("Mul", ["centred", "centred"], ["sq"]),
        node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=0),
        node("Sqrt", ["var"], ["std"]),
        node("ReduceMean", ["feats"], ["mean"], axes=[1], keepdims=0),
        node("Concat", ["mean", "std"], [OUTPUT_NAME], axis=1),  # [B, 64]
    ]
    return finish_model(
        nodes,
        inits,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "frames", n_mels])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", DIM])],
        name="dsp_baseline",
        opset=opset,
        doc_string="emberd DSP baseline: MFCC + band contrast, mean/std over the window",
    )


def reference(x: np.ndarray) -> np.ndarray:
    """Numpy version of the graph, for tests and the benchmark.

    Parameters
    ----------
    x : numpy.ndarray
        ``[batch, frames, n_mels]`` frames.

    Returns
    -------
    numpy.ndarray
        ``[batch, 64]`` float32.
    """
    x = np.asarray(x, dtype=np.float64)
    batch, frames, n_mels = x.shape
    mfcc = x @ dct_matrix(n_mels=n_mels).astype(np.float64)
    bands = x.reshape(batch, frames, N_SUBBANDS, n_mels // N_SUBBANDS)
    peak, valley = bands.max(axis=3), bands.min(axis=3)
    feats = np.concatenate([mfcc, peak - valley, valley], axis=2)
    return np.concatenate([feats.mean(axis=1), feats.std(axis=1)], axis=1).astype(np.float32)
