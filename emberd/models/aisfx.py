"""aiSFX: fetch the wheel, read its torch checkpoint without torch, build the ONNX graph.

aiSFX is the encoder of Ma & Lerch, "Representation Learning for the Automatic
Indexing of Sound Effects Libraries", ISMIR 2022 (code MIT, pre-trained model
CC BY 4.0). Its weights ship inside the PyPI wheel ``aisfx==0.1.2`` as
``aisfx/models/checkpoint.pth``, a torch zip archive (``archive/data.pkl`` plus
one raw little-endian file per storage under ``archive/data/N``) whose pickle is
``(state_dict, ds_dict)``.

Layout, confirmed against the wheel's own source (``aisfx/models/cnn2d.py`` and
``aisfx/inference.py``):

* The model is ``CrossNet(EmbeddingNet('max', 3, 1, 64), ds_dict)``; only
  ``EmbeddingNet`` (``embedding_net.*`` keys) produces the embedding. The
  ``fc.N.*`` keys are the nine per-dataset classifier heads used in training
  and are ignored; ``ds_dict`` maps dataset name -> ``(head index, n_classes)``
  and is only used to build those heads.
* Input is ``[batch, time_frames, mel_bins]`` (``EMB_BLOCK_LENGTH = 100``
  frames, 96 bands); ``torch.unsqueeze(input, 1)`` makes it
  ``[B, 1, time, mel]``, so axis 2 is time and axis 3 is mel.
* Each ``ConvBlock``: conv3x3 (pad 1, no bias) -> BatchNorm2d -> ReLU, twice,
  then ``max_pool2d`` with kernel 2x2 (floor mode) on blocks 1-3 and kernel
  1x1 (identity) on block 4. Channels 64/128/256/512.
* Head: ``torch.mean(x, dim=3)`` (mel) then ``torch.max(x, dim=2)`` (time)
  -> ``[B, 512]``.
* The frames the network expects are the Essentia mel bands (htk mel,
  'warping' weighting, 'unit_sum' normalisation, power spectrum) compressed as
  ``log10(1e4 * x + 1)`` and min-max scaled with ``mn, mx = 0, 9.457798957824707``
  (``preprocessing.spectrogram_normalize(spec_norm='original')``): the
  ``aisfx`` front-end preset of :mod:`emberd.dsp.config`.
* BatchNorm eps is not stored in the checkpoint; it is PyTorch's default 1e-5.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from emberd.errors import ComponentMissing, EmberdError
from emberd.models.onnxgraph import finish_model

log = logging.getLogger(__name__)

ByteOrder = Literal["<", ">"]

AISFX_VERSION = "0.1.2"
WHEEL_NAME = f"aisfx-{AISFX_VERSION}-py2.py3-none-any.whl"
#: sha256 of the PyPI wheel, recorded when the converter was written.
WHEEL_SHA256 = "bfe219950715af179e9a1653e7117cc1852baef267cd6596c42cad74afe1d194"
CHECKPOINT_MEMBER = "aisfx/models/checkpoint.pth"
PIP_TIMEOUT_S = 600  # a 23 MB download on a slow link

BN_EPS = 1e-5  # PyTorch BatchNorm2d default; the checkpoint does not store it
CHANNELS = (64, 128, 256, 512)
POOLED_BLOCKS = (True, True, True, False)  # block 4 pools with a 1x1 kernel = identity
N_MELS = 96
WINDOW_FRAMES = 100  # EMB_BLOCK_LENGTH: 100 hops of 1024 samples = 2.32 s at 44.1 kHz
MIN_FRAMES = 8  # three 2x2 pools need at least 8 frames to leave one
DIM = 512

CITATION = (
    'Alison B. Ma and Alexander Lerch, "Representation Learning for the Automatic '
    'Indexing of Sound Effects Libraries", Proc. ISMIR 2022, pp. 866-875'
)
LICENCE = "model CC BY 4.0, code MIT (aiSFX by Alison B. Ma and Alexander Lerch)"

# --------------------------------------------------------------------------- fetch


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_wheel(path: Path, expected: str = WHEEL_SHA256) -> Path:
    """Check a wheel's sha256 against the recorded one.

    Raises
    ------
    EmberdError
        If the file is missing or its hash differs.
    """
    if not path.is_file():
        raise EmberdError(f"{path}: aiSFX wheel not found")
    actual = _sha256(path)
    if actual != expected:
        raise EmberdError(
            f"{path}: sha256 {actual} does not match the recorded aiSFX {AISFX_VERSION} "
            f"wheel ({expected}); delete it and run 'emberd models fetch aisfx' again"
        )
    return path


def fetch_wheel(cache_dir: Path) -> Path:
    """Download ``aisfx==0.1.2`` with pip into ``cache_dir`` and verify it.

    pip follows the user's own configuration (index, proxy, certificates); a
    wheel already in the cache is reused after its hash is checked.

    Parameters
    ----------
    cache_dir : Path
        Folder for the wheel; created if missing.

    Returns
    -------
    Path
        The verified wheel.

    Raises
    ------
    ComponentMissing
        If pip cannot download it (offline, no pip).
    EmberdError
        If the downloaded wheel's hash is wrong.
    """
    from emberd.locks import file_lock

    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache_dir / WHEEL_NAME
    # One download at a time per cache; pip writes into a private folder and the wheel
    # appears by rename, so no process ever reads a half-copied wheel.
    with file_lock(cache_dir / f".{WHEEL_NAME}.lock", "pip download aisfx"):
        if not wheel.is_file():
            with tempfile.TemporaryDirectory(prefix=".aisfx-download-", dir=cache_dir) as tmp:
                _pip_download(Path(tmp))
                os.replace(Path(tmp) / WHEEL_NAME, wheel)
    return verify_wheel(wheel)


def _pip_download(dest: Path) -> None:
    """``pip download`` the aiSFX wheel into ``dest`` (raises ComponentMissing on failure)."""
    wheel = dest / WHEEL_NAME
    cmd = [
        sys.executable, "-m", "pip", "download", f"aisfx=={AISFX_VERSION}",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--retries", "2",  # offline: fail in seconds, then fall back
        "-d", str(dest),
    ]  # fmt: skip
    log.info("downloading aiSFX %s: %s", AISFX_VERSION, " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ComponentMissing(f"aisfx: pip download failed: {exc}") from exc
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ComponentMissing(
            f"aisfx: 'pip download aisfx=={AISFX_VERSION}' failed ({last}); "
            "check your network or pip configuration"
        )


# ------------------------------------------------------------ torch-free checkpoint

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_SCALAR_DTYPES = frozenset("b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8".split())


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only carries the dtype."""

    name: str
    dtype: np.dtype[Any]


class _LazyStorage:
    """A storage record read from the zip on first use."""

    def __init__(self, archive: zipfile.ZipFile, member: str, dtype: np.dtype[Any], numel: int):
        self._archive, self._member, self.dtype, self.numel = archive, member, dtype, numel
        self._data: np.ndarray | None = None

    def array(self, byteorder: ByteOrder) -> np.ndarray:
        if self._data is None:
            try:
                raw = self._archive.read(self._member)
            except KeyError as exc:
                raise EmberdError(f"checkpoint: storage {self._member} missing") from exc
            dtype = self.dtype.newbyteorder(byteorder)
            if len(raw) < self.numel * dtype.itemsize:
                raise EmberdError(f"checkpoint: storage {self._member} is truncated")
            self._data = np.frombuffer(raw, dtype=dtype, count=self.numel).astype(
                self.dtype.newbyteorder("=")
            )
        return self._data


def _rebuild_tensor(
    storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...], byteorder: ByteOrder
) -> np.ndarray:
    if not isinstance(storage, _LazyStorage):
        raise EmberdError("checkpoint: tensor without a storage")
    flat = storage.array(byteorder)
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in (*size, *stride)) or offset < 0:
        raise EmberdError("checkpoint: malformed tensor geometry")
    # Bounds check before as_strided, which would otherwise read out of the buffer.
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True) if n > 0)
    if any(n == 0 for n in size):
        return np.zeros(size, dtype=flat.dtype)
    if last >= flat.size:
        raise EmberdError("checkpoint: tensor reaches past its storage")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(st * item for st in stride), writeable=False
    )
    return np.array(view, copy=True)


def _safe_dtype(name: str, align: bool = False, copy: bool = True) -> np.dtype[Any]:
    if str(name) not in _SCALAR_DTYPES:
        raise pickle.UnpicklingError(f"refusing numpy dtype {name!r}")
    return np.dtype(str(name))


def _safe_scalar(dtype: np.dtype[Any], raw: bytes) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.str[1:] not in _SCALAR_DTYPES:
        raise pickle.UnpicklingError("refusing numpy scalar of unknown dtype")
    return np.frombuffer(raw, dtype=dtype, count=1)[0].item()


def _safe_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch checkpoints that maps tensors to numpy and refuses anything else.

    Only these globals resolve: ``torch._utils._rebuild_tensor_v2`` and
    ``_rebuild_parameter``, the typed storage classes, ``collections.OrderedDict``,
    and the three numpy/codecs helpers protocol 2 uses for integer scalars
    (each restricted to plain numeric data). Any other global (``os.system``,
    ``builtins.eval``...) raises :class:`pickle.UnpicklingError`.
    """

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: ByteOrder):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, _LazyStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        byteorder = self._byteorder
        if module == "torch._utils" and name == "_rebuild_tensor_v2":

            def rebuild_v2(
                storage: Any, offset: int, size: Any, stride: Any, *_: Any
            ) -> np.ndarray:
                return _rebuild_tensor(storage, int(offset), size, stride, byteorder)

            return rebuild_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad=False, hooks=None: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _safe_scalar
        if module == "numpy" and name == "dtype":
            return _safe_dtype
        if module == "_codecs" and name == "encode":
            return _safe_encode
        raise pickle.UnpicklingError(f"checkpoint: refusing global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"checkpoint: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("checkpoint: storage of unknown type")
        key = str(key)
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            self._storages[key] = _LazyStorage(
                self._archive, member, storage_type.dtype, int(numel)
            )
        return self._storages[key]


def _open_checkpoint(path: Path) -> tuple[zipfile.ZipFile, zipfile.ZipFile | None]:
    """Open the checkpoint zip, from a wheel or a bare ``.pth``."""
    if not path.is_file():
        raise EmberdError(f"{path}: checkpoint not found")
    try:
        outer = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise EmberdError(f"{path}: not a zip archive (wheel or torch checkpoint)") from exc
    if CHECKPOINT_MEMBER in outer.namelist():
        inner = zipfile.ZipFile(io.BytesIO(outer.read(CHECKPOINT_MEMBER)))
        return inner, outer
    return outer, None


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read ``(state_dict, ds_dict)`` from the aiSFX wheel or its ``checkpoint.pth``.

    No torch: the zip is opened with :mod:`zipfile` and ``data.pkl`` is read by
    :class:`RestrictedUnpickler`.

    Parameters
    ----------
    path : str or Path
        The wheel (``aisfx-0.1.2-...whl``) or a bare ``checkpoint.pth``.

    Returns
    -------
    state_dict : dict of str to numpy.ndarray
        Every tensor of the checkpoint, in its dtype.
    ds_dict : dict
        Dataset name -> ``(head index, number of classes)`` as plain ints.

    Raises
    ------
    EmberdError
        Missing file, not a torch zip, or a pickle that asks for anything
        beyond tensors (e.g. ``os.system``).
    """
    archive, outer = _open_checkpoint(Path(path))
    try:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise EmberdError(f"{path}: not a torch zip checkpoint (no single data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder: ByteOrder = "<"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = "<" if archive.read(f"{prefix}byteorder").strip() == b"little" else ">"
        unpickler = RestrictedUnpickler(archive.read(pkl[0]), archive, prefix, byteorder)
        try:
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise EmberdError(f"{path}: unsafe or malformed checkpoint: {exc}") from exc
    finally:
        archive.close()
        if outer is not None:
            outer.close()
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], dict)):
        raise EmberdError(f"{path}: expected (state_dict, ds_dict) in the checkpoint")
    state = {str(k): v for k, v in obj[0].items() if isinstance(v, np.ndarray)}
    ds = {str(k): tuple(int(x) for x in v) for k, v in dict(obj[1]).items()}
    return state, ds


# ------------------------------------------------------------------------ folding

Folded = list[tuple[np.ndarray, np.ndarray]]


def folded_weights(state_dict: dict[str, np.ndarray], *, eps: float = BN_EPS) -> Folded:
    """Fold each eval-mode BatchNorm into the convolution before it.

    ``bn(conv(x)) = g * (W*x - m) / sqrt(v + eps) + beta``
    ``= (W * s) * x + (beta - m * s)`` with ``s = g / sqrt(v + eps)``.

    Parameters
    ----------
    state_dict : dict
        From :func:`load_checkpoint`.
    eps : float
        BatchNorm epsilon.

    Returns
    -------
    list of (W, b)
        Eight pairs in network order: ``W`` float32 ``[out, in, 3, 3]``,
        ``b`` float32 ``[out]``.
    """
    folded: Folded = []
    in_ch = 1
    for block, out_ch in enumerate(CHANNELS, start=1):
        for conv in (1, 2):
            base = f"embedding_net.conv_block{block}"
            try:
                w = state_dict[f"{base}.conv{conv}.weight"].astype(np.float64)
                gamma = state_dict[f"{base}.bn{conv}.weight"].astype(np.float64)
                beta = state_dict[f"{base}.bn{conv}.bias"].astype(np.float64)
                mean = state_dict[f"{base}.bn{conv}.running_mean"].astype(np.float64)
                var = state_dict[f"{base}.bn{conv}.running_var"].astype(np.float64)
            except KeyError as exc:
                raise EmberdError(f"checkpoint: missing tensor {exc.args[0]}") from exc
            if w.shape != (out_ch, in_ch, 3, 3) or gamma.shape != (out_ch,):
                raise EmberdError(
                    f"checkpoint: {base}.conv{conv} has shape {w.shape}, "
                    f"expected {(out_ch, in_ch, 3, 3)}"
                )
            scale = gamma / np.sqrt(var + eps)
            folded.append(
                (
                    (w * scale[:, None, None, None]).astype(np.float32),
                    (beta - mean * scale).astype(np.float32),
                )
            )
            in_ch = out_ch
    return folded


# ---------------------------------------------------------------------- ONNX graph

INPUT_NAME = "mel"
OUTPUT_NAME = "embedding"
OPSET = 17


def build_onnx(folded: Folded, *, name: str = "aisfx", opset: int = OPSET) -> Any:
    """Build the aiSFX ``EmbeddingNet`` as an ONNX graph from folded weights.

    Parameters
    ----------
    folded : list of (W, b)
        From :func:`folded_weights`.
    name : str
        Graph name.
    opset : int
        ONNX opset (>= 17; ReduceMean/ReduceMax take ``axes`` as an attribute
        up to 17 and as an input from 18).

    Returns
    -------
    onnx.ModelProto
        Input ``mel`` float32 ``[batch, frames, 96]`` (both dynamic; frames >= 8),
        output ``embedding`` float32 ``[batch, 512]``.
    """
    from onnx import TensorProto, helper, numpy_helper

    if len(folded) != 2 * len(CHANNELS):
        raise EmberdError(f"aisfx: expected {2 * len(CHANNELS)} folded convolutions")
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(arr: np.ndarray, tag: str) -> str:
        inits.append(numpy_helper.from_array(arr, tag))
        return tag

    x = "x0"
    axis1 = const(np.array([1], np.int64), "axis1")
    nodes.append(helper.make_node("Unsqueeze", [INPUT_NAME, axis1], [x]))  # [B, 1, T, M]
    for i, (w, b) in enumerate(folded):
        block, conv = divmod(i, 2)
        tag = f"b{block + 1}c{conv + 1}"
        y = f"{tag}_conv"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(w, f"{tag}_W"), const(b, f"{tag}_B")],
                [y],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
            )
        )
        x = f"{tag}_relu"
        nodes.append(helper.make_node("Relu", [y], [x]))
        if conv == 1 and POOLED_BLOCKS[block]:
            pooled = f"b{block + 1}_pool"
            nodes.append(
                helper.make_node("MaxPool", [x], [pooled], kernel_shape=[2, 2], strides=[2, 2])
            )
            x = pooled

    def reduce(op: str, src: str, dst: str, axis: int) -> None:
        # Opset 18 moved ``axes`` from an attribute to an input.
        if opset >= 18:
            axes = const(np.array([axis], np.int64), f"{dst}_axes")
            nodes.append(helper.make_node(op, [src, axes], [dst], keepdims=0))
        else:
            nodes.append(helper.make_node(op, [src], [dst], axes=[axis], keepdims=0))

    reduce("ReduceMean", x, "mean_mel", 3)  # [B, 512, T', M'] -> [B, 512, T']
    reduce("ReduceMax", "mean_mel", OUTPUT_NAME, 2)  # -> [B, 512]
    return finish_model(
        nodes,
        inits,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "frames", N_MELS])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", DIM])],
        name=name,
        opset=opset,
        doc_string=f"aiSFX EmbeddingNet, BatchNorm folded. {CITATION}. Licence: {LICENCE}.",
    )


def manifest_dict(onnx_file: str = "model.onnx") -> dict[str, Any]:
    """The aiSFX manifest (same content as the built-in ``builtin/aisfx.json``)."""
    from emberd.models.manifest import builtin_manifest_dict

    data = builtin_manifest_dict("aisfx")
    data["file"] = onnx_file
    return data


def fetch(models_root: Path, cache_dir: Path) -> Path:
    """Fetch, verify, convert: write ``models_root/aisfx/model.onnx`` and its manifest.

    Both files are written atomically, the ONNX first so a manifest never
    points at a missing or torn model.

    Returns
    -------
    Path
        The written manifest.
    """
    from emberd.atomic import atomic_write_bytes, atomic_write_text

    wheel = fetch_wheel(cache_dir)
    state, _ds = load_checkpoint(wheel)
    model = build_onnx(folded_weights(state))
    folder = models_root / "aisfx"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "model.onnx", model.SerializeToString())
    manifest = folder / "manifest.json"
    atomic_write_text(manifest, json.dumps(manifest_dict(), indent=2) + "\n")
    log.info("aiSFX written to %s (%s)", folder, CITATION)
    return manifest
