"""Shared last step of the hand-built ONNX graphs (aiSFX, DSP baseline, streaming step).

Each builder collects its own nodes and initialisers; :func:`finish_model`
wraps them into a checked ``ModelProto`` the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_IR_VERSION = 8  # loadable by ONNX Runtime >= 1.14


def finish_model(nodes: Sequence[Any], inits: Sequence[Any], inputs: Sequence[Any],
                 outputs: Sequence[Any], *, name: str, opset: int,
                 doc_string: str | None = None) -> Any:
    """Wrap nodes and initialisers into a checked ONNX model.

    Parameters
    ----------
    nodes, inits : sequence of onnx.NodeProto / onnx.TensorProto
        The graph's nodes (in topological order) and initialisers.
    inputs, outputs : sequence of onnx.ValueInfoProto
        The graph's inputs and outputs.
    name : str
        Graph name.
    opset : int
        Default-domain opset.
    doc_string : str, optional
        Model description (credit lines go here).

    Returns
    -------
    onnx.ModelProto
        With ``ir_version`` capped at ``MAX_IR_VERSION``, passed by ``onnx.checker``.
    """
    import onnx
    from onnx import helper

    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs),
                              initializer=list(inits))
    extra = {} if doc_string is None else {"doc_string": doc_string}
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="emberd", **extra
    )
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model)
    return model
