"""Exact silence skipping: run a conv-stack encoder only where a window has sound.

The ``aisfx`` front end maps digital silence to frames of exactly 0, and
:func:`emberd.models.embedding.frame_windows` pads short sounds with 0, so the
window around a one-shot is mostly zero rows: a 0.3 s hit fills about 13 of
aiSFX's 100 frames. A 3x3 convolution (time padding 1) changes output row
``r`` only if input row ``r - 1``, ``r`` or ``r + 1`` changed, so every layer's
activations outside the *cone* of the sound's span ``[a, b)`` equal those of an
all-silent window at the same positions (window-edge effects included). Those
silent activations are computed once per model (the *templates*); a window is
then computed layer by layer over its cone only, reading the rows just outside
the cone from the templates, and the embedding is the maximum of the computed
columns and the silent columns outside the cone. No approximation is made: the
result equals the full window's up to float32 rounding (test: <= 1e-5 abs).

Cone rows per layer for a span of ``k`` frames (aiSFX, window 100 frames): the
dirty range grows by one row per side per conv and halves at each 2x2 pool,
so block 4 still recomputes about ``k / 8 + 8`` of its 12 columns; a 16-frame
span costs ~38 % of the full window's multiply-adds, a 40-frame one ~61 %, a
60-frame one ~79 %.
Windows whose cone costs more than :data:`MAX_COST_RATIO` of the full window
run the plain graph instead.

Engine: each conv (+ ReLU, + pool, + mean over mel for the last) is its own
small ONNX Runtime graph with time padding 0; numpy assembles its input rows
(computed rows plus template context) between layers. On this repository's
2-core box ONNX Runtime's convolutions ran the full window ~3x faster than the
numpy im2col stack of :mod:`emberd.models.conv_numpy` (``bench/index_throughput.py``
prints both), so the cone in numpy would save nothing; the per-layer ONNX path
keeps ORT's kernels and adds one ``run`` call per layer per group of windows.

Eligibility: the model's manifest must say ``"silence_skip": true`` and its
graph must be a plain chain ``Unsqueeze -> (Conv 3x3 pad 1 -> Relu [-> MaxPool
2x2])* -> ReduceMean(mel) -> ReduceMax(time)`` (:func:`parse_conv_stack`);
anything else raises :class:`EmberdError` and the caller runs the plain graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from emberd.errors import EmberdError

MANIFEST_KEY = "silence_skip"  # manifest opt-in: true for conv stacks whose parse succeeds
# Cone multiply-adds / the full window's above which the full graph runs: the layer-by-layer
# path costs ~1.4x its multiply-adds' share (reorders and a run call per layer); measured
# break-even on 16-window batches at a ratio of 0.71 (40-frame span 1.40x faster, 60-frame 0.94x).
MAX_COST_RATIO = 0.7
GROUP_SLACK = 1.25  # windows grouped while the group's largest cone <= 1.25x its smallest
MAX_GROUP_WINDOWS = 32  # windows per layer call
OPSET = 17

Session = Any  # onnxruntime.InferenceSession
SessionFactory = Callable[[bytes], Session]
LayerTransform = Callable[[int, Any], Any]  # (conv index, onnx.ModelProto) -> onnx.ModelProto


@dataclass(frozen=True)
class ConvStack:
    """The layers of a conv-stack encoder read from its ONNX graph."""

    weights: list[tuple[np.ndarray, np.ndarray]]  # per conv: W [out, in, 3, 3], b [out]
    pool_after: list[bool]  # a 2x2 max pool follows the conv's ReLU
    # The graph's tensor names per conv: (input, conv output, relu output, pool output or ""),
    # then the mean over mel; the layer graphs reuse them so that calibration ranges of the
    # whole graph (int8) apply to each layer.
    names: list[tuple[str, str, str, str]]
    mean_name: str


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _axes(node: Any, inits: dict[str, np.ndarray]) -> list[int]:
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1:
        axes = inits.get(node.input[1])
    return [int(a) for a in (axes if axes is not None else [])]


def parse_conv_stack(model: Any) -> ConvStack:
    """Read the conv layers of an ONNX conv-stack encoder.

    Parameters
    ----------
    model : onnx.ModelProto
        A graph of the shape ``Unsqueeze(axis 1) -> (Conv 3x3, stride 1, pad 1
        -> Relu [-> MaxPool 2x2 stride 2]) x N -> ReduceMean(axis 3, no keepdims)
        -> ReduceMax(axis 2, no keepdims)``, each node consuming the previous
        node's only output (the aiSFX EmbeddingNet as :func:`emberd.models.aisfx.build_onnx`
        writes it).

    Returns
    -------
    ConvStack

    Raises
    ------
    EmberdError
        Naming the first node that does not fit.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes = list(graph.node)
    inputs = [i.name for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise EmberdError("silence skipping: the graph needs one input and one output")

    def fail(i: int, why: str) -> EmberdError:
        op = nodes[i].op_type if i < len(nodes) else "the end of the graph"
        return EmberdError(f"silence skipping: not a conv stack at node {i} ({op}): {why}")

    current = inputs[0]
    i = 0

    def take(op: str) -> Any:
        nonlocal i, current
        if i >= len(nodes) or nodes[i].op_type != op:
            raise fail(i, f"expected {op}")
        node = nodes[i]
        if node.input[0] != current or len(node.output) != 1:
            raise fail(i, "not a single chain")
        current = node.output[0]
        i += 1
        return node

    if _axes(take("Unsqueeze"), inits) != [1]:
        raise fail(i - 1, "must add the channel axis 1")
    weights: list[tuple[np.ndarray, np.ndarray]] = []
    pool_after: list[bool] = []
    names: list[tuple[str, str, str, str]] = []
    while i < len(nodes) and nodes[i].op_type == "Conv":
        x_name = current
        conv = take("Conv")
        ok = (
            list(_attr(conv, "kernel_shape", [])) == [3, 3]
            and list(_attr(conv, "pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
            and list(_attr(conv, "strides", [1, 1])) == [1, 1]
            and list(_attr(conv, "dilations", [1, 1])) == [1, 1]
            and int(_attr(conv, "group", 1)) == 1
            and len(conv.input) == 3
            and conv.input[1] in inits
            and conv.input[2] in inits
        )
        if not ok:
            raise fail(i - 1, "needs a 3x3 kernel, stride 1, padding 1, constant W and bias")
        w = np.ascontiguousarray(inits[conv.input[1]], np.float32)
        b = np.ascontiguousarray(inits[conv.input[2]], np.float32)
        c_in = 1 if not weights else weights[-1][0].shape[0]
        if w.shape[1:] != (c_in, 3, 3) or b.shape != (w.shape[0],):
            raise fail(i - 1, f"weight {w.shape} does not follow {c_in} channels")
        weights.append((w, b))
        relu = take("Relu").output[0]
        pool_name = ""
        pooled = i < len(nodes) and nodes[i].op_type == "MaxPool"
        if pooled:
            pool = take("MaxPool")
            pool_name = pool.output[0]
            ok = (
                list(_attr(pool, "kernel_shape", [])) == [2, 2]
                and list(_attr(pool, "strides", [1, 1])) == [2, 2]
                and not any(_attr(pool, "pads", [0, 0, 0, 0]))
                and int(_attr(pool, "ceil_mode", 0)) == 0
                and len(pool.output) == 1
            )
            if not ok:
                raise fail(i - 1, "needs a 2x2 kernel, stride 2, no padding, floor mode")
        pool_after.append(pooled)
        names.append((x_name, conv.output[0], relu, pool_name))
    if not weights:
        raise fail(i, "no convolution")
    mean = take("ReduceMean")
    if _axes(mean, inits) != [3] or int(_attr(mean, "keepdims", 1)) != 0:
        raise fail(i - 1, "needs the mean over mel (axis 3) without keepdims")
    top = take("ReduceMax")
    if _axes(top, inits) != [2] or int(_attr(top, "keepdims", 1)) != 0:
        raise fail(i - 1, "needs the max over time (axis 2) without keepdims")
    if i != len(nodes) or current != graph.output[0].name:
        raise fail(i, "the graph goes on after the max over time")
    return ConvStack(weights, pool_after, names, mean.output[0])


def layer_graph(stack: ConvStack, i: int) -> Any:
    """Conv ``i`` of the stack as an ONNX graph with time padding 0.

    Input ``x`` float32 ``[batch, c_in, rows + 2, mel]`` (one context row each
    side), output ``y``: ``[batch, c_out, rows, mel]``, pooled to
    ``[batch, c_out, rows // 2, mel // 2]``, or for the last conv the mean
    over mel ``[batch, c_out, rows]``. Inner tensors keep the whole graph's names.
    """
    from onnx import TensorProto, helper, numpy_helper

    from emberd.models.onnxgraph import finish_model

    w, b = stack.weights[i]
    x, conv, relu, pool = stack.names[i]
    last = i == len(stack.weights) - 1
    inits = [numpy_helper.from_array(w, f"{conv}_W"), numpy_helper.from_array(b, f"{conv}_B")]
    nodes = [
        helper.make_node("Identity", ["x"], [x]),
        helper.make_node(
            "Conv", [x, f"{conv}_W", f"{conv}_B"], [conv], kernel_shape=[3, 3], pads=[0, 1, 0, 1]
        ),
        helper.make_node("Relu", [conv], [relu]),
    ]
    out = relu
    if pool:
        nodes.append(helper.make_node("MaxPool", [out], [pool], kernel_shape=[2, 2],
                                      strides=[2, 2]))  # fmt: skip
        out = pool
    if last:
        nodes.append(helper.make_node("ReduceMean", [out], [stack.mean_name], axes=[3],
                                      keepdims=0))  # fmt: skip
        out = stack.mean_name
    nodes.append(helper.make_node("Identity", [out], ["y"]))
    dims: list[Any] = ["batch", int(w.shape[1]), "rows", "mel"]
    out_dims: list[Any] = ["batch", int(w.shape[0]), "out_rows"] + ([] if last else ["out_mel"])
    return finish_model(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
        name="silence-skip-layer",
        opset=OPSET,
    )


def spans(x: np.ndarray) -> np.ndarray:
    """``[B, 2]`` first and one-past-last non-zero frame of each window (``[0, 0]``: silent).

    Parameters
    ----------
    x : numpy.ndarray
        float32 ``[B, frames, n_mels]``.
    """
    sound = np.any(x != 0.0, axis=2)  # [B, frames]
    any_sound = sound.any(axis=1)
    first = np.argmax(sound, axis=1)
    last = x.shape[1] - np.argmax(sound[:, ::-1], axis=1)
    out = np.stack([first, last], axis=1).astype(np.int64)
    out[~any_sound] = 0
    return out


@dataclass(frozen=True)
class _Level:
    rows: int  # rows of this conv's input and (before pooling) output
    mel: int
    c_in: int
    c_out: int
    pool: bool


class SilenceSkip:
    """A conv-stack encoder that computes each window only over its sound's cone.

    Parameters
    ----------
    stack : ConvStack
        From :func:`parse_conv_stack`.
    window_frames, n_mels : int
        The window the templates are computed for; other lengths are refused
        by :meth:`embed` (the caller runs them on the full graph).
    make_session : callable
        ``bytes -> onnxruntime.InferenceSession`` (the encoder's providers and
        threads).
    transform : callable, optional
        ``(conv index, layer ModelProto) -> ModelProto`` applied to each layer
        graph before its session is made (the int8 variant quantizes there).
    """

    def __init__(
        self,
        stack: ConvStack,
        window_frames: int,
        n_mels: int,
        make_session: SessionFactory,
        transform: LayerTransform | None = None,
    ) -> None:
        self.window_frames = window_frames
        self.n_mels = n_mels
        n_convs = len(stack.weights)
        self._levels: list[_Level] = []
        rows, mel = window_frames, n_mels
        for (w, _b), pool in zip(stack.weights, stack.pool_after, strict=True):
            self._levels.append(_Level(rows, mel, int(w.shape[1]), int(w.shape[0]), pool))
            if pool:
                rows, mel = rows // 2, mel // 2
        if rows < 1 or mel < 1:
            raise EmberdError(f"silence skipping: a {window_frames}-frame window pools to nothing")
        graphs = [layer_graph(stack, i) for i in range(n_convs)]
        if transform is not None:
            graphs = [transform(i, g) for i, g in enumerate(graphs)]
        self._sessions = [make_session(g.SerializeToString()) for g in graphs]
        self._macs = np.array([lv.rows * lv.mel * lv.c_in * lv.c_out for lv in self._levels], float)
        self._build_templates()

    # ----------------------------------------------------------------- templates

    def _run(self, i: int, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._sessions[i].run(None, {"x": x})[0]
        return out

    def _build_templates(self) -> None:
        """Each conv's input for an all-silent window, with a zero row at each end."""
        self._templates: list[np.ndarray] = []  # per conv: [c_in, rows + 2, mel]
        x = np.zeros((self._levels[0].c_in, self.window_frames, self.n_mels), np.float32)
        for i, lv in enumerate(self._levels):
            padded = np.zeros((lv.c_in, lv.rows + 2, lv.mel), np.float32)
            padded[:, 1:-1] = x
            self._templates.append(padded)
            x = self._run(i, padded[None])[0]
        cols = np.ascontiguousarray(x.T)  # [rows, dim]: the silent window's columns
        self.dim = int(cols.shape[1])
        neg = np.full((1, self.dim), -np.inf, np.float32)
        # Max of the silent columns before row k and from row k on: the part of the
        # embedding a cone [s, e) leaves to silence is max(before[s], after[e]).
        self._before = np.concatenate([neg, np.maximum.accumulate(cols, axis=0)])
        self._after = np.concatenate([np.maximum.accumulate(cols[::-1], axis=0)[::-1], neg])
        self.silent_embedding = cols.max(axis=0)

    # ----------------------------------------------------------------- planning

    def cones(self, span: tuple[int, int]) -> list[tuple[int, int]]:
        """Rows each conv must compute (before pooling) for a sound in frames ``[a, b)``.

        A range of a pooled conv starts and ends on even rows so that it pools
        whole pairs; an odd last row that floor pooling drops is left out.
        """
        lo, hi = span
        out = []
        for lv in self._levels:
            lo, hi = max(0, lo - 1), min(lv.rows, hi + 1)
            if lv.pool:
                even = 2 * (lv.rows // 2)
                r_hi = min(hi + hi % 2, even)
                out.append((min(lo - lo % 2, r_hi), r_hi))
                lo, hi = lo // 2, min(lv.rows // 2, (hi - 1) // 2 + 1)
            else:
                out.append((lo, hi))
        return out

    def cost_ratio(self, span: tuple[int, int]) -> float:
        """Multiply-adds of a span's cones over the full window's."""
        rows = np.array([e - s for s, e in self.cones(span)], float)
        full = np.array([lv.rows for lv in self._levels], float)
        return float((self._macs * rows / full).sum() / self._macs.sum())

    # ----------------------------------------------------------------- compute

    def embed(
        self, x: np.ndarray, full: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Embed windows ``[B, window_frames, n_mels]``, each over its cone.

        Silent windows get the silent embedding, windows whose cone costs more
        than :data:`MAX_COST_RATIO` of the full window go to ``full`` (the
        plain graph), the rest are grouped by cone size and computed layer by
        layer.

        Returns
        -------
        numpy.ndarray
            float32 ``[B, dim]``.
        """
        if x.ndim != 3 or x.shape[1:] != (self.window_frames, self.n_mels):
            raise EmberdError(
                f"silence skipping: windows {x.shape}, expected [B, {self.window_frames}, "
                f"{self.n_mels}]"
            )
        out = np.empty((x.shape[0], self.dim), np.float32)
        sp = spans(x)
        costs = np.array(
            [self.cost_ratio((int(a), int(b))) if b > a else 0.0 for a, b in sp], float
        )
        silent = sp[:, 1] <= sp[:, 0]
        out[silent] = self.silent_embedding
        heavy = ~silent & (costs > MAX_COST_RATIO)
        if heavy.any():
            out[heavy] = full(x[heavy])
        light = np.flatnonzero(~silent & ~heavy)
        for group in _groups(light[np.argsort(costs[light], kind="stable")], costs):
            out[group] = self._embed_group(x[group], sp[group])
        return out

    def _embed_group(self, x: np.ndarray, sp: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        plans = [self.cones((int(a), int(b))) for a, b in sp]
        prev = x[:, None]  # [B, 1, frames, mel]: the window itself is conv 0's computed input
        prev_start = np.zeros(n, np.int64)
        for i, lv in enumerate(self._levels):
            ranges = np.array([p[i] for p in plans], np.int64)
            m = int((ranges[:, 1] - ranges[:, 0]).max())
            bound = lv.rows
            if lv.pool:
                m = max(2, m + m % 2)
                bound = 2 * (lv.rows // 2)
            m = min(m, bound)
            starts = np.minimum(ranges[:, 0], bound - m)  # same size for the whole group
            xin = np.empty((n, lv.c_in, m + 2, lv.mel), np.float32)
            template = self._templates[i]
            p_rows = prev.shape[2]
            for w in range(n):
                s = int(starts[w])
                ps = int(prev_start[w])
                # Input positions s-1 .. s+m: computed where the previous layer computed
                # them, the silent template (or the zero padding) everywhere else.
                lo = min(max(ps, s - 1), s + m + 1)
                hi = max(min(ps + p_rows, s + m + 1), lo)
                xin[w, :, : lo - s + 1] = template[:, s : lo + 1]
                xin[w, :, lo - s + 1 : hi - s + 1] = prev[w, :, lo - ps : hi - ps]
                xin[w, :, hi - s + 1 :] = template[:, hi + 1 : s + m + 2]
            prev = self._run(i, xin)
            prev_start = starts // 2 if lv.pool else starts
        cols = prev  # [B, dim, m]: the computed columns
        m = cols.shape[2]
        out = cols.max(axis=2)
        for w in range(n):
            s = int(prev_start[w])
            np.maximum(out[w], self._before[s], out=out[w])
            np.maximum(out[w], self._after[s + m], out=out[w])
        return out


def _groups(order: np.ndarray, costs: np.ndarray) -> list[np.ndarray]:
    """Split windows sorted by cone cost into groups of similar cost."""
    groups: list[list[int]] = []
    for j in order:
        j = int(j)
        g = groups[-1] if groups else None
        if (
            g is None
            or len(g) >= MAX_GROUP_WINDOWS
            or costs[j] > GROUP_SLACK * max(costs[g[0]], 1e-9)
        ):
            groups.append([j])
        else:
            g.append(j)
    return [np.array(g, np.int64) for g in groups]


def for_manifest(manifest: Any, make_session: SessionFactory) -> SilenceSkip:
    """The :class:`SilenceSkip` of a model whose manifest declares it.

    ``"silence_skip": true``: the model's own graph is a conv stack.
    ``"silence_skip": {"int8_of": NAME}``: the model is NAME quantized by
    :mod:`emberd.models.quantize`; NAME's float graph (the sibling folder
    ``../NAME/model.onnx``) is split into layers and each is quantized with the
    same calibration ranges.

    Raises
    ------
    EmberdError
        If the manifest does not declare it, or the graph is not a conv stack
        (see :func:`parse_conv_stack`).
    """
    import onnx

    spec = manifest.extra.get(MANIFEST_KEY)
    transform: LayerTransform | None = None
    if spec is True:
        path = manifest.path
    elif isinstance(spec, dict) and isinstance(spec.get("int8_of"), str):
        from emberd.models import quantize

        # The float model is the sibling folder in the same models root.
        path = manifest.path.parent.parent / spec["int8_of"] / "model.onnx"
        if not path.is_file():
            raise EmberdError(
                f"model {manifest.name}: its float model {path} is missing; "
                f"fix with: emberd models fetch {spec['int8_of']}"
            )
        layers = manifest.path.parent / "layers"

        def transform(i: int, layer: Any) -> Any:
            return quantize.quantize_layer(i, layer, layers)

    else:
        raise EmberdError(
            f"model {manifest.name}: its manifest does not declare "
            f'"{MANIFEST_KEY}": true, so silence skipping is off for it'
        )
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise EmberdError(f"{path}: not a readable ONNX model ({exc})") from exc
    stack = parse_conv_stack(model)
    return SilenceSkip(stack, manifest.window_frames, manifest.n_mels, make_session, transform)
