"""Unify symbolic dims that the graph forces to be equal.

Why: ONNX shape inference gives a fresh symbol (`unk__7`) wherever two different symbols
meet, at every broadcast, every MatMul and every Reshape whose shape came from a
Shape/Slice chain. An exported BERT with inputs [N, S] comes out of it with a dozen names
for N and S. Downstream, those names are facts: a kernel cannot fuse a residual Add of
[unk__6, S, 256] and [unk__2, S, 256] (the shapes differ), and the Relax lowering emits a
general broadcast where an elementwise loop would do. The graph itself says they are
equal: two dims that meet in a broadcast are equal unless one of them is 1, a MatMul's
contraction dims are equal, Concat's other dims are equal.

So after ONNX's inference, `unify_dims` collects those equalities (union-find), and
rewrites every type with one representative per class: an int where the class holds one,
else the symbol of a graph input (`N`, `S`), else the first name seen. Only sound facts
count: a broadcast of two different symbols says nothing (a position embedding's
[unk, S, 256] meets the tokens' [N, S, 256] with unk = 1 at run time; merging unk with N,
as onnxruntime's symbolic inference suggests, made the exported model's shapes lie), while
a broadcast of a symbol with 1s, or of symbols already known equal, names the result.
"""

from __future__ import annotations

from collections.abc import Iterable

from .ir import Graph, Model, Node, Value
from .types import TensorType

# ops whose inputs broadcast against each other (numpy rules) into the output
BROADCAST_OPS = frozenset(f"onnx.{op}" for op in (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
    "PRelu"))
# ops whose output has the shape of their first input
SAME_SHAPE_OPS = frozenset(f"onnx.{op}" for op in (
    "Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Softmax", "LogSoftmax",
    "Cast", "CastLike", "Identity", "Clip", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Gelu", "Softplus",
    "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Dropout", "LayerNormalization",
    "BatchNormalization", "InstanceNormalization", "Mish", "Celu", "ThresholdedRelu", "Shrink", "Softsign",
    "RMSNormalization", "CumSum"))


class _Classes:
    """Union-find over dims; a class may hold one int."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, d: str) -> str:
        self.parent.setdefault(d, d)
        while self.parent[d] != d:
            self.parent[d] = self.parent[self.parent[d]]
            d = self.parent[d]
        return d

    def equal(self, a, b) -> None:
        """Record a == b (ints, symbols; unknown dims say nothing)."""
        if a is None or b is None or (isinstance(a, int) and isinstance(b, int)):
            return
        if isinstance(a, int):
            a, b = b, a
        ra = self.find(a)
        if isinstance(b, int):
            self.size.setdefault(ra, b)
            return
        rb = self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.size:
                self.size.setdefault(ra, self.size[rb])


def unify_dims(model: Model) -> bool:
    """Rewrite the types of `model` with one dim per class of equal dims; whether any changed."""
    classes = _Classes()
    graphs = list(_graphs(model.graph))
    while True:  # a broadcast's constraint may hold only once other classes merged
        before = len({classes.find(d) for d in list(classes.parent)}), len(classes.size)
        for graph in graphs:
            for node in graph:
                _constraints(node, classes)
        if (len({classes.find(d) for d in list(classes.parent)}), len(classes.size)) == before:
            break
    preferred = [d for v in model.graph.inputs for d in (_dims(v) or ()) if isinstance(d, str)]
    names: dict[str, object] = {}
    for d in preferred:
        names.setdefault(classes.find(d), d)
    changed = False
    for graph in graphs:
        for value in _values(graph):
            t = value.type
            if not isinstance(t, TensorType) or t.shape is None or value.is_graph_input:
                continue
            shape = tuple(_canonical(d, classes, names) for d in t.shape)
            if shape != t.shape:
                value.type = TensorType(t.dtype, shape)
                changed = True
    return changed


def _canonical(d, classes: _Classes, names: dict):
    if not isinstance(d, str):
        return d
    root = classes.find(d)
    if root in classes.size:
        return classes.size[root]
    return names.setdefault(root, d)


def _constraints(node: Node, classes: _Classes) -> None:
    out = _dims(node.outputs[0]) if node.outputs else None
    if node.op in BROADCAST_OPS:
        shapes = [_dims(v) for v in node.inputs if v is not None]
        if any(s is None for s in shapes) or out is None:
            return
        for k in range(1, len(out) + 1):
            dims = [s[-k] for s in shapes if len(s) >= k]
            if any(d is None for d in dims):
                continue
            sizes = {d for d in dims if isinstance(d, int) and d != 1}
            symbols = {classes.find(d) for d in dims if isinstance(d, str)}
            if sizes:  # the others are that size or 1
                classes.equal(out[-k], next(iter(sizes)))
            elif len(symbols) == 1:  # one symbol, the rest 1: the result is it
                classes.equal(out[-k], next(iter(symbols)))
            # two different symbols may be 1 and N at run time: nothing follows
    elif node.op in SAME_SHAPE_OPS:
        x = _dims(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
        if x is not None and out is not None and len(x) == len(out):
            for a, b in zip(x, out):
                classes.equal(a, b)
    elif node.op == "onnx.MatMul":
        a, b = (_dims(v) for v in node.inputs[:2])
        if a is None or b is None or out is None or len(a) < 2 or len(b) < 2:
            return
        classes.equal(a[-1], b[-2])
        classes.equal(out[-2], a[-2])
        classes.equal(out[-1], b[-1])
        for k in range(3, len(out) + 1):
            for s in (a, b):
                if len(s) >= k and s[-k] != 1:
                    classes.equal(out[-k], s[-k])
    elif node.op == "onnx.Concat":
        shapes = [_dims(v) for v in node.inputs if v is not None]
        if out is None or any(s is None or len(s) != len(out) for s in shapes):
            return
        axis = int(node.attrs.get("axis", 0)) % len(out)
        for s in shapes:
            for i, (a, b) in enumerate(zip(s, out)):
                if i != axis:
                    classes.equal(a, b)
    elif node.op == "onnx.Transpose":
        x = _dims(node.inputs[0])
        if x is None or out is None or len(x) != len(out):
            return
        perm = node.attrs.get("perm") or list(reversed(range(len(x))))
        for i, p in enumerate(perm):
            classes.equal(out[i], x[int(p)])


def _dims(value: Value | None):
    t = value.type if value is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _values(graph: Graph) -> Iterable[Value]:
    for node in graph:
        yield from node.outputs


def _graphs(graph: Graph):
    yield graph
    for node in graph:
        for sub in node.subgraphs():
            yield from _graphs(sub)
