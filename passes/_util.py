"""Small graph helpers the cleanup passes share (not a pass: nothing here registers).

The IR's use lists record operands only; a nested body may also name an outer
value as one of its *outputs* (ONNX allows a branch to return a captured value),
which no use list sees. These helpers account for that, so a pass never erases
or replaces a value that a body still returns. `dims_content` is the small
symbolic analysis of shape computations that cse and simplify share.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mdoc.evaluator import onnx_slice
from mdoc.ir import Graph, Value
from mdoc.types import TensorType


def graphs(graph: Graph) -> Iterator[Graph]:
    """`graph` and every body nested in it, outermost first."""
    yield graph
    for node in graph:
        for sub in node.subgraphs():
            yield from graphs(sub)


def output_refs(graph: Graph) -> set[int]:
    """ids of the values that `graph` or any body nested in it returns."""
    return {id(v) for g in graphs(graph) for v in g.outputs}


def is_live(value: Value, refs: set[int]) -> bool:
    """Whether anything reads `value`: an operand anywhere, or a graph output (`refs` from `output_refs`)."""
    return value.has_uses() or id(value) in refs


def replace_value(graph: Graph, old: Value, new: Value, refs: set[int]) -> None:
    """`graph.replace_all_uses(old, new)` (operands, outputs, nested bodies' outputs), keeping `refs`
    (from `output_refs`) up to date: `new` takes over `old`'s place in it, so `is_live` stays true."""
    graph.replace_all_uses(old, new)
    if id(old) in refs:
        refs.discard(id(old))
        refs.add(id(new))


def keeps_output_name(graph: Graph, old: Value, new: Value) -> bool:
    """Whether replacing `old` by `new` keeps the model's output names.

    A top-level output's name is part of the model's interface. `replace_all_uses`
    hands it to `new`, except when `new` is a graph input or already another output:
    then the name would be lost, so such a rewrite must not happen. (Bodies' outputs
    are matched by position, their names do not matter.)
    """
    if graph.parent is not None or not any(o is old for o in graph.outputs):
        return True
    return not new.is_graph_input and not any(o is new for o in graph.outputs)


SHAPE_OPS = {"onnx.Shape", "onnx.Gather", "onnx.Slice", "onnx.Unsqueeze", "onnx.Squeeze", "onnx.Concat",
              "onnx.Reshape"}


def dims_content(v: Value, memo: dict | None = None):
    """What an int64 shape computation holds, as (shape, flat tuple of dims), or None when it is not known.

    Dims are ints or symbols: `Shape(x)` of `x: f32[N,3]` holds (N, 3); Gather, Slice,
    Concat, Unsqueeze, Squeeze and Reshape of such values (and of int64 constants) move
    those dims around. Two values with equal content are equal tensors.
    """
    memo = {} if memo is None else memo
    if v in memo:
        return memo[v]
    memo[v] = None  # cycles cannot happen in SSA, but keep the recursion finite anyway
    memo[v] = result = _content(v, memo)
    return result


def _content(v: Value, memo: dict):
    const = v.const_value
    if const is not None:
        if const.dtype != np.int64 or const.ndim > 1 or const.size > 64:
            return None
        return (const.shape, tuple(int(x) for x in const.reshape(-1)))
    node = v.producer()
    if node is None or len(node.outputs) != 1:
        return None
    op = node.op
    if op == "onnx.Shape":
        t = node.inputs[0].type
        if not isinstance(t, TensorType) or t.shape is None or any(d is None for d in t.shape):
            return None
        rank = len(t.shape)
        start, end = _clamp(node.attrs.get("start", 0), rank), _clamp(node.attrs.get("end", rank), rank)
        dims = tuple(t.shape[start:end])
        return ((len(dims),), dims)
    if op not in SHAPE_OPS:
        return None
    operands = [None if x is None else dims_content(x, memo) for x in node.inputs]
    data = operands[0]
    if data is None:
        return None
    shape, flat = data
    if op == "onnx.Gather":
        idx = operands[1]
        if len(shape) != 1 or idx is None or node.attrs.get("axis", 0) not in (0, -1):
            return None
        n = shape[0]
        picked = []
        for i in idx[1]:
            if not isinstance(i, int) or not -n <= i < n:
                return None
            picked.append(flat[i % n])
        return (idx[0], tuple(picked))
    if op == "onnx.Concat":
        if any(o is None or len(o[0]) != 1 for o in operands) or None in node.inputs:
            return None
        joined = tuple(d for o in operands for d in o[1])
        return ((len(joined),), joined)
    if op == "onnx.Slice":
        if len(shape) != 1 or any(o is None for o, x in zip(operands[1:], node.inputs[1:]) if x is not None):
            return None
        params = [o[1] if o is not None else None for o in operands[1:]]
        starts, ends = params[0], params[1] if len(params) > 1 else None
        axes = params[2] if len(params) > 2 else None
        steps = params[3] if len(params) > 3 else None
        if ends is None or len(starts) != 1 or len(ends) != 1 or (axes and axes[0] not in (0, -1)):
            return None
        step = steps[0] if steps else 1
        if step == 0 or not all(isinstance(x, int) for x in (starts[0], ends[0], step)):
            return None
        picked = tuple(flat[onnx_slice(starts[0], ends[0], step, len(flat))])
        return ((len(picked),), picked)
    # Unsqueeze, Squeeze, Reshape keep the elements in order: only the shape changes.
    t = node.outputs[0].type
    if not isinstance(t, TensorType) or not t.is_static or int(np.prod(t.shape, dtype=np.int64)) != len(flat):
        return None
    return (tuple(t.shape), flat)


def _clamp(i: int, rank: int) -> int:
    return min(max(i + rank if i < 0 else i, 0), rank)
