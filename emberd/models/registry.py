"""Where models live and how a name becomes a manifest.

Built-in models (``aisfx``, ``aisfx-int8``, ``dsp-baseline``) ship a manifest
inside the package; their ``.onnx`` is written on demand under
``emberd.paths.models_dir()/NAME/`` (``emberd models fetch aisfx``; the
baseline and the int8 aiSFX, quantized from the fetched aiSFX by
:mod:`emberd.models.quantize`, are generated on first use). User models are imported into
``models_dir()/NAME/`` as ``model.onnx`` + ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from emberd.errors import ComponentMissing, EmberdError
from emberd.models.manifest import (
    MANIFEST_FILE,
    ModelManifest,
    builtin_manifest_dict,
    load_manifest,
    parse_manifest,
)

log = logging.getLogger(__name__)

BUILTINS = ("aisfx", "aisfx-int8", "dsp-baseline")
GENERATED = ("aisfx-int8", "dsp-baseline")  # built locally on first use (no download)
DEFAULT_MODEL = "aisfx"
FALLBACK_MODEL = "dsp-baseline"


def _builtin(name: str, root: Path) -> ModelManifest:
    # The package's manifest is the truth for a built-in model (a copy fetched by an older
    # emberd may lack newer fields such as "silence_skip"); the .onnx lives in ``folder``.
    folder = root / name
    data = builtin_manifest_dict(name)
    return parse_manifest(data, folder, where=f"built-in {name}", origin="builtin")


def available(manifest: ModelManifest) -> bool:
    """Whether the model's ``.onnx`` file is present."""
    return manifest.path.is_file()


def list_models() -> list[ModelManifest]:
    """Every known model: built-ins first, then user models by name, then encoder plug-ins."""
    root = _models_root()
    found = [_builtin(name, root) for name in BUILTINS]
    for manifest in sorted(root.glob(f"*/{MANIFEST_FILE}")):
        if manifest.parent.name in BUILTINS:
            continue
        try:
            found.append(load_manifest(manifest))
        except EmberdError as exc:  # one broken user model must not hide the others
            log.warning("skipping %s", exc)
    from emberd.models.plugin import plugin_manifest

    for name in plugin_names():  # encoder plug-ins from other packages, last
        try:
            plugin = plugin_manifest(name)
        except EmberdError as exc:
            log.warning("skipping %s", exc)
            continue
        if plugin is not None and all(m.name != name for m in found):
            found.append(plugin)
    return found


def plugin_names() -> list[str]:
    """Encoder plug-ins installed from other packages (``emberd.encoders``)."""
    from emberd import plugins

    return [p.name for p in plugins.discover(plugins.GROUP_ENCODERS) if not p.builtin]


def _models_root() -> Path:
    from emberd.paths import models_dir

    return models_dir()


def _generated_current(manifest: ModelManifest) -> bool:
    """A generated model exists (and, for int8, was built with today's calibration ranges)."""
    if manifest.name == "aisfx-int8":
        from emberd.models import quantize

        return quantize.is_current(manifest.path.parent)
    return available(manifest)


def resolve(name: str) -> ModelManifest:
    """Return the manifest of a model whose ``.onnx`` file exists.

    ``dsp-baseline`` and ``aisfx-int8`` are generated if missing; ``aisfx`` must have
    been fetched.

    Raises
    ------
    ComponentMissing
        ``aisfx`` not fetched yet (the message gives the fix).
    EmberdError
        Unknown name, broken manifest, missing ``.onnx``.
    """
    root = _models_root()
    if name in BUILTINS:
        manifest = _builtin(name, root)
        if name in GENERATED and not _generated_current(manifest):
            fetch(name)
            manifest = _builtin(name, root)
        if not available(manifest):
            raise ComponentMissing(
                f"model {name}: not fetched yet ({manifest.path} missing); "
                f"fix with: emberd models fetch {name}"
            )
        return manifest
    path = root / name / MANIFEST_FILE
    if not path.is_file():
        from emberd.models.plugin import plugin_manifest

        found = plugin_manifest(name)  # an emberd.encoders plug-in from another package
        if found is not None:
            return found
        known = ", ".join([m.name for m in list_models()] + plugin_names())
        raise EmberdError(f"model {name!r}: unknown (known: {known})")
    manifest = load_manifest(path)
    if not available(manifest):
        raise EmberdError(f"model {name}: {manifest.path} is missing")
    return manifest


def resolve_default(name: str | None = None, *, auto_fetch: bool = True) -> ModelManifest:
    """Resolve ``name`` (default aiSFX), falling back to the DSP baseline loudly.

    Parameters
    ----------
    name : str, optional
        A model name; ``None`` means :data:`DEFAULT_MODEL` with fallback.
        An explicit name never falls back.
    auto_fetch : bool
        Try ``emberd models fetch aisfx`` first when aiSFX is missing.
    """
    if name is not None:
        return resolve(name)
    try:
        return resolve(DEFAULT_MODEL)
    except ComponentMissing as first:
        reason = str(first)
        if auto_fetch:
            log.warning(
                "aiSFX is not fetched yet: fetching it now (pip download aisfx==0.1.2, 23 MB, "
                "then conversion to ONNX); next time run 'emberd models fetch aisfx' first"
            )
            try:
                fetch(DEFAULT_MODEL)
                return resolve(DEFAULT_MODEL)
            except EmberdError as exc:
                reason = str(exc)
    log.warning(
        "FALLING BACK to the DSP baseline encoder: aiSFX is unavailable (%s). "
        "Matches will be much weaker; fix with: emberd models fetch aisfx",
        reason,
    )
    return resolve(FALLBACK_MODEL)


def fetch(name: str) -> ModelManifest:
    """Fetch or build a built-in model into ``models_dir()``; return its manifest.

    Safe with any number of processes fetching and loading at once: fetchers take
    turns under a lock in the models folder (one that had to wait uses the model the
    other just wrote), and every file is replaced by an atomic rename, so a reader
    opens the old file or the new one, never a missing or half-written one.
    """
    from emberd.locks import file_lock

    if name not in BUILTINS:
        return _fetch(name)  # refuses it
    root = _models_root()
    waited: list[str] = []
    with file_lock(root / f".{name}.fetch.lock", f"emberd models fetch {name}",
                   on_wait=waited.append):
        if waited and available(_builtin(name, root)):
            log.info("model %s: fetched meanwhile by %s", name, waited[0])
            return resolve(name)
        return _fetch(name)


def _fetch(name: str) -> ModelManifest:
    from emberd.atomic import atomic_write_bytes

    root = _models_root()
    if name == "aisfx":
        from emberd.models import aisfx
        from emberd.paths import cache_dir

        return load_manifest(aisfx.fetch(root, cache_dir()), origin="builtin")
    if name == "aisfx-int8":
        from emberd.models import quantize

        quantize.build_int8(resolve("aisfx").path, root / name)
        return _builtin(name, root)
    if name == "dsp-baseline":
        from emberd.models import baseline

        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "model.onnx", baseline.build_onnx().SerializeToString())
        return _builtin(name, root)
    raise EmberdError(
        f"model {name!r}: only built-in models can be fetched ({', '.join(BUILTINS)})"
    )


def import_model(onnx_path: str | Path, manifest_path: str | Path) -> ModelManifest:
    """Copy a user ``.onnx`` and its manifest into ``models_dir()/NAME/``.

    The manifest is checked against the ONNX graph's real inputs and outputs
    before anything is copied.

    Raises
    ------
    EmberdError
        Missing file, malformed manifest, a built-in's name, or shapes that
        contradict the ONNX graph.
    """
    from emberd.atomic import atomic_open, atomic_write_text
    from emberd.models.runtime import check_onnx_file

    src = Path(onnx_path)
    if not src.is_file():
        raise EmberdError(f"{src}: ONNX file not found")
    probe = load_manifest(manifest_path, base_dir=src.parent)
    if probe.name in BUILTINS:
        raise EmberdError(f"{manifest_path}: name {probe.name!r} is reserved for a built-in model")
    probe = parse_manifest(
        {**json.loads(Path(manifest_path).read_text(encoding="utf-8")), "file": src.name},
        src.parent,
        where=str(manifest_path),
    )
    check_onnx_file(probe)
    folder = _models_root() / probe.name
    folder.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, atomic_open(folder / "model.onnx", "wb") as fout:
        shutil.copyfileobj(fin, fout)
    data = probe.to_dict()
    for key in ("path", "origin"):
        data.pop(key)
    data["file"] = "model.onnx"
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(data, indent=2) + "\n")
    return load_manifest(folder / MANIFEST_FILE)
