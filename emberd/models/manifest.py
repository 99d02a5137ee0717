"""Model manifests: one JSON file next to each ``.onnx`` saying how to feed it.

A manifest names the model, its front end (a :mod:`emberd.dsp.config` preset
plus overrides), the window and hop in frames, the ONNX input/output names and
shapes (``null`` or a string for a dynamic axis), the embedding dimension,
and where the model comes from (licence, source, citation). Example::

    {
      "name": "my-model", "version": "1", "description": "...",
      "file": "model.onnx",
      "frontend": {"preset": "aisfx", "params": {}},
      "window_frames": 100, "hop_frames": 50,
      "input": {"name": "mel", "shape": ["batch", "frames", 96]},
      "output": {"name": "embedding", "shape": ["batch", 512]},
      "dim": 512,
      "licence": "...", "source": "...", "citation": "..."
    }

``sample_rate`` is optional and, if given, must equal the front end's ``sr``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from emberd.errors import EmberdError

Dim = int | str | None  # fixed size, or a dynamic axis (named or anonymous)
MANIFEST_FILE = "manifest.json"
_REQUIRED = (
    "name", "version", "file", "frontend", "window_frames", "hop_frames",
    "input", "output", "dim", "licence", "source", "citation",
)  # fmt: skip


@dataclass(frozen=True)
class ModelManifest:
    """A validated manifest; ``path`` is the absolute ``.onnx`` file it describes."""

    name: str
    version: str
    description: str
    file: str
    frontend_preset: str
    frontend_params: dict[str, Any]
    window_frames: int
    hop_frames: int
    input_name: str
    input_shape: tuple[Dim, ...]
    output_name: str
    output_shape: tuple[Dim, ...]
    dim: int
    licence: str
    source: str
    citation: str
    path: Path
    origin: str = "user"  # "builtin" or "user"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_mels(self) -> int:
        """Bands per frame (last input axis)."""
        last = self.input_shape[-1]
        assert isinstance(last, int)  # enforced by validation
        return last

    def frontend(self) -> Any:
        """The :class:`emberd.dsp.config.FrontEndConfig` this model expects."""
        from emberd.dsp.config import preset

        return preset(self.frontend_preset, **self.frontend_params)

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz of the front end."""
        return int(self.frontend().sr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the manifest file's content plus ``path`` and ``origin``)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "file": self.file,
            "path": str(self.path),
            "origin": self.origin,
            "sample_rate": self.sample_rate,
            "frontend": {"preset": self.frontend_preset, "params": dict(self.frontend_params)},
            "window_frames": self.window_frames,
            "hop_frames": self.hop_frames,
            "input": {"name": self.input_name, "shape": list(self.input_shape)},
            "output": {"name": self.output_name, "shape": list(self.output_shape)},
            "dim": self.dim,
            "licence": self.licence,
            "source": self.source,
            "citation": self.citation,
            **self.extra,
        }


def _shape(where: str, value: Any) -> tuple[Dim, ...]:
    if not isinstance(value, list) or not value:
        raise EmberdError(f"{where}: must be a non-empty list of sizes")
    for item in value:
        ok = item is None or isinstance(item, str)
        ok = ok or (isinstance(item, int) and not isinstance(item, bool) and item > 0)
        if not ok:
            raise EmberdError(f"{where}: {item!r} is not a positive size, a name or null")
    return tuple(value)


def _pos_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EmberdError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EmberdError(f"{where}: must be a non-empty string")
    return value


def parse_manifest(data: Any, base_dir: Path, *, where: str, origin: str = "user") -> ModelManifest:
    """Validate a manifest dict.

    Parameters
    ----------
    data : Any
        Decoded JSON.
    base_dir : Path
        Folder the manifest's ``file`` is relative to.
    where : str
        Name used in error messages (usually the manifest path).
    origin : str
        ``"builtin"`` or ``"user"``.

    Raises
    ------
    EmberdError
        Naming the first missing or invalid field.
    """
    if not isinstance(data, dict):
        raise EmberdError(f"{where}: manifest must be a JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise EmberdError(f"{where}: missing field(s) {', '.join(missing)}")
    name = _text(f"{where}: name", data["name"])
    if "/" in name or name.startswith("."):
        raise EmberdError(f"{where}: name {name!r} must be a plain folder name")
    fe = data["frontend"]
    if not isinstance(fe, dict) or not isinstance(fe.get("preset"), str):
        raise EmberdError(f'{where}: frontend must be {{"preset": NAME, "params": {{...}}}}')
    params = fe.get("params", {})
    if not isinstance(params, dict):
        raise EmberdError(f"{where}: frontend.params must be an object")
    for key in ("input", "output"):
        if not isinstance(data[key], dict) or "name" not in data[key] or "shape" not in data[key]:
            raise EmberdError(f'{where}: {key} must be {{"name": ..., "shape": [...]}}')
    in_shape = _shape(f"{where}: input.shape", data["input"]["shape"])
    out_shape = _shape(f"{where}: output.shape", data["output"]["shape"])
    if len(in_shape) != 3 or not isinstance(in_shape[-1], int):
        raise EmberdError(f"{where}: input.shape must be [batch, frames, n_mels] with n_mels fixed")
    if len(out_shape) != 2:
        raise EmberdError(f"{where}: output.shape must be [batch, dim]")
    dim = _pos_int(f"{where}: dim", data["dim"])
    if isinstance(out_shape[1], int) and out_shape[1] != dim:
        raise EmberdError(f"{where}: output.shape[1]={out_shape[1]} contradicts dim={dim}")
    window = _pos_int(f"{where}: window_frames", data["window_frames"])
    hop = _pos_int(f"{where}: hop_frames", data["hop_frames"])
    if isinstance(in_shape[1], int) and in_shape[1] != window:
        raise EmberdError(
            f"{where}: input.shape[1]={in_shape[1]} contradicts window_frames={window}"
        )
    known = set(_REQUIRED) | {"description", "sample_rate", "path", "origin"}
    manifest = ModelManifest(
        name=name,
        version=str(data["version"]),
        description=str(data.get("description", "")),
        file=_text(f"{where}: file", data["file"]),
        frontend_preset=fe["preset"],
        frontend_params=dict(params),
        window_frames=window,
        hop_frames=hop,
        input_name=_text(f"{where}: input.name", data["input"]["name"]),
        input_shape=in_shape,
        output_name=_text(f"{where}: output.name", data["output"]["name"]),
        output_shape=out_shape,
        dim=dim,
        licence=_text(f"{where}: licence", data["licence"]),
        source=_text(f"{where}: source", data["source"]),
        citation=str(data["citation"]),
        path=(base_dir / data["file"]).resolve(),
        origin=origin,
        extra={k: v for k, v in data.items() if k not in known},
    )
    config = _frontend_or_error(manifest, where)
    if config.n_mels != manifest.n_mels:
        raise EmberdError(
            f"{where}: front end gives {config.n_mels} bands, "
            f"input.shape ends in {manifest.n_mels}"
        )
    if "sample_rate" in data and data["sample_rate"] != config.sr:
        raise EmberdError(
            f"{where}: sample_rate={data['sample_rate']} contradicts the front end ({config.sr})"
        )
    return manifest


def _frontend_or_error(manifest: ModelManifest, where: str) -> Any:
    try:
        return manifest.frontend()
    except EmberdError as exc:
        raise EmberdError(f"{where}: {exc}") from exc
    except TypeError as exc:  # a wrongly typed override
        raise EmberdError(f"{where}: frontend.params: {exc}") from exc


def load_manifest(
    path: str | Path, *, origin: str = "user", base_dir: Path | None = None
) -> ModelManifest:
    """Read and validate a manifest file.

    Parameters
    ----------
    path : str or Path
        The JSON manifest.
    origin : str
        ``"builtin"`` or ``"user"``.
    base_dir : Path, optional
        Folder the ``file`` field is relative to (default: the manifest's folder).

    Raises
    ------
    EmberdError
        Missing file, invalid JSON, or an invalid field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EmberdError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EmberdError(f"{path}: cannot read manifest: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EmberdError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    return parse_manifest(data, base_dir or path.parent, where=str(path), origin=origin)


def builtin_manifest_dict(name: str) -> dict[str, Any]:
    """The shipped manifest ``emberd/models/builtin/NAME.json`` as a dict."""
    ref = resources.files("emberd.models").joinpath("builtin", f"{name}.json")
    data: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return data
