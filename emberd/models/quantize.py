"""aiSFX in int8: ONNX Runtime static quantization (QDQ) with shipped calibration ranges.

The int8 variant ``aisfx-int8`` is built locally from the fetched fp32 aiSFX
graph, with no data at build time: the activation ranges were measured once
by ``bench/fit_int8.py`` on mel windows of the hydrogen-drumkits tuning kits
(half "A": the kits sorted by name, every other one from the first) and ship
as ``builtin/aisfx-int8.calibration.json`` (ONNX Runtime's calibration cache
format). Weights are quantized per output channel to int8, activations per
tensor to uint8 (u8s8, the combination ONNX Runtime's CPU kernels run fastest
with VNNI/AVX2), QDQ format so ORT fuses each ``DQ -> Conv -> Relu -> Q`` into
one integer convolution. Dynamic quantization (``ConvInteger``) was measured
slower than fp32 on this model and is not offered.

What int8 changes is measured, not assumed: ``bench/index_throughput.py``
prints its speed and ``bench/fit_int8.py`` the embedding cosine to fp32 on
held-out kits; the README has the figures and the identification delta.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from emberd.errors import ComponentMissing, EmberdError

CALIBRATION_RESOURCE = "aisfx-int8.calibration.json"  # in emberd/models/builtin/
CALIBRATION_METHOD = "MinMax"  # ORT CalibrationMethod name the shipped ranges were made with
CALIBRATION_BATCH = 16  # windows per calibration run
INT8_OPS = ["Conv", "Relu", "MaxPool"]  # the head's reductions stay float
FLOAT_CONVS = (0,)  # convs kept in float: the first sees the raw mel (1 channel, ~1 % of MACs)


def calibration_path() -> Path:
    """The shipped calibration cache (a file inside the installed package)."""
    ref = resources.files("emberd.models").joinpath("builtin", CALIBRATION_RESOURCE)
    return Path(str(ref))


def _quantization() -> Any:
    from emberd.models.onnxrt import onnxruntime

    onnxruntime()  # refuses a broken CPU+GPU double install first
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # pragma: no cover - part of every ORT wheel
        raise ComponentMissing(f"onnxruntime.quantization is missing ({exc})") from exc
    if "calibration_cache_path" not in inspect.signature(quantization.quantize_static).parameters:
        raise ComponentMissing(
            "int8 models need an ONNX Runtime that reads calibration caches; "
            "fix with: pip install -U 'emberd[cpu]'"
        )
    return quantization


class _Windows:
    """ORT calibration reader over ``[N, frames, n_mels]`` windows, in batches."""

    def __init__(self, input_name: str, windows: np.ndarray) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: np.ascontiguousarray(windows[i : i + CALIBRATION_BATCH])}
            for i in range(0, len(windows), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _quantize_model(
    model: Any, cache: Path, reader: _Windows | None, exclude: list[str]
) -> Any:
    """Run ORT's static QDQ quantizer on a ModelProto; return the quantized ModelProto."""
    import onnx

    q = _quantization()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer logs advice through the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="emberd-int8-") as tmp:
            out = Path(tmp) / "model.onnx"
            q.quantize_static(
                model,
                str(out),
                reader,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=INT8_OPS,
                nodes_to_exclude=exclude,
                per_channel=True,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHOD),
                calibration_cache_path=str(cache),
            )
            return onnx.load(str(out))
    finally:
        root.setLevel(level)


def quantize(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    cache: str | Path,
    windows: np.ndarray | None = None,
    input_name: str = "mel",
) -> None:
    """Write the int8 QDQ model of ``fp32_path`` to ``out_path``.

    Parameters
    ----------
    fp32_path, out_path : str or Path
        The float model and where its int8 version goes (written atomically).
    cache : str or Path
        Calibration cache: read when it exists, else computed from ``windows``
        and written there (what ``bench/fit_int8.py`` does).
    windows : numpy.ndarray, optional
        float32 ``[N, frames, n_mels]`` calibration windows.
    input_name : str
        The graph's input.

    Raises
    ------
    EmberdError
        If there is neither a cache nor calibration windows.
    """
    import onnx

    from emberd.atomic import atomic_write_bytes

    cache = Path(cache)
    if not cache.is_file() and windows is None:
        raise EmberdError(f"int8: calibration cache {cache} missing and no windows given")
    reader = None if windows is None else _Windows(input_name, windows)
    model = onnx.load(str(fp32_path))
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"  # exclusion goes by node name
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    exclude = [convs[i].name for i in FLOAT_CONVS if i < len(convs)]
    out = _quantize_model(model, cache, reader, exclude)
    atomic_write_bytes(Path(out_path), out.SerializeToString())


def quantize_layer(index: int, layer: Any, cache_dir: Path | None = None) -> Any:
    """One layer graph of :mod:`emberd.models.silence_skip`, quantized as in ``aisfx-int8``.

    The layer graphs keep the whole graph's tensor names, so the shipped
    calibration ranges apply unchanged; the convs in :data:`FLOAT_CONVS` stay
    float. With ``cache_dir``, the result is kept there under a hash of the
    layer and the ranges (quantizing all layers takes seconds; loading them, not).
    """
    import hashlib

    import onnx

    from emberd.atomic import atomic_write_bytes

    if index in FLOAT_CONVS:
        return layer
    ranges = calibration_path()
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(layer.SerializeToString() + ranges.read_bytes()).hexdigest()
        path = cache_dir / f"layer{index}-{digest[:16]}.onnx"
        if path.is_file():
            try:
                return onnx.load(str(path))
            except Exception:  # a damaged cache file is rebuilt below
                pass
    out = _quantize_model(layer, ranges, None, [])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, out.SerializeToString())
    return out


STAMP_FILE = "calibration.sha256"  # beside the int8 model: the ranges it was built with


def _ranges_digest() -> str:
    import hashlib

    return hashlib.sha256(calibration_path().read_bytes()).hexdigest()


def is_current(folder: Path) -> bool:
    """Whether ``folder/model.onnx`` was built with the calibration ranges shipped now."""
    stamp = folder / STAMP_FILE
    try:
        return (folder / "model.onnx").is_file() and stamp.read_text().strip() == _ranges_digest()
    except OSError:
        return False


def build_int8(fp32_path: str | Path, folder: Path) -> Path:
    """Build ``folder/model.onnx`` (int8) from the fp32 aiSFX graph and the shipped ranges."""
    from emberd.atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "model.onnx"
    quantize(fp32_path, out, cache=calibration_path())
    atomic_write_text(folder / STAMP_FILE, _ranges_digest() + "\n")
    return out
