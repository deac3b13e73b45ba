"""Refresh the IR's value types from ONNX's own shape inference.

`infer_types(model)` exports the model, runs `onnx.shape_inference.infer_shapes`
with data propagation (so shapes computed by Shape/Gather/Concat chains become
known), and copies each inferred type back onto the value the exporter named.
Types only ever gain information: a dim ONNX leaves unknown or symbolic keeps
what mdoc already knew, a rank ONNX does not know keeps mdoc's shape. Graph
inputs keep their declared types, constants keep the type of their array.

What ONNX leaves unknown, mostly inside If/Loop/Scan bodies that read outer
values, mdoc's own node-by-node inference then fills (`mdoc.scoped_inference`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, helper

from .ir import CONSTANT, Graph, Model, Value
from .onnx_export import export_model
from .scoped_inference import refine_types
from .types import merge, type_from_onnx

__all__ = ["infer_types", "merge"]


def infer_types(model: Model) -> bool:
    """Refine value types in place from ONNX shape inference; return whether any type changed."""
    changed = _onnx_types(model)
    return refine_types(model) or changed


def _onnx_types(model: Model) -> bool:
    names: dict[Value, str] = {}
    try:
        # large weights leave as typed inputs: inference needs their types, not a copy of their bytes
        proto = export_model(model, value_names=names, weights_as_inputs=WEIGHTS_LIMIT)
        _weights_as_inputs(proto.graph)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is a help: a model onnx cannot infer keeps the types it has
        return False
    types: dict[str, onnx.TypeProto] = {}
    _collect(inferred.graph, types)
    changed = False
    for graph in _graphs(model.graph):
        for node in graph:
            if node.op == CONSTANT:
                continue
            for v in node.outputs:
                name = names.get(v)
                if name is None or name not in types:
                    continue
                new = merge(v.type, type_from_onnx(types[name]))
                if new != v.type:
                    v.type = new
                    changed = True
    return changed


WEIGHTS_LIMIT = 1024
"""Constants of more elements than this reach ONNX's inference as typed inputs (data propagation reads only small
shape tensors, and a model past 2 GiB could not be handed to it at all)."""


def _weights_as_inputs(g: onnx.GraphProto, limit: int = WEIGHTS_LIMIT) -> None:
    """Large initializers become typed graph inputs: inference needs their types, not their bytes.

    Data propagation reads only small shape tensors, and a model past 2 GiB could
    not be handed to onnx's inference at all.
    """
    inputs = {vi.name for vi in g.input}
    keep = []
    for t in g.initializer:
        if int(np.prod(t.dims, dtype=np.int64)) <= limit:
            keep.append(t)
        elif t.name not in inputs:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)


def _collect(g: onnx.GraphProto, types: dict[str, onnx.TypeProto]) -> None:
    for vi in list(g.value_info) + list(g.output):
        if vi.HasField("type"):
            types[vi.name] = vi.type
    for node in g.node:
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                _collect(a.g, types)
            elif a.type == AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _collect(sub, types)


def _graphs(graph: Graph):
    yield graph
    for node in graph:
        for sub in node.subgraphs():
            yield from _graphs(sub)
