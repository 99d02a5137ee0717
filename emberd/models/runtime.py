"""Run any manifest's ONNX model through ONNX Runtime.

Providers: ``device="cpu"`` uses the CPU execution provider; ``"cuda"`` and
``"auto"`` ask for CUDA first. When CUDA was asked for but is not what the
session actually got (CPU-only ONNX Runtime, missing CUDA/cuDNN libraries),
emberd says so once per process with a warning naming the fix, and runs on
CPU. :attr:`Encoder.provider` is the provider really active.

Threads: ``intra_op_num_threads`` is set explicitly (default 2) and
``inter_op_num_threads`` to 1 (the graphs are a single chain). Spinning
(``session.intra_op.allow_spinning``) is off by default: ``bench/encoders.py``
measures both. On an idle 2-core pin spinning changed aiSFX's batch-1 p50 by
under 3 % either way (24.9 vs 24.5 ms at 1 thread, 12.7 vs 13.0 ms at 2), and on
a loaded 2-core machine it made it 2x slower, while the spinning threads
busy-wait between hops and steal CPU from the audio callback and the rest of
the daemon.

On CUDA the input is bound with IO binding to a device buffer reused while
the batch shape stays the same, and the output is copied back to host.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from emberd.errors import EmberdError
from emberd.models.manifest import ModelManifest
from emberd.models.onnxrt import onnxruntime
from emberd.models.silence_skip import MANIFEST_KEY

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
DEFAULT_THREADS = 2
DEFAULT_SPINNING = False  # see module docstring and bench/encoders.py

_fallback_lock = threading.Lock()
_fallback_stated = False


def _state_fallback_once(reason: str) -> None:
    global _fallback_stated
    with _fallback_lock:
        if _fallback_stated:
            return
        _fallback_stated = True
    log.warning(
        "CUDA unavailable (%s): running the encoder on CPU. For GPU inference: "
        "pip uninstall -y onnxruntime && pip install 'emberd[gpu]' (needs CUDA 12 and cuDNN 9)",
        reason,
    )


def _dims(shape: Any) -> list[int | str | None]:
    return [d if isinstance(d, int) else (d or None) for d in shape]


def check_io(
    manifest: ModelManifest, inputs: list[tuple[str, Any]], outputs: list[tuple[str, Any]]
) -> None:
    """Check a manifest against the graph's real input/output names and shapes.

    Parameters
    ----------
    manifest : ModelManifest
    inputs, outputs : list of (name, shape)
        Shapes as ONNX reports them: ints for fixed axes, strings or ``None``
        for dynamic ones.

    Raises
    ------
    EmberdError
        One line naming the first contradiction.
    """
    where = f"model {manifest.name} ({manifest.path.name})"
    if len(inputs) != 1:
        names = ", ".join(n for n, _ in inputs)
        raise EmberdError(f"{where}: expected one input, the graph has {len(inputs)} ({names})")
    in_name, in_shape = inputs[0][0], _dims(inputs[0][1])
    if in_name != manifest.input_name:
        raise EmberdError(
            f"{where}: manifest input {manifest.input_name!r} but the graph's input is {in_name!r}"
        )
    declared = list(manifest.input_shape)
    if len(in_shape) != len(declared):
        raise EmberdError(
            f"{where}: graph input shape {in_shape} has rank {len(in_shape)}, "
            f"manifest says {declared}"
        )
    expected: list[int | str | None] = [None, manifest.window_frames, manifest.n_mels]
    for axis, (actual, want, wanted_fixed) in enumerate(
        zip(in_shape, declared, expected, strict=True)
    ):
        fixed = [v for v in (want, wanted_fixed) if isinstance(v, int)]
        if axis == 1 and not isinstance(want, int):
            fixed = []  # frames dynamic in the manifest: any window length the graph takes
        if isinstance(actual, int) and any(actual != v for v in fixed):
            raise EmberdError(
                f"{where}: graph input shape {in_shape} contradicts manifest "
                f"input.shape {declared} (axis {axis}: {actual} != {fixed[0]})"
            )
    if isinstance(in_shape[1], int) and in_shape[1] != manifest.window_frames:
        raise EmberdError(
            f"{where}: graph takes {in_shape[1]} frames, manifest window_frames is "
            f"{manifest.window_frames}"
        )
    out = dict(outputs)
    if manifest.output_name not in out:
        raise EmberdError(
            f"{where}: manifest output {manifest.output_name!r} not among the graph's "
            f"outputs ({', '.join(out)})"
        )
    out_shape = _dims(out[manifest.output_name])
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != manifest.dim):
        raise EmberdError(
            f"{where}: graph output shape {out_shape} contradicts manifest dim={manifest.dim}"
        )


def check_onnx_file(manifest: ModelManifest) -> None:
    """Load ``manifest.path`` with the ``onnx`` package and run :func:`check_io`."""
    import onnx

    if not manifest.path.is_file():
        raise EmberdError(f"model {manifest.name}: {manifest.path} not found")
    try:
        model = onnx.load(str(manifest.path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise EmberdError(f"{manifest.path}: not a readable ONNX model ({exc})") from exc

    def shape(vi: Any) -> list[int | str | None]:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim
        ]

    inits = {i.name for i in model.graph.initializer}
    inputs = [(vi.name, shape(vi)) for vi in model.graph.input if vi.name not in inits]
    outputs = [(vi.name, shape(vi)) for vi in model.graph.output]
    check_io(manifest, inputs, outputs)


def session_options(threads: int, *, spinning: bool) -> Any:
    """ONNX Runtime session options with explicit threading.

    Parameters
    ----------
    threads : int
        Intra-op threads (>= 1).
    spinning : bool
        Whether idle intra-op threads busy-wait for work.
    """
    ort = onnxruntime()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EmberdError(f"threads={threads!r}: must be a positive integer")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3  # ORT's own warnings are noise for users; errors still show
    return opts


class Encoder:
    """An ONNX model described by a manifest, ready to embed mel windows.

    Parameters
    ----------
    manifest : ModelManifest
        From :mod:`emberd.models.registry`.
    device : {"auto", "cpu", "cuda"}
        ``auto``/``cuda`` try CUDA and fall back to CPU with one warning.
    threads : int
        Intra-op threads for the CPU provider.
    spinning : bool
        Allow intra-op thread spinning (default off, see module docstring).
    warmup : bool
        Run one window through the model on construction, so the first live
        hop does not pay for lazy initialisation.
    skip_silence : bool, optional
        Compute windows that are mostly silence only over their sound's cone
        (:mod:`emberd.models.silence_skip`; same embeddings). ``None``: on
        when the manifest says ``"silence_skip": true`` and the graph runs on
        CPU; ``True`` on a manifest that does not say so raises.

    Attributes
    ----------
    provider : str
        The execution provider actually running the graph.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        *,
        device: str = "auto",
        threads: int = DEFAULT_THREADS,
        spinning: bool = DEFAULT_SPINNING,
        warmup: bool = True,
        skip_silence: bool | None = None,
    ) -> None:
        if device not in DEVICES:
            raise EmberdError(f"device {device!r}: choose from {', '.join(DEVICES)}")
        ort = onnxruntime()
        self.manifest = manifest
        self.threads = threads
        self.spinning = spinning
        path = Path(manifest.path)
        if not path.is_file():
            raise EmberdError(f"model {manifest.name}: {path} not found")
        want_cuda = device in ("auto", "cuda")
        providers: list[Any] = [CPU_EP]
        if want_cuda and CUDA_EP in ort.get_available_providers():
            providers = [(CUDA_EP, {"device_id": 0}), CPU_EP]
        opts = session_options(threads, spinning=spinning)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EmberdError(
                f"model {manifest.name}: ONNX Runtime cannot load {path}: {exc}"
            ) from exc
        active = self.session.get_providers()
        self.provider: str = active[0]
        if device == "cuda" and self.provider != CUDA_EP:
            _state_fallback_once(
                "this ONNX Runtime has no CUDA provider"
                if CUDA_EP not in ort.get_available_providers()
                else "the CUDA provider failed to initialise"
            )
        elif (
            device == "auto"
            and CUDA_EP in ort.get_available_providers()
            and self.provider != CUDA_EP
        ):
            _state_fallback_once("the CUDA provider failed to initialise")
        check_io(
            manifest,
            [(i.name, i.shape) for i in self.session.get_inputs()],
            [(o.name, o.shape) for o in self.session.get_outputs()],
        )
        self.min_frames = int(manifest.extra.get("min_frames", 1))
        self.skipper: Any = None
        if skip_silence is None:
            skip_silence = bool(manifest.extra.get(MANIFEST_KEY)) and self.provider == CPU_EP
        if skip_silence:
            self.skipper = self._silence_skip(providers, opts)
        self._binding: Any = None
        self._bound: Any = None  # device OrtValue reused while the shape is unchanged
        if self.provider == CUDA_EP:
            self._binding = self.session.io_binding()
        if warmup:
            self._run_full(np.zeros((1, manifest.window_frames, manifest.n_mels), np.float32))

    def _silence_skip(self, providers: list[Any], opts: Any) -> Any:
        from emberd.models import silence_skip

        ort = onnxruntime()

        def make(graph: bytes) -> Any:
            return ort.InferenceSession(graph, sess_options=opts, providers=providers)

        return silence_skip.for_manifest(self.manifest, make)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.manifest.dim

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != self.manifest.n_mels or x.shape[0] < 1:
            raise EmberdError(
                f"model {self.manifest.name}: input shape {x.shape}, expected "
                f"[batch, frames, {self.manifest.n_mels}]"
            )
        if x.shape[1] < self.min_frames:
            raise EmberdError(
                f"model {self.manifest.name}: {x.shape[1]} frames, needs >= {self.min_frames}"
            )
        fixed = self.manifest.input_shape[1]
        if isinstance(fixed, int) and x.shape[1] != fixed:
            raise EmberdError(f"model {self.manifest.name}: takes exactly {fixed} frames")
        if not np.isfinite(x).all():
            raise EmberdError(f"model {self.manifest.name}: input contains NaN or infinity")
        return x

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embed a batch of windows.

        Parameters
        ----------
        x : numpy.ndarray
            float32 ``[batch, frames, n_mels]``.

        Returns
        -------
        numpy.ndarray
            float32 ``[batch, dim]``.
        """
        x = self._check(x)
        if self.skipper is not None and x.shape[1] == self.skipper.window_frames:
            return np.asarray(self.skipper.embed(x, self._run_full), dtype=np.float32)
        return self._run_full(x)

    def _run_full(self, x: np.ndarray) -> np.ndarray:
        """The plain graph on every frame of ``x``."""
        if self._binding is None:
            out = self.session.run([self.manifest.output_name], {self.manifest.input_name: x})[0]
        else:
            out = self._run_bound(x)
        return np.asarray(out, dtype=np.float32)

    def _run_bound(self, x: np.ndarray) -> np.ndarray:
        ort = onnxruntime()
        if self._bound is None or tuple(self._bound.shape()) != x.shape:
            self._bound = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self._binding.bind_ortvalue_input(self.manifest.input_name, self._bound)
            self._binding.bind_output(self.manifest.output_name, "cpu")
        else:
            self._bound.update_inplace(x)
        self.session.run_with_iobinding(self._binding)
        result: np.ndarray = self._binding.copy_outputs_to_cpu()[0]
        return result
