"""The reference evaluator: numpy kernels that compute one ONNX node from constant operands.

`try_fold(node, opset)` returns the node's results as numpy arrays with exactly
the element types ONNX specifies, or None when it cannot or must not: ops with
side effects or randomness, ops of custom domains, ops with bodies, operands
that are not all known, results that are not plain tensors, and any kernel
error (division by zero, out-of-range index, a shape that does not fit).

Hand kernels cover the ops that shape computations and weight preprocessing
use; everything else runs through `onnx.reference.ReferenceEvaluator` on a
one-node model, and its results are checked against the element types ONNX's
own inference gives that model, so a fallback result is never silently
promoted. `Shape` and `Size` fold from static types, and `Shape` also yields a
partial value (`shape_dims`) that lets `Gather`/`Slice` of its known dims fold
while other dims are symbolic.

`result_nbytes(node, inputs, opset)` says how large the results will be before
anything is computed, so a caller with a byte budget can refuse a Tile or
ConstantOfShape that would allocate gigabytes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .ir import Node, Value
from .ops import MDOC_OPS, is_annotation
from .types import DType, TensorType

# Ops whose results are random, or that exist only for their effect: never evaluated ahead of time.
NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})

# Ops whose results can be far larger than their operands: their size must be known before they run.
EXPANDING = frozenset({
    "ConstantOfShape", "Tile", "Expand", "Range", "EyeLike", "OneHot", "Resize", "Upsample", "Pad",
    "MatMul", "Gemm", "Einsum", "Gather", "GatherND", "GatherElements", "Col2Im", "ConvTranspose",
})

_PLAIN_DTYPES = frozenset(np.dtype(t) for t in (
    np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64, np.bool_))

Kernel = Callable[[Node, list, int], list]
_KERNELS: dict[str, Kernel] = {}


def kernel(*op_types: str):
    def wrap(fn: Kernel) -> Kernel:
        for op in op_types:
            _KERNELS[op] = fn
        return fn
    return wrap


class _Refuse(Exception):
    """A kernel declines: the operands are outside what it computes exactly."""


class _Fallback(Exception):
    """A kernel hands the node to the reference evaluator (element types numpy lacks, say)."""


# -- public API --------------------------------------------------------------------
def is_deterministic(node: Node) -> bool:
    """Whether equal operands always give `node` equal results (false for random ops and training Dropout).

    Ops of custom domains are not known to be, so they count as not deterministic.
    """
    domain = node.op.rpartition(".")[0]
    if domain not in ("onnx", "onnx.ml", "mdoc") or node.op_type in NONDETERMINISTIC:
        return False
    if node.op == "onnx.Dropout" and node.input(2) is not None:
        mode = node.input(2).const_value
        return mode is not None and not bool(np.asarray(mode).reshape(-1)[0])
    return True


def can_fold(node: Node) -> bool:
    """Whether `node`'s op may ever be evaluated ahead of time (ignores its operands); mdoc ops can when
    their definition gives their numpy meaning (`OpDef.evaluate`)."""
    if node.domain == "mdoc":
        opdef = MDOC_OPS.get(node.op)
        return opdef is not None and opdef.evaluate is not None
    return (node.op.startswith("onnx.") and node.op.count(".") == 1 and node.op != "onnx.Constant"
            and is_deterministic(node) and not any(True for _ in node.subgraphs()))


def try_fold(node: Node, opset: int, inputs: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray] | None:
    """The results of `node` computed from constant operands (or `inputs`), or None when it cannot fold.

    `opset` is the version of the default ONNX domain the node is read under.
    """
    if not can_fold(node):
        return None
    op = node.op_type
    if inputs is None:
        inputs = [None if v is None else v.const_value for v in node.inputs]
    inputs = [None if a is None else np.asarray(a) for a in inputs]
    partial = False
    if op in ("Gather", "Slice") and inputs and inputs[0] is None and node.inputs[0] is not None:
        dims = shape_dims(node.inputs[0])
        if dims is not None:  # unknown dims become -1, which no real dim is; results holding one refuse
            inputs[0] = np.array([-1 if d is None else d for d in dims], dtype=np.int64)
            partial = True
    if op not in ("Shape", "Size"):
        if any(v is not None and a is None for v, a in zip(node.inputs, inputs)):
            return None
    if any(a is not None and a.dtype == object for a in inputs):
        return None
    try:
        with np.errstate(all="ignore"):
            fn = _mdoc_kernel(node) if node.domain == "mdoc" else _KERNELS.get(op)
            plain = all(a is None or a.dtype in _PLAIN_DTYPES for a in inputs)
            if fn is not None and plain:
                try:
                    results = fn(node, inputs, opset)
                except _Fallback:
                    results = _reference(node, inputs, opset)
            elif op in ("Shape", "Size") or node.domain == "mdoc":
                results = None
            else:
                results = _reference(node, inputs, opset)
    except _Refuse:
        return None
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError, MemoryError, KeyError,
            AttributeError, NotImplementedError, RuntimeError):
        return None
    if results is None or len(results) != len(node.outputs):
        return None
    out = []
    for r, v in zip(results, node.outputs):
        if not isinstance(r, np.ndarray) and not np.isscalar(r):
            return None
        r = np.asarray(r)
        if r.dtype == object or not _fits(r, v):
            return None
        if partial and np.any(r < 0):
            return None
        out.append(r if r.flags.c_contiguous else r.copy(order="C"))
    return out


def _mdoc_kernel(node: Node) -> Kernel:
    evaluate = MDOC_OPS[node.op].evaluate
    return lambda node, inputs, opset: evaluate(node, inputs)


def shape_dims(value: Value) -> list | None:
    """The dims a `Shape` node's result holds, as ints where the operand's type knows them and None elsewhere.

    None when `value` is not the result of an `onnx.Shape` of a ranked tensor.
    """
    node = value.producer()
    if node is None or node.op != "onnx.Shape":
        return None
    t = node.inputs[0].type if node.inputs and node.inputs[0] is not None else None
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    dims = [d if isinstance(d, int) else None for d in t.shape]
    start, end = _shape_range(node, len(dims))
    return dims[start:end]


def result_nbytes(node: Node, inputs: Sequence[np.ndarray | None], opset: int) -> int | None:
    """The bytes `node`'s results will take, computed from operand shapes and values alone.

    None when it cannot be told cheaply; then the results' static types, when known, are the answer.
    """
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            value = node.attrs.get("value")
            item = value.dtype.itemsize if isinstance(value, np.ndarray) else 4
            return _numel(inputs[0]) * item
        if op == "Tile":
            return int(inputs[0].nbytes) * int(np.prod(inputs[1], dtype=np.int64))
        if op == "Expand":
            shape = np.broadcast_shapes(inputs[0].shape, tuple(int(d) for d in inputs[1]))
            return int(np.prod(shape, dtype=np.int64)) * inputs[0].dtype.itemsize
        if op == "Range":
            start, limit, delta = (float(a) for a in inputs[:3])
            if delta == 0:
                return None
            return max(int(math.ceil((limit - start) / delta)), 0) * inputs[0].dtype.itemsize
        if op == "EyeLike":
            return int(inputs[0].size) * 8
        if op in ("Cast", "CastLike"):
            to = DType.from_onnx(node.attrs["to"]).numpy if op == "Cast" else inputs[1].dtype
            return int(inputs[0].size) * to.itemsize
        if op in ELEMENTWISE:
            shape = np.broadcast_shapes(*[a.shape for a in inputs if a is not None])
            item = 1 if op in _COMPARE else max(a.dtype.itemsize for a in inputs if a is not None)
            return int(np.prod(shape, dtype=np.int64)) * item
        if op == "MatMul":
            a, b = inputs
            if a.ndim < 2 or b.ndim < 2:
                return max(a.nbytes, b.nbytes)
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            return int(np.prod(batch, dtype=np.int64)) * a.shape[-2] * b.shape[-1] * a.dtype.itemsize
        if op == "Gather":
            data, idx = inputs
            axis = node.attrs.get("axis", 0) % max(data.ndim, 1)
            return int(data.nbytes // max(data.shape[axis], 1)) * int(idx.size) if data.ndim else None
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError):
        return None
    return None


# -- checks ------------------------------------------------------------------------
def _fits(r: np.ndarray, v: Value) -> bool:
    """A result agrees with what the IR already says of its value: element type and known dims."""
    t = v.type
    if not isinstance(t, TensorType):
        return True
    try:
        if DType.from_numpy(r.dtype) is not t.dtype:
            return False
    except (ValueError, TypeError, KeyError):
        return False
    if t.shape is not None:
        if len(t.shape) != r.ndim:
            return False
        if any(isinstance(d, int) and d != s for d, s in zip(t.shape, r.shape)):
            return False
    return True


def _numel(shape: np.ndarray) -> int:
    dims = [int(d) for d in np.asarray(shape).reshape(-1)]
    if any(d < 0 for d in dims):
        raise ValueError("negative dim")
    return int(np.prod(dims, dtype=np.int64))


# -- helpers for kernels -----------------------------------------------------------
def _attr_or_input(node: Node, inputs: list, name: str, index: int, since: int, opset: int):
    """An operand that moved from an attribute to an input at opset `since` (axes, pads, ...)."""
    if opset >= since:
        a = inputs[index] if index < len(inputs) else None
        return None if a is None else [int(x) for x in np.asarray(a).reshape(-1)]
    value = node.attrs.get(name)
    return None if value is None else [int(x) for x in value]


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise _Refuse
        out.append(a % rank)
    return out


def _shape_range(node: Node, rank: int) -> tuple[int, int]:
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return start, end


def _static_shape(v: Value) -> tuple[int, ...]:
    t = v.type
    if not isinstance(t, TensorType) or not t.is_static:
        raise _Refuse
    return tuple(int(d) for d in t.shape)


# -- kernels: shapes ---------------------------------------------------------------
@kernel("Shape")
def _shape(node, inputs, opset):
    shape = _static_shape(node.inputs[0])
    start, end = _shape_range(node, len(shape))
    return [np.array(shape[start:end], dtype=np.int64)]


@kernel("Size")
def _size(node, inputs, opset):
    return [np.array(int(np.prod(_static_shape(node.inputs[0]), dtype=np.int64)), dtype=np.int64)]


@kernel("Reshape")
def _reshape(node, inputs, opset):
    x, shape = inputs[0], [int(d) for d in inputs[1].reshape(-1)]
    allowzero = node.attrs.get("allowzero", 0)
    dims = []
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= x.ndim:
                raise _Refuse
            d = x.shape[i]
        dims.append(d)
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise _Refuse
    return [x.reshape(dims)]


@kernel("Flatten")
def _flatten(node, inputs, opset):
    x = inputs[0]
    axis = node.attrs.get("axis", 1)
    if axis < 0:
        axis += x.ndim
    if not 0 <= axis <= x.ndim:
        raise _Refuse
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(outer, -1) if x.size else x.reshape(outer, int(np.prod(x.shape[axis:], dtype=np.int64)))]


@kernel("Unsqueeze")
def _unsqueeze(node, inputs, opset):
    x = inputs[0]
    axes = _attr_or_input(node, inputs, "axes", 1, 13, opset)
    if axes is None:
        raise _Refuse
    rank = x.ndim + len(axes)
    axes = sorted(_norm_axes(axes, rank))
    if len(set(axes)) != len(axes):
        raise _Refuse
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [x.reshape(shape)]


@kernel("Squeeze")
def _squeeze(node, inputs, opset):
    x = inputs[0]
    axes = _attr_or_input(node, inputs, "axes", 1, 13, opset)
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = _norm_axes(axes, x.ndim)
    if any(x.shape[a] != 1 for a in axes):
        raise _Refuse
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


@kernel("Concat")
def _concat(node, inputs, opset):
    arrays = [a for a in inputs if a is not None]
    rank = arrays[0].ndim
    if rank == 0 or any(a.ndim != rank or a.dtype != arrays[0].dtype for a in arrays):
        raise _Refuse
    axis = _norm_axes([node.attrs["axis"]], rank)[0]
    return [np.concatenate(arrays, axis=axis)]


@kernel("Gather")
def _gather(node, inputs, opset):
    data, idx = inputs
    if data.ndim == 0:
        raise _Refuse
    axis = _norm_axes([node.attrs.get("axis", 0)], data.ndim)[0]
    n = data.shape[axis]
    idx = idx.astype(np.int64)
    if np.any((idx < -n) | (idx >= n)):
        raise _Refuse
    return [np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)]


@kernel("Slice")
def _slice(node, inputs, opset):
    x = inputs[0]
    starts, ends, axes, steps = _slice_params(node, inputs, opset, x.ndim)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = onnx_slice(s, e, st, x.shape[a])
    return [x[tuple(index)].copy()]


def _slice_params(node: Node, inputs: list, opset: int, rank: int):
    if opset >= 10:
        starts = [int(v) for v in inputs[1].reshape(-1)]
        ends = [int(v) for v in inputs[2].reshape(-1)]
        axes = [int(v) for v in inputs[3].reshape(-1)] if len(inputs) > 3 and inputs[3] is not None else None
        steps = [int(v) for v in inputs[4].reshape(-1)] if len(inputs) > 4 and inputs[4] is not None else None
    else:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = node.attrs.get("axes"), None
        axes = None if axes is None else list(axes)
    axes = list(range(len(starts))) if axes is None else _norm_axes(axes, rank)
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes) or 0 in steps:
        raise _Refuse
    return starts, ends, axes, steps


def onnx_slice(start: int, end: int, step: int, dim: int) -> slice:
    """A Python slice with ONNX's clamping rules (which differ from Python's for negative steps)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@kernel("Transpose")
def _transpose(node, inputs, opset):
    x = inputs[0]
    perm = node.attrs.get("perm")
    perm = list(reversed(range(x.ndim))) if perm is None else list(perm)
    if sorted(perm) != list(range(x.ndim)):
        raise _Refuse
    return [np.transpose(x, perm).copy()]


@kernel("Expand")
def _expand(node, inputs, opset):
    x, shape = inputs
    target = np.broadcast_shapes(x.shape, tuple(int(d) for d in shape.reshape(-1)))
    return [np.broadcast_to(x, target).copy()]


@kernel("Tile")
def _tile(node, inputs, opset):
    x, reps = inputs
    reps = [int(r) for r in reps.reshape(-1)]
    if len(reps) != x.ndim or any(r < 0 for r in reps):
        raise _Refuse
    return [np.tile(x, reps)]


@kernel("ConstantOfShape")
def _constant_of_shape(node, inputs, opset):
    value = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if fill.size != 1:
        raise _Refuse
    shape = [int(d) for d in inputs[0].reshape(-1)]
    if any(d < 0 for d in shape):
        raise _Refuse
    return [np.full(shape, fill[0], dtype=fill.dtype)]


@kernel("Range")
def _range(node, inputs, opset):
    start, limit, delta = (a.reshape(()) for a in inputs[:3])
    dtype = start.dtype
    if limit.dtype != dtype or delta.dtype != dtype or delta == 0:
        raise _Refuse
    n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
    if dtype.kind in "iu":
        return [(int(start) + int(delta) * np.arange(n, dtype=np.int64)).astype(dtype)]
    return [(start + np.arange(n, dtype=dtype) * delta).astype(dtype)]


@kernel("Identity")
def _identity(node, inputs, opset):
    return [inputs[0].copy()]


# -- kernels: element-wise ---------------------------------------------------------
def _same(fn):
    """A kernel whose result has the element type of its first operand.

    float16 is computed in float32 and rounded once at the end, as onnxruntime does.
    """
    def k(node, inputs, opset):
        x = inputs[0]
        arrays = [a for a in inputs if a is not None]
        if x.dtype == np.float16:
            arrays = [a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays]
        return [np.asarray(fn(*arrays)).astype(x.dtype, copy=False)]
    return k


def _floats_only(fn):
    def k(node, inputs, opset):
        if inputs[0].dtype.kind != "f":
            raise _Refuse
        return _same(fn)(node, inputs, opset)
    return k


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero, as C and onnxruntime do."""
    if np.any(b == 0):
        raise _Refuse
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return q + fix.astype(q.dtype)


def _div(a, b):
    return _int_div(a, b) if a.dtype.kind in "iu" else np.divide(a, b)


def _pow(a, b):
    if a.dtype.kind in "iu":
        if np.any(b < 0):
            raise _Refuse
        return np.power(a.astype(np.int64), b.astype(np.int64))
    return np.power(a, b.astype(a.dtype) if b.dtype.kind != "f" or b.dtype.itemsize < a.dtype.itemsize else b)


def _relu(x):
    return np.maximum(x, x.dtype.type(0))


def _sigmoid(x):
    one = x.dtype.type(1)
    return one / (one + np.exp(-x))


ELEMENTWISE_KERNELS: dict[str, Callable] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
    "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil, "Relu": _relu,
    "Sigmoid": _sigmoid, "Tanh": np.tanh, "Sign": np.sign, "Round": np.round,
    "Sin": np.sin, "Cos": np.cos,
}
_FLOAT_ONLY = {"Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Sigmoid", "Tanh", "Round", "Sin", "Cos"}
_COMPARE = {"Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
            "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
            "Xor": np.logical_xor, "Not": np.logical_not}
ELEMENTWISE = frozenset(ELEMENTWISE_KERNELS) | frozenset(_COMPARE) | {"Where", "Max", "Min", "Sum", "Mean", "Clip",
                                                                    "Cast", "CastLike"}

for _op, _fn in ELEMENTWISE_KERNELS.items():
    kernel(_op)(_floats_only(_fn) if _op in _FLOAT_ONLY else _same(_fn))


def _bool_kernel(fn):
    def k(node, inputs, opset):
        arrays = [a for a in inputs if a is not None]
        if len(arrays) == 2 and arrays[0].dtype != arrays[1].dtype:
            raise _Refuse
        return [np.asarray(fn(*arrays), dtype=np.bool_)]
    return k


for _op, _fn in _COMPARE.items():
    kernel(_op)(_bool_kernel(_fn))


@kernel("Where")
def _where(node, inputs, opset):
    c, x, y = inputs
    if x.dtype != y.dtype or c.dtype != np.bool_:
        raise _Refuse
    return [np.where(c, x, y)]


def _variadic(fn):
    def k(node, inputs, opset):
        arrays = [a for a in inputs if a is not None]
        if any(a.dtype != arrays[0].dtype for a in arrays):
            raise _Refuse
        out = arrays[0]
        for a in arrays[1:]:
            out = fn(out, a)
        return [np.asarray(out).astype(arrays[0].dtype, copy=False)]
    return k


kernel("Max")(_variadic(np.maximum))
kernel("Min")(_variadic(np.minimum))
kernel("Sum")(_variadic(np.add))


@kernel("Mean")
def _mean(node, inputs, opset):
    arrays = [a for a in inputs if a is not None]
    if arrays[0].dtype.kind != "f":
        raise _Refuse
    total = _variadic(np.add)(node, arrays, opset)[0]
    return [(total / arrays[0].dtype.type(len(arrays))).astype(arrays[0].dtype)]


@kernel("Clip")
def _clip(node, inputs, opset):
    x = inputs[0]
    if opset >= 11:
        lo = inputs[1] if len(inputs) > 1 else None
        hi = inputs[2] if len(inputs) > 2 else None
    else:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
        lo = None if lo is None else np.asarray(lo, x.dtype)
        hi = None if hi is None else np.asarray(hi, x.dtype)
    out = x
    if lo is not None:
        out = np.maximum(out, lo.astype(x.dtype))
    if hi is not None:
        out = np.minimum(out, hi.astype(x.dtype))
    return [np.asarray(out).astype(x.dtype, copy=False)]


_CAST_TARGETS = {DType.F16, DType.F32, DType.F64, DType.I8, DType.I16, DType.I32, DType.I64,
                 DType.U8, DType.U16, DType.U32, DType.U64, DType.BOOL}


def _cast_to(x: np.ndarray, to: DType) -> np.ndarray:
    if to not in _CAST_TARGETS:
        raise _Fallback
    target = to.numpy
    if x.dtype.kind == "f" and target.kind in "iu":
        # Out-of-range and NaN conversions are undefined in ONNX; leave them to the runtime.
        info = np.iinfo(target)
        if not np.all(np.isfinite(x)) or np.any(x <= info.min - 1.0) or np.any(x >= info.max + 1.0):
            raise _Refuse
    return x.astype(target)


@kernel("Cast")
def _cast(node, inputs, opset):
    return [_cast_to(inputs[0], DType.from_onnx(node.attrs["to"]))]


@kernel("CastLike")
def _cast_like(node, inputs, opset):
    return [_cast_to(inputs[0], DType.from_numpy(inputs[1].dtype))]


# -- kernels: linear algebra and reductions ----------------------------------------
@kernel("MatMul")
def _matmul(node, inputs, opset):
    a, b = inputs
    if a.dtype != b.dtype or a.ndim == 0 or b.ndim == 0:
        raise _Refuse
    return [np.matmul(a, b).astype(a.dtype, copy=False)]


@kernel("Gemm")
def _gemm(node, inputs, opset):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if a.dtype.kind != "f":
        raise _Refuse
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    dt = a.dtype.type
    out = dt(node.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        out = out + dt(node.attrs.get("beta", 1.0)) * c
    return [np.asarray(out).astype(inputs[0].dtype, copy=False)]


def _reduce(fn, axes_input_since: int):
    def k(node, inputs, opset):
        x = inputs[0]
        axes = _attr_or_input(node, inputs, "axes", 1, axes_input_since, opset)
        keep = bool(node.attrs.get("keepdims", 1))
        if not axes:
            if opset >= axes_input_since and node.attrs.get("noop_with_empty_axes", 0):
                return [x.copy()]
            axes = list(range(x.ndim))
        axes = tuple(_norm_axes(axes, x.ndim)) if x.ndim else ()
        if x.size == 0:
            raise _Refuse  # ONNX gives identities (0, 1, -inf, ...) that numpy does not all share
        return [np.asarray(fn(x, axes, keep)).astype(x.dtype, copy=False)]
    return k


kernel("ReduceSum")(_reduce(lambda x, a, k: np.sum(x, axis=a, keepdims=k, dtype=x.dtype), 13))
kernel("ReduceProd")(_reduce(lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=x.dtype), 18))
kernel("ReduceMax")(_reduce(lambda x, a, k: np.max(x, axis=a, keepdims=k), 18))
kernel("ReduceMin")(_reduce(lambda x, a, k: np.min(x, axis=a, keepdims=k), 18))


# -- fallback: onnx's reference evaluator on a one-node model ----------------------
def _reference(node: Node, inputs: list, opset: int) -> list | None:
    from onnx import helper, shape_inference
    from onnx.reference import ReferenceEvaluator

    from .ops import schema_of

    domain, op_type = "", node.op_type
    in_names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    out_names = [f"out{i}" for i in range(len(node.outputs))]
    proto = helper.make_node(op_type, in_names, out_names)
    schema = schema_of(node.op, {"": opset})
    if schema is None:
        return None
    for name, value in sorted(node.attrs.items()):
        if is_annotation(name):
            continue
        proto.attribute.append(_attribute(name, value, schema))
    graph = helper.make_graph(
        [proto], "fold",
        [helper.make_tensor_value_info(n, DType.from_numpy(a.dtype).value, a.shape)
         for n, a in zip(in_names, inputs) if a is not None],
        [helper.make_value_info(n, _empty_type()) for n in out_names])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)])
    model.ir_version = 8
    expected = _inferred_dtypes(shape_inference, model, out_names)
    feeds = {n: a for n, a in zip(in_names, inputs) if a is not None}
    results = ReferenceEvaluator(model).run(None, feeds)
    checked = []
    for r, want in zip(results, expected):
        if not isinstance(r, np.ndarray) and not np.isscalar(r):
            return None
        r = np.asarray(r)
        if want is None or r.dtype != want:
            return None
        checked.append(r)
    return checked


def _empty_type():
    import onnx

    return onnx.TypeProto()


def _inferred_dtypes(shape_inference, model, names) -> list:
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception:  # onnx raises untyped errors from C++
        return [None] * len(names)
    types = {vi.name: vi.type for vi in inferred.graph.output}
    out = []
    for n in names:
        tp = types.get(n)
        if tp is None or tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.elem_type:
            out.append(None)
            continue
        try:
            out.append(DType.from_onnx(tp.tensor_type.elem_type).numpy)
        except (ValueError, TypeError, KeyError):
            out.append(None)
    return out


def _attribute(name: str, value, schema):
    from onnx import AttributeProto, helper, numpy_helper

    kind = schema.attributes[name].type if name in schema.attributes else None
    if isinstance(value, np.ndarray):
        a = AttributeProto(name=name, type=AttributeProto.TENSOR)
        a.t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value)))
        return a
    if isinstance(value, tuple):
        if value and isinstance(value[0], np.ndarray):
            return helper.make_attribute(name, [numpy_helper.from_array(np.ascontiguousarray(x)) for x in value])
        if kind == AttributeProto.FLOATS:
            value = [float(x) for x in value]
        return helper.make_attribute(name, list(value), attr_type=kind or AttributeProto.INTS)
    if kind == AttributeProto.FLOAT:
        value = float(value)
    return helper.make_attribute(name, value, attr_type=kind)
