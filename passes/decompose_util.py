"""A small op builder for the decompose-* passes (not a pass: nothing here registers).

Operands are IR values or numpy arrays. An op whose operands are all arrays is
computed right away in numpy (slicing a constant weight gives a constant, not a
Gather node); otherwise a node is placed before the anchor, spelled for the
model's opset (Unsqueeze and Split took attributes before opset 13, Clip before
11, Split wants `num_outputs` from 18), with its result type worked out so the
unrolled graph is as well typed as the node it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from mdoc.ir import Graph, Node, Value
from mdoc.types import UNKNOWN, DType, TensorType, Type

Operand = Union[Value, np.ndarray]


class Builder:
    """Emit nodes into `graph` before `before`, for default-domain opset `opset`, tagged with `provenance`.

    Nodes are named `<name>/<Op>_<n>` after the node they replace, or unnamed when it is.
    """

    def __init__(self, graph: Graph, before: Node, opset: int, provenance: str, name: str = ""):
        self.graph = graph
        self.before = before
        self.opset = opset
        self.provenance = provenance
        self.name = name
        self._consts: dict[object, tuple[np.ndarray, Value]] = {}
        self._count = 0

    # -- plumbing --------------------------------------------------------------
    def value(self, x: Operand) -> Value:
        """`x` as an IR value: arrays become constants (one per array; small ones one per content)."""
        if isinstance(x, Value):
            return x
        # small arrays (indices, shapes, scalars) are shared by content, others by identity
        key = (x.dtype.str, x.shape, x.tobytes()) if x.size <= 16 else id(x)
        hit = self._consts.get(key)
        if hit is None:
            hit = (x, self.graph.constant(x, before=self.before))
            self._consts[key] = hit
        return hit[1]

    def emit(self, op: str, inputs: Sequence[Operand | None], attrs: dict | None = None,
             types: Sequence[Type] | Type = UNKNOWN) -> Value | tuple[Value, ...]:
        types = [types] if not isinstance(types, (list, tuple)) else list(types)
        name = ""
        if self.name:  # node names must be unique (onnxruntime refuses repeats)
            self._count += 1
            name = f"{self.name}/{op.split('.')[-1]}_{self._count}"
        node = self.graph.add(op, [None if x is None else self.value(x) for x in inputs], attrs or {},
                              outputs=types, before=self.before, provenance=self.provenance, name=name)
        return node.outputs[0] if len(types) == 1 else node.outputs

    def i64(self, values) -> np.ndarray:
        return np.asarray(values, np.int64)

    # -- shape ops ---------------------------------------------------------------
    def gather(self, x: Operand, index: int | Value, axis: int) -> Operand:
        """`x` at position `index` (a number, or a scalar computed at run time) of `axis`; the axis goes away."""
        if isinstance(x, np.ndarray) and not isinstance(index, Value):
            return np.take(x, index, axis=axis)
        shape = shape_of(x)
        out = None if shape is None else shape[:axis] + shape[axis + 1:]
        at = index if isinstance(index, Value) else self.i64(index)
        return self.emit("onnx.Gather", [x, at], {"axis": axis}, tensor(x, out))

    def unsqueeze(self, x: Operand, axis: int) -> Operand:
        if isinstance(x, np.ndarray):
            return np.expand_dims(x, axis)
        shape = shape_of(x)
        out = None
        if shape is not None:
            a = axis if axis >= 0 else axis + len(shape) + 1
            out = shape[:a] + (1,) + shape[a:]
        if self.opset >= 13:
            return self.emit("onnx.Unsqueeze", [x, self.i64([axis])], {}, tensor(x, out))
        return self.emit("onnx.Unsqueeze", [x], {"axes": (axis,)}, tensor(x, out))

    def concat(self, xs: Sequence[Operand], axis: int) -> Operand:
        if len(xs) == 1:
            return xs[0]
        if all(isinstance(x, np.ndarray) for x in xs):
            return np.concatenate(xs, axis=axis)
        shapes = [shape_of(x) for x in xs]
        out = None
        if all(s is not None for s in shapes) and len({len(s) for s in shapes}) == 1:
            a = axis if axis >= 0 else axis + len(shapes[0])
            dims = [s[a] for s in shapes]
            joined = sum(dims) if all(isinstance(d, int) for d in dims) else None
            out = tuple(joined if i == a else _same([s[i] for s in shapes]) for i in range(len(shapes[0])))
        return self.emit("onnx.Concat", xs, {"axis": axis}, tensor(xs[0], out))

    def reshape(self, x: Operand, target: Sequence[int], shape: tuple | None) -> Operand:
        """Reshape to `target` (ONNX spelling: 0 copies a dim, -1 is inferred); `shape` is the result's type."""
        if isinstance(x, np.ndarray):
            return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(target)])
        return self.emit("onnx.Reshape", [x, self.i64(list(target))], {}, tensor(x, shape))

    def transpose(self, x: Operand, perm: Sequence[int]) -> Operand:
        if isinstance(x, np.ndarray):
            return np.ascontiguousarray(np.transpose(x, perm))
        shape = shape_of(x)
        out = None if shape is None else tuple(shape[p] for p in perm)
        return self.emit("onnx.Transpose", [x], {"perm": tuple(perm)}, tensor(x, out))

    def split(self, x: Operand, sizes: Sequence[int], axis: int) -> list[Operand]:
        """`x` cut along `axis` into pieces of `sizes`."""
        if isinstance(x, np.ndarray):
            return np.split(x, np.cumsum(sizes)[:-1], axis=axis)
        shape = shape_of(x)
        types = []
        for s in sizes:
            out = None
            if shape is not None:
                out = tuple(s if i == (axis % len(shape)) else d for i, d in enumerate(shape))
            types.append(tensor(x, out))
        equal = len(set(sizes)) == 1
        if self.opset >= 18:
            if equal:
                return list(self.emit("onnx.Split", [x], {"axis": axis, "num_outputs": len(sizes)}, types))
            return list(self.emit("onnx.Split", [x, self.i64(list(sizes))], {"axis": axis}, types))
        if self.opset >= 13:
            return list(self.emit("onnx.Split", [x, self.i64(list(sizes))], {"axis": axis}, types))
        return list(self.emit("onnx.Split", [x], {"axis": axis, "split": tuple(sizes)}, types))

    # -- arithmetic ----------------------------------------------------------------
    def binary(self, op: str, a: Operand, b: Operand) -> Operand:
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            fn = {"onnx.Add": np.add, "onnx.Sub": np.subtract, "onnx.Mul": np.multiply}[op]
            return fn(a, b).astype(np.result_type(a, b))
        return self.emit(op, [a, b], {}, tensor(a if isinstance(a, Value) else b, broadcast(shape_of(a), shape_of(b))))

    def add(self, a: Operand, b: Operand) -> Operand:
        return self.binary("onnx.Add", a, b)

    def sub(self, a: Operand, b: Operand) -> Operand:
        return self.binary("onnx.Sub", a, b)

    def mul(self, a: Operand, b: Operand) -> Operand:
        return self.binary("onnx.Mul", a, b)

    def matmul(self, a: Operand, b: Operand) -> Operand:
        """`a` [..., k] times a matrix `b` [k, n]."""
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return np.matmul(a, b)
        sa, sb = shape_of(a), shape_of(b)
        out = None if sa is None or sb is None else sa[:-1] + sb[-1:]
        return self.emit("onnx.MatMul", [a, b], {}, tensor(a if isinstance(a, Value) else b, out))

    def gemm(self, a: Operand, b: Operand, c: Operand) -> Value:
        """`a` [m, k] times `b` [k, n] plus `c` (broadcast to [m, n])."""
        sa, sb = shape_of(a), shape_of(b)
        out = None if sa is None or sb is None else (sa[0], sb[1])
        return self.emit("onnx.Gemm", [a, b, c], {}, tensor(a if isinstance(a, Value) else b, out))

    def unary(self, op: str, x: Value, **attrs) -> Value:
        return self.emit(op, [x], attrs, x.type)

    def clip(self, x: Value, bound: float) -> Value:
        if self.opset >= 11:
            dtype = x.type.dtype.numpy
            return self.emit("onnx.Clip", [x, np.asarray(-bound, dtype), np.asarray(bound, dtype)], {}, x.type)
        return self.emit("onnx.Clip", [x], {"min": float(-bound), "max": float(bound)}, x.type)


def shape_of(x: Operand) -> tuple | None:
    if isinstance(x, np.ndarray):
        return tuple(x.shape)
    t = x.type
    return t.shape if isinstance(t, TensorType) else None


def tensor(like: Operand, shape: tuple | None) -> Type:
    """A tensor type with the element type of `like` and `shape` (None: rank unknown)."""
    if isinstance(like, np.ndarray):
        return TensorType(DType.from_numpy(like.dtype), shape)
    t = like.type
    return TensorType(t.dtype, shape) if isinstance(t, TensorType) else UNKNOWN


def broadcast(a: tuple | None, b: tuple | None) -> tuple | None:
    """Numpy broadcasting of two shapes whose dims may be symbols; None where it cannot tell."""
    if a is None or b is None:
        return None
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        out.append(y if x == 1 else x if y == 1 or x == y else None)
    return tuple(out)


def _same(dims: list) -> object:
    return dims[0] if all(d == dims[0] for d in dims) else None


def describe(node: Node) -> str:
    """How messages name a node: `LSTM node 'lstm_1'`, or by its first named result when it has no name."""
    if node.name:
        return f"{node.op_type} node '{node.name}'"
    named = next((o.name for o in node.outputs if o.name), None)
    return f"unnamed {node.op_type} node" + (f" (result %{named})" if named else "")


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def unroll_all(graph: Graph, ctx, op: str, unroll, pass_name: str, limit: int) -> bool:
    """Apply `unroll(node, ctx, limit)` to every `op` node, bodies first; log why a node stays."""
    changed = False
    for node in graph.nodes():
        for sub in node.subgraphs():
            changed |= unroll_all(sub, ctx, op, unroll, pass_name, limit)
        if node.op == op:
            reason = unroll(node, ctx, limit)
            if reason:
                ctx.log(f"{pass_name}: {describe(node)} stays: {reason}")
            else:
                changed = True
    return changed
