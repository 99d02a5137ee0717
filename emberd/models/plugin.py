"""Encoders through the ``emberd.encoders`` entry-point group, the built-ins included.

Contract (``docs/plugins.md``): ``factory(options: dict[str, str]) -> encoder`` where the
encoder has

* ``manifest``: a dict with ``dim``, ``frontend`` (a preset name of
  :mod:`emberd.dsp.config`, or ``{"preset": ..., "params": {...}}``), ``window_frames``
  and ``hop_frames`` (mel frames), and optionally ``version``, ``description``,
  ``licence``, ``source``, ``citation``, ``min_frames``;
* ``embed(mel)``: float32 ``[batch, frames, n_mels]`` -> float32 ``[batch, dim]``.

``options`` carries ``device`` (``auto``/``cpu``/``cuda``) and ``threads``. emberd's own
``aisfx`` and ``dsp-baseline`` are entry points of this group (their factories build the
ONNX Runtime :class:`~emberd.models.runtime.Encoder`); models imported with ``emberd
models import`` are data (an ``.onnx`` file and a manifest), not code, and run on ONNX
Runtime directly. Whatever a third-party encoder returns is checked by
:class:`CheckedEncoder` (shape, dtype, finite) before it can reach a library.
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any

import numpy as np

from emberd import plugins
from emberd.errors import EmberdError
from emberd.models.manifest import ModelManifest

_INSTANCES: dict[str, Any] = {}  # third-party encoders, constructed once per process
_LOCK = threading.Lock()  # the daemon's control thread and worker may both resolve a name


def aisfx(options: dict[str, str]) -> Any:
    """Entry point ``emberd.encoders: aisfx`` (ONNX Runtime; fetched on demand)."""
    return _builtin("aisfx", options)


def aisfx_int8(options: dict[str, str]) -> Any:
    """Entry point ``emberd.encoders: aisfx-int8`` (quantized from aisfx on first use)."""
    return _builtin("aisfx-int8", options)


def dsp_baseline(options: dict[str, str]) -> Any:
    """Entry point ``emberd.encoders: dsp-baseline`` (ONNX Runtime; generated on first use)."""
    return _builtin("dsp-baseline", options)


def _builtin(name: str, options: dict[str, str]) -> Any:
    from emberd.models.registry import resolve
    from emberd.models.runtime import Encoder

    skip = options.get("skip_silence", "")  # "1"/"0"; unset: the manifest decides
    return Encoder(resolve(name), device=options.get("device", "auto"),
                   threads=int(options.get("threads", "2")),
                   warmup=options.get("warmup", "1") != "0",
                   skip_silence=None if skip == "" else skip == "1")  # fmt: skip


def _instance(info: plugins.PluginInfo) -> Any:
    with _LOCK:
        if info.name not in _INSTANCES:
            obj = plugins.construct(info, {"device": "auto", "threads": "2"})
            if not callable(getattr(obj, "embed", None)) or not isinstance(
                getattr(obj, "manifest", None), dict
            ):
                raise EmberdError(f"plug-in {info.group} {info.label}: needs a manifest dict "
                                  "and embed()")  # fmt: skip
            _INSTANCES[info.name] = obj
        return _INSTANCES[info.name]


def _positive(info: plugins.PluginInfo, data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EmberdError(f"plug-in {info.group} {info.label}: manifest {key!r} must be an "
                          f"integer >= 1, not {value!r}")  # fmt: skip
    return value


def plugin_manifest(name: str) -> ModelManifest | None:
    """The manifest of the third-party encoder plug-in ``name``, or None if there is none.

    Raises
    ------
    EmberdError
        The plug-in is installed but does not import, construct or describe itself.
    """
    info = plugins.find(plugins.GROUP_ENCODERS, name)
    if info is None or info.builtin:
        return None
    obj = _instance(info)
    data = dict(obj.manifest)
    front = data.get("frontend", "")
    preset, params = (front, {}) if isinstance(front, str) else (
        front.get("preset", ""), dict(front.get("params", {})))  # fmt: skip
    from emberd.dsp.config import preset as make_preset

    try:
        n_mels = int(make_preset(preset, **params).n_mels)
    except EmberdError as exc:
        raise EmberdError(f"plug-in {info.group} {info.label}: manifest frontend: {exc}") from exc
    dim = _positive(info, data, "dim")
    window = _positive(info, data, "window_frames")
    extra = {"min_frames": _positive(info, data, "min_frames")} if "min_frames" in data else {}
    return ModelManifest(
        name=name, version=str(data.get("version", info.version)),
        description=str(data.get("description", f"encoder plug-in from {info.dist}")),
        file="", frontend_preset=preset, frontend_params=params, window_frames=window,
        hop_frames=_positive(info, data, "hop_frames"), input_name="mel",
        input_shape=("batch", "frames", n_mels), output_name="embedding",
        output_shape=("batch", dim), dim=dim, licence=str(data.get("licence", "see package")),
        source=str(data.get("source", f"{info.dist} {info.version}")),
        citation=str(data.get("citation", "")), path=Path(inspect.getfile(type(obj))),
        origin="plugin", extra={**extra, "dist": info.dist},
    )  # fmt: skip


class CheckedEncoder:
    """A third-party encoder behind the checks a library relies on.

    Input: float32 ``[batch, frames, n_mels]``, finite. Output: a float32 numpy array of
    shape ``[batch, dim]``, every value finite -- anything else is an
    :class:`~emberd.errors.EmberdError` naming the package, never a stored vector.
    """

    def __init__(self, encoder: Any, manifest: ModelManifest) -> None:
        self.encoder = encoder
        self.manifest = manifest
        self.provider = f"plugin:{manifest.extra.get('dist', '?')}"
        self.min_frames = int(manifest.extra.get("min_frames", 1))

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def embed(self, x: np.ndarray) -> np.ndarray:
        m = self.manifest
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != m.n_mels or x.shape[0] < 1:
            raise EmberdError(f"model {m.name}: input shape {x.shape}, expected "
                              f"[batch, frames, {m.n_mels}]")  # fmt: skip
        try:
            out = self.encoder.embed(x)
        except EmberdError:
            raise
        except Exception as exc:  # third-party code: one line naming the package
            raise EmberdError(f"encoder plug-in {m.name} ({self.provider}): embed failed "
                              f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        want = (x.shape[0], m.dim)
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != want:
            got = (f"{type(out).__name__} {getattr(out, 'dtype', '')} "
                   f"{tuple(getattr(out, 'shape', ()))}")  # fmt: skip
            raise EmberdError(f"encoder plug-in {m.name} ({self.provider}): returned {got}, "
                              f"expected float32 {want}")  # fmt: skip
        if not np.isfinite(out).all():
            raise EmberdError(f"encoder plug-in {m.name} ({self.provider}): returned NaN or "
                              "infinity; nothing was stored")  # fmt: skip
        return out


def load_encoder(
    manifest: ModelManifest,
    *,
    device: str = "auto",
    threads: int = 2,
    warmup: bool = True,
    skip_silence: bool | None = None,
) -> Any:
    """The encoder of ``manifest``, through its ``emberd.encoders`` entry point.

    Built-ins and third-party encoders come from the group; an imported user model (an
    ``.onnx`` file with its manifest) runs on ONNX Runtime directly. ``skip_silence``
    goes to :class:`~emberd.models.runtime.Encoder` (None: the manifest decides);
    third-party encoders ignore it.
    """
    if manifest.origin == "user":
        from emberd.models.runtime import Encoder

        return Encoder(manifest, device=device, threads=threads, warmup=warmup,
                       skip_silence=skip_silence)  # fmt: skip
    info = plugins.require(plugins.GROUP_ENCODERS, manifest.name)
    if info.builtin:  # emberd's own: its errors (e.g. "not fetched yet") stay as they are
        skip = "" if skip_silence is None else "1" if skip_silence else "0"
        return plugins.load(info)({"device": device, "threads": str(threads),
                                   "warmup": "1" if warmup else "0",
                                   "skip_silence": skip})  # fmt: skip
    return CheckedEncoder(_instance(info), manifest)
