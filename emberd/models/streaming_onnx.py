"""The aiSFX conv stack as an ONNX Runtime *step* graph with state inputs/outputs.

One run consumes exactly 8 new mel frames (one block-4 column's worth) and the
cached time context of every layer, and returns one new block-4 column (mean
over mel) plus the updated context. Shapes are fixed, so ONNX Runtime plans
the whole step once. Chosen by measurement on the shared 2-core development
machine: per 8-frame hop the numpy im2col path (``conv_numpy``) took 1.4x the
ONNX step at 1 BLAS thread and ~10x at 2 (OpenBLAS threads stall on a loaded
machine); see ``bench/streaming.py``.

Step ``s`` (frames ``8s .. 8s+7``) with "valid" time convolution (pads 0 in
time, 1 in mel) produces these rows, where each conv lags one row behind its
input and a pool halves the index:

==========  ============  =====
layer       output rows   count
==========  ============  =====
conv 1.1    8s-1 .. 8s+6  8
conv 1.2    8s-2 .. 8s+5  8  -> pool: 4s-1 .. 4s+2
conv 2.1    4s-2 .. 4s+1  4
conv 2.2    4s-3 .. 4s    4  -> pool keeps row 4s for the next step: 2s-2 .. 2s-1
conv 3.1    2s-3 .. 2s-2  2
conv 3.2    2s-4 .. 2s-3  2  -> pool: s-2
conv 4.1    s-3           1
conv 4.2    s-4           1  -> column s-4
==========  ============  =====

So column ``j`` comes out of step ``j+4``, i.e. after frame ``8j+39``: 32 frames
of look-ahead (the numpy path, which runs any number of frames, needs 30).
Rows with a negative index must read as the reference's zero padding; during
the first four steps a per-layer 0/1 mask input zeroes them (it is all ones
afterwards), and the first four columns are discarded.

Devices: ``OnnxStack(device=...)`` picks providers like
:class:`emberd.models.runtime.Encoder` (CUDA first for ``"auto"``/``"cuda"``,
CPU fallback with the same one-time warning). On CUDA the two state sets are
device OrtValues bound once; the bindings alternate each step, so the state
never leaves the GPU and only 8 frames go up and one column comes back.
This is the continuous-edge step graph; exact edges run in numpy
(:mod:`emberd.models.streaming_exact`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emberd.errors import EmberdError
from emberd.models import conv_numpy as cn
from emberd.models.onnxgraph import finish_model
from emberd.models.onnxrt import onnxruntime

STEP_FRAMES = cn.TIME_STRIDE_FRAMES  # frames per run
LATENCY_FRAMES = 32  # column j leaves the step that ends with frame 8j + 39
WARMUP_STEPS = 4  # steps before the first valid column (column 0 leaves step 4)
# Per conv: (first output row at step s = a*s + b as (a, b), rows per step).
_ROWS = (
    (8, -1, 8),
    (8, -2, 8),
    (4, -2, 4),
    (4, -3, 4),
    (2, -3, 2),
    (2, -4, 2),
    (1, -3, 1),
    (1, -4, 1),
)
_MEL = (96, 96, 48, 48, 24, 24, 12, 12)  # mel width at each conv's input
POOL2_PENDING = 3  # the pool after conv 2.2 (index 3) carries one row between steps
FRAMES = "frames"
COLUMN = "column"


def row_masks(step: int) -> list[np.ndarray]:
    """0/1 masks ``[1, 1, rows, 1]`` zeroing each conv's output rows with a negative index."""
    masks = []
    for a, b, count in _ROWS:
        rows = a * step + b + np.arange(count)
        masks.append((rows >= 0).astype(np.float32).reshape(1, 1, count, 1))
    return masks


def state_shapes(folded: cn.Folded, channels: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state tensors (the same for inputs and outputs)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (w, _) in enumerate(folded):
        shapes[f"ctx{i}"] = (channels, w.shape[1], 2, _MEL[i])
    w3 = folded[POOL2_PENDING][0]
    shapes["pend"] = (channels, w3.shape[0], 1, _MEL[POOL2_PENDING])
    return shapes


def build_step_graph(folded: cn.Folded, channels: int) -> Any:
    """Build the step graph for ``channels`` streams.

    Inputs: ``frames`` [C, 8, 96], every ``ctx{i}``/``pend`` state, ``mask{i}``.
    Outputs: ``column`` [C, 512] and every state as ``{name}_out``.
    """
    from onnx import TensorProto, helper, numpy_helper

    weights = cn.check_folded(folded)
    shapes = state_shapes(weights, channels)
    inits: list[Any] = []
    nodes: list[Any] = []
    inputs = [helper.make_tensor_value_info(FRAMES, TensorProto.FLOAT, [channels, 8, cn.N_MELS])]
    outputs: list[Any] = []
    for name, shape in shapes.items():
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, list(shape)))
    for i, (_, _, count) in enumerate(_ROWS):
        inputs.append(
            helper.make_tensor_value_info(f"mask{i}", TensorProto.FLOAT, [1, 1, count, 1])
        )

    def const(arr: np.ndarray, tag: str) -> str:
        inits.append(numpy_helper.from_array(arr, tag))
        return tag

    def tail(src: str, dst: str, start: int, end: int) -> None:
        """Slice rows [start, end) of the time axis (2)."""
        s = const(np.array([start], np.int64), f"{dst}_s")
        e = const(np.array([end], np.int64), f"{dst}_e")
        ax = const(np.array([2], np.int64), f"{dst}_ax")
        nodes.append(helper.make_node("Slice", [src, s, e, ax], [dst]))

    nodes.append(
        helper.make_node("Unsqueeze", [FRAMES, const(np.array([1], np.int64), "ax1")], ["x0"])
    )
    x = "x0"
    for i, (w, b) in enumerate(weights):
        count = _ROWS[i][2]
        cat = f"cat{i}"
        nodes.append(helper.make_node("Concat", [f"ctx{i}", x], [cat], axis=2))
        tail(cat, f"ctx{i}_out", count, count + 2)  # last two input rows: next context
        conv = f"conv{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                [cat, const(w, f"W{i}"), const(b, f"B{i}")],
                [conv],
                kernel_shape=[3, 3],
                pads=[0, 1, 0, 1],  # valid in time (context is explicit), same in mel
            )
        )
        nodes.append(helper.make_node("Relu", [conv], [f"relu{i}"]))
        y = f"y{i}"
        nodes.append(helper.make_node("Mul", [f"relu{i}", f"mask{i}"], [y]))
        if i == POOL2_PENDING:
            joined = "pend_cat"
            nodes.append(helper.make_node("Concat", ["pend", y], [joined], axis=2))
            tail(joined, "pend_out", count, count + 1)
            tail(joined, "pend_pairs", 0, count)
            y = "pend_pairs"
        if cn.POOL_AFTER[i]:
            nodes.append(
                helper.make_node("MaxPool", [y], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            y = f"pool{i}"
        x = y
    nodes.append(helper.make_node("ReduceMean", [x], ["mean"], axes=[2, 3], keepdims=0))
    nodes.append(helper.make_node("Identity", ["mean"], [COLUMN]))
    outputs.insert(0, helper.make_tensor_value_info(COLUMN, TensorProto.FLOAT, [channels, 512]))
    return finish_model(nodes, inits, inputs, outputs, name="aisfx_step", opset=17)


class OnnxStack:
    """Runs the step graph with double-buffered state bound once (no per-step allocation).

    Parameters
    ----------
    folded : sequence of (W, b)
        BatchNorm-folded convs.
    channels : int
        Streams per step.
    threads : int
        ONNX Runtime intra-op threads.
    spinning : bool
        Let idle intra-op threads spin between steps (lower latency, burns CPU).
    device : {"auto", "cpu", "cuda"}
        Provider choice and CPU fallback as :class:`emberd.models.runtime.Encoder`.
        On CUDA the state lives on the device: two sets of state OrtValues,
        each run reads one set and writes the other (the bindings swap each
        step); only the 8 new frames go up and the 512-d column comes back.

    Attributes
    ----------
    provider : str
        The execution provider really running the graph.
    """

    latency_frames = LATENCY_FRAMES

    def __init__(
        self,
        folded: cn.Folded,
        channels: int,
        *,
        threads: int = 2,
        spinning: bool = False,
        device: str = "cpu",
    ) -> None:
        from emberd.models import runtime as rt

        if device not in rt.DEVICES:
            raise EmberdError(f"device {device!r}: choose from {', '.join(rt.DEVICES)}")
        ort = onnxruntime()
        model = build_step_graph(folded, channels)
        available = ort.get_available_providers()
        providers: list[Any] = [rt.CPU_EP]
        if device in ("auto", "cuda") and rt.CUDA_EP in available:
            providers = [(rt.CUDA_EP, {"device_id": 0}), rt.CPU_EP]
        self._session = ort.InferenceSession(
            model.SerializeToString(),
            rt.session_options(threads, spinning=spinning),
            providers=providers,
        )
        self.provider: str = self._session.get_providers()[0]
        if device == "cuda" and self.provider != rt.CUDA_EP:
            rt._state_fallback_once(
                "this ONNX Runtime has no CUDA provider"
                if rt.CUDA_EP not in available
                else "the CUDA provider failed to initialise"
            )
        on_gpu = self.provider == rt.CUDA_EP
        self.channels = channels
        self.dim = int(folded[-1][0].shape[0])
        shapes = state_shapes(folded, channels)
        self.frames = np.zeros((channels, STEP_FRAMES, cn.N_MELS), np.float32)
        self.column = np.zeros((channels, self.dim), np.float32)
        self._states = [
            {name: np.zeros(shape, np.float32) for name, shape in shapes.items()} for _ in range(2)
        ]
        self._masks = [np.ones((1, 1, r[2], 1), np.float32) for r in _ROWS]
        self._warm_masks = [row_masks(s) for s in range(WARMUP_STEPS)]
        # CPU: OrtValues share the numpy buffers. CUDA: device buffers, refreshed by
        # update_inplace from the numpy ones (frames each step, masks in warm-up).
        where = ("cuda", 0) if on_gpu else None
        self._frames_v = self._value(self.frames, where)
        self._mask_v = [self._value(m, where) for m in self._masks]
        self._state_v = [{k: self._value(a, where) for k, a in st.items()} for st in self._states]
        self._column_v = self._value(self.column, None)  # read on the host either way
        self._on_gpu = on_gpu
        self._bindings = []
        for side in range(2):
            binding = self._session.io_binding()
            binding.bind_ortvalue_input(FRAMES, self._frames_v)
            for i, mask in enumerate(self._mask_v):
                binding.bind_ortvalue_input(f"mask{i}", mask)
            for name in shapes:
                binding.bind_ortvalue_input(name, self._state_v[side][name])
                binding.bind_ortvalue_output(f"{name}_out", self._state_v[1 - side][name])
            binding.bind_ortvalue_output(COLUMN, self._column_v)
            self._bindings.append(binding)
        self.reset()

    @staticmethod
    def _value(arr: np.ndarray, where: tuple[str, int] | None) -> Any:
        """An OrtValue for ``arr``: sharing its memory on CPU, a device copy on CUDA."""
        ort = onnxruntime()
        if where is None:
            return ort.OrtValue.ortvalue_from_numpy(arr)
        return ort.OrtValue.ortvalue_from_numpy(arr, where[0], where[1])

    def reset(self) -> None:
        """Zero the context (stream start = zero padding) and restart the warm-up masks."""
        for states, values in zip(self._states, self._state_v, strict=True):
            for name, arr in states.items():
                arr[...] = 0.0
                if self._on_gpu:
                    values[name].update_inplace(arr)
        self._step = 0
        self._side = 0

    def run(self) -> bool:
        """Run one step on :attr:`frames`; return True if :attr:`column` is a valid column."""
        masks_changed = self._step <= WARMUP_STEPS
        if self._step < WARMUP_STEPS:
            for dst, src in zip(self._masks, self._warm_masks[self._step], strict=True):
                dst[...] = src
        elif self._step == WARMUP_STEPS:
            for dst in self._masks:
                dst[...] = 1.0
        if self._on_gpu:
            self._frames_v.update_inplace(self.frames)
            if masks_changed:
                for value, mask in zip(self._mask_v, self._masks, strict=True):
                    value.update_inplace(mask)
        self._session.run_with_iobinding(self._bindings[self._side])
        self._side = 1 - self._side
        self._step += 1
        return self._step > WARMUP_STEPS
