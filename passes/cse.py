"""cse: common-subexpression elimination, constants included.

Two nodes compute the same thing when they have the same op, the very same
operands (identity, not names), equal attributes and the same number of results.
Constants are equal when dtype, shape and bytes are (so 0.0 and -0.0 stay
apart, and equal NaNs merge). Attributes compare by value: arrays by dtype,
shape and content, floats by their bits, nested bodies structurally (same ops,
same wiring, same captured outer values). The binary commutative ops (Add, Mul,
And, ...) match with their operands in either order.

Shape computations compare by what they hold (`dims_content`): `Shape(x)` and
`Shape(y)` are equal when the types of x and y have the same dims, ints or
symbols (a symbol stands for one size throughout a model, as in ONNX), and
Gather/Slice/Concat/Unsqueeze of such values are equal when they pick the same
dims. So the Shape -> Gather -> Unsqueeze -> Concat chains an exporter repeats
for every Reshape collapse into one.

Scopes nest: a node inside an If/Loop/Scan body may be replaced by an equal
node of an enclosing graph that comes before the body's owner. Random ops,
training-mode Dropout and ops of custom domains never merge: equal operands do
not promise them equal results.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import onnx

from mdoc.evaluator import is_deterministic
from mdoc.ir import CONSTANT, Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass

from ._util import SHAPE_OPS, dims_content, keeps_output_name, output_refs, replace_value

_COMMUTATIVE = {"onnx.Add", "onnx.Mul", "onnx.And", "onnx.Or", "onnx.Xor", "onnx.Equal",
                "onnx.Max", "onnx.Min", "onnx.Sum", "onnx.Mean", "onnx.BitwiseAnd", "onnx.BitwiseOr",
                "onnx.BitwiseXor"}


@register_pass("cse")
@dataclass(frozen=True)
class CommonSubexpressionElimination(GraphPass):
    """Merge equal constants and nodes with the same op, operands and attributes (bodies compared structurally)."""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return _Cse(output_refs(graph)).graph(graph, [])


class _Cse:
    def __init__(self, refs: set[int]):
        self.refs = refs

    def graph(self, g: Graph, outer: list[dict]) -> bool:
        scopes = [{}] + outer
        changed = False
        for node in g.nodes():
            for sub in node.subgraphs():
                changed |= self.graph(sub, scopes)
            key = node_key(node)
            if key is None:
                continue
            match = next((s[key] for s in scopes if key in s), None)
            if match is None or match is node:
                scopes[0][key] = node
                continue
            if node.op == CONSTANT and not _same_array(match.attrs["value"], node.attrs["value"]):
                scopes[0][key] = node  # a digest collision: keep both
                continue
            if not all(keeps_output_name(g, old, new) for old, new in zip(node.outputs, match.outputs)):
                continue
            for old, new in zip(node.outputs, match.outputs):
                replace_value(g, old, new, self.refs)
            g.erase(node)
            changed = True
        return changed


def node_key(node: Node):
    """A hashable key equal for nodes that compute the same results, or None when the node must stay unique."""
    if node.op == CONSTANT:
        return ("const", array_key(node.attrs["value"]))
    if not is_deterministic(node):
        return None
    if node.op in SHAPE_OPS and len(node.outputs) == 1 and (c := dims_content(node.outputs[0])) is not None:
        return ("dims",) + c
    operands = tuple(None if v is None else id(v) for v in node.inputs)
    if node.op in _COMMUTATIVE and len(operands) == 2 and None not in operands:
        operands = tuple(sorted(operands))
    attrs = tuple(sorted((k, attr_key(v)) for k, v in node.attrs.items()))
    return (node.op, operands, attrs, len(node.outputs))


def array_key(a: np.ndarray):
    a = np.asarray(a)
    if a.dtype == object:
        return ("str", a.shape, tuple(x if isinstance(x, bytes) else str(x).encode() for x in a.reshape(-1)))
    data = _bytes_of(a)
    body = bytes(data) if data.nbytes <= 64 else hashlib.blake2b(data, digest_size=20).digest()
    return (a.dtype.str, a.shape, data.nbytes, body)


def _bytes_of(a: np.ndarray) -> memoryview:
    """The bytes of `a` as a view: a contiguous (often memory-mapped) weight is hashed and compared where it lies,
    not copied (`tobytes` of every weight of a 4 GB model would hold a second copy of the largest, twice)."""
    flat = (a if a.flags.c_contiguous else np.ascontiguousarray(a)).reshape(-1)
    return memoryview(flat.view(np.uint8) if flat.dtype.itemsize else flat.astype(np.uint8))


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return _bytes_of(a) == _bytes_of(b)


def attr_key(v):
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int):
        return ("i", v)
    if isinstance(v, float):
        return ("f", struct.pack("<d", v))
    if isinstance(v, (str, bytes)):
        return (type(v).__name__, v)
    if isinstance(v, np.ndarray):
        return ("a", array_key(v))
    if isinstance(v, Graph):
        return ("g", graph_key(v))
    if isinstance(v, onnx.TypeProto):
        return ("t", v.SerializeToString(deterministic=True))
    if isinstance(v, tuple):
        return ("l", tuple(attr_key(x) for x in v))
    return ("?", id(v))  # unknown kinds compare by identity: never wrongly equal


def graph_key(g: Graph):
    """A structural key of a body: equal for bodies that compute the same way from the same captured values."""
    local: dict[int, int] = {}

    def ref(v: Value | None):
        if v is None:
            return None
        i = local.get(id(v))
        return ("outer", id(v)) if i is None else i

    for v in g.inputs:
        local[id(v)] = len(local)
    parts = [tuple(str(v.type) for v in g.inputs)]
    for node in g:
        if node.op != CONSTANT and not is_deterministic(node):
            return ("unique", id(g))  # a body with a random op is never equal to another
        attrs = tuple(sorted((k, attr_key(v)) for k, v in node.attrs.items()))
        parts.append((node.op, tuple(ref(v) for v in node.inputs), attrs, len(node.outputs)))
        for o in node.outputs:
            local[id(o)] = len(local)
    parts.append(tuple(ref(v) for v in g.outputs))
    return tuple(parts)
