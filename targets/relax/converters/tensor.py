"""Tensor and shape ops: Reshape, Flatten, Transpose, Concat, Split, Slice, Gather*, Expand, Shape,
Size, Squeeze, Unsqueeze, Pad, Tile, ConstantOfShape, Range, DepthToSpace, SpaceToDepth, Trilu, CumSum.

Shape subgraphs (`Shape -> Gather -> Unsqueeze -> Concat -> Reshape`, as PyTorch
exports them) are evaluated during lowering on SymTensors (see `context.py`):
Shape yields the input's dims, the ops below compute on them, and Reshape or
Expand receive the dims as integers and TIR expressions.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from mdoc.ir import Node

from ..context import LowerCtx, SymTensor, broadcast_dims, is_float, is_static, pdtype, prim, simplify
from ..registry import converter
from ._common import attr_ints, attr_str, norm_axes, norm_axis, operand_ints, prod, relax_dims, static_int
from .runtime_axes import axis_mask, inserted_dims, kept_dims, length, runtime_axes, spread

R = relax.op
INT64_MAX = (1 << 63) - 1


# -- Shape, Size ----------------------------------------------------------------


@converter("onnx.Shape", since=1)
def shape(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    rank = len(dims)
    start = int(ctx.attr("start", 0)) if ctx.opset >= 15 else 0
    end = ctx.attr("end") if ctx.opset >= 15 else None
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(int(end) + rank if int(end) < 0 else int(end), 0), rank)
    return [SymTensor.vector(dims[start:end])]


@converter("onnx.Size", since=1)
def size(ctx: LowerCtx, node: Node):
    return [SymTensor.scalar(prod(ctx.shape(0)))]


# -- Reshape, Flatten, Squeeze, Unsqueeze --------------------------------------------


def _reshape_sym(sym: SymTensor, dims: list) -> SymTensor | None:
    if not all(is_static(d) for d in dims) or len(dims) > 1:
        return None
    n = len(sym.values)
    if len(dims) == 1:
        d = int(dims[0])
        if d not in (-1, 0, n):
            return None
        return SymTensor(sym.dtype, (n,), sym.values)
    return SymTensor(sym.dtype, (), sym.values) if n == 1 else None


def _reshape(ctx: LowerCtx, new_dims: list, allowzero: bool):
    """Reshape operand 0 to `new_dims` (ONNX's 0 copies the input dim unless allowzero, -1 is inferred).

    Symbolic dims that come from the model's shapes are sizes, never the 0 or -1
    markers (a shape read from a run-time tensor goes through `_runtime_shape`).
    """
    in_dims = ctx.shape(0)
    out = []
    for i, d in enumerate(new_dims):
        if is_static(d):
            d = int(d)
            if d == 0 and not allowzero:
                d = in_dims[i]
            out.append(d)
        else:
            out.append(d)
    sym = ctx.sym(0)
    if sym is not None:
        r = _reshape_sym(sym, out)
        if r is not None:
            return r
    return R.reshape(ctx.input(0), relax_dims(out))


@converter("onnx.Reshape", since=1)
def reshape_v1(ctx: LowerCtx, node: Node):
    return [_reshape(ctx, attr_ints(ctx, "shape"), False)]


@converter("onnx.Reshape", since=5)
def reshape_v5(ctx: LowerCtx, node: Node):
    allowzero = bool(ctx.attr("allowzero", 0))
    if ctx.sym(1, max_size=1 << 16) is None:
        return [R.reshape(ctx.input(0), _runtime_shape(ctx, allowzero))]
    return [_reshape(ctx, ctx.shape_arg(1, "shape"), allowzero)]


def _runtime_shape(ctx: LowerCtx, allowzero: bool) -> list:
    """Reshape's target shape (operand 1, a run-time tensor) with its 0 and -1 markers resolved at
    run time, in tensor arithmetic, as fresh dims."""
    in_dims = ctx.shape(0)
    shape = ctx.input(1)
    (k,) = ctx.shape_of(shape)
    if not is_static(k):
        raise ctx.need_const(1, "shape")
    shape = ctx.emit(R.astype(shape, "int64"))
    zero, minus_one = relax.const(0, "int64"), relax.const(-1, "int64")
    if not allowzero:
        copied = ctx.dims_tensor([in_dims[i] if i < len(in_dims) else 0 for i in range(int(k))])
        shape = ctx.emit(R.where(R.equal(shape, zero), copied, shape))
    known = ctx.emit(R.prod(R.where(R.equal(shape, minus_one), relax.const(1, "int64"), shape)))
    numel = ctx.emit(R.reshape(ctx.dims_tensor([prod(in_dims)]), []))
    inferred = R.floor_divide(numel, R.maximum(known, relax.const(1, "int64")))
    shape = ctx.emit(R.where(R.equal(shape, minus_one), inferred, shape))
    return ctx.runtime_dims(shape)


@converter("onnx.Flatten", since=1)
def flatten(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    axis = int(ctx.attr("axis", 1))
    axis = axis + len(dims) if axis < 0 else axis
    if not 0 <= axis <= len(dims):
        raise ctx.error(f"axis {axis} is out of range for rank {len(dims)}")
    return [R.reshape(ctx.input(0), relax_dims([prod(dims[:axis]), prod(dims[axis:])]))]


def _squeeze(ctx: LowerCtx, axes: list[int] | None):
    dims = ctx.shape(0)
    if axes is None:
        if not all(is_static(d) for d in dims):
            raise ctx.error("Squeeze without axes needs a static input shape")
        axes = [i for i, d in enumerate(dims) if int(d) == 1]
    axes = norm_axes(ctx, axes, len(dims))
    out = [d for i, d in enumerate(dims) if i not in axes]
    sym = ctx.sym(0)
    if sym is not None and len(out) == 0:
        return SymTensor(sym.dtype, (), sym.values)
    return R.reshape(ctx.input(0), relax_dims(out))


@converter("onnx.Squeeze", since=1)
def squeeze_v1(ctx: LowerCtx, node: Node):
    return [_squeeze(ctx, attr_ints(ctx, "axes"))]


@converter("onnx.Squeeze", since=13)
def squeeze_v13(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    axes = runtime_axes(ctx, 1, len(dims)) if ctx.has_input(1) else None
    if axes is not None and length(axes):  # which dims go is known at run time; how many is the axes' length
        out = kept_dims(ctx, dims, axis_mask(ctx, axes, len(dims)), len(dims) - length(axes))
        return [R.reshape(ctx.input(0), relax_dims(out))]
    return [_squeeze(ctx, operand_ints(ctx, 1, "axes"))]


def _unsqueeze(ctx: LowerCtx, axes: list[int]):
    dims = ctx.shape(0)
    rank = len(dims) + len(axes)
    axes = sorted(norm_axes(ctx, axes, rank))
    out = list(dims)
    for a in axes:
        out.insert(a, 1)
    sym = ctx.sym(0)
    if sym is not None and len(out) == 1:
        return SymTensor(sym.dtype, (1,), sym.values)
    return R.reshape(ctx.input(0), relax_dims(out))


@converter("onnx.Unsqueeze", since=1)
def unsqueeze_v1(ctx: LowerCtx, node: Node):
    return [_unsqueeze(ctx, attr_ints(ctx, "axes"))]


@converter("onnx.Unsqueeze", since=13)
def unsqueeze_v13(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    n = ctx.shape(1)
    rank = len(dims) + (int(n[0]) if len(n) == 1 and is_static(n[0]) else 0)
    axes = runtime_axes(ctx, 1, rank)
    if axes is not None:
        out = inserted_dims(ctx, dims, axis_mask(ctx, axes, rank))
        return [R.reshape(ctx.input(0), relax_dims(out))]
    return [_unsqueeze(ctx, operand_ints(ctx, 1, "axes"))]


# -- Transpose, Concat, Split --------------------------------------------------------


@converter("onnx.Transpose", since=1)
def transpose(ctx: LowerCtx, node: Node):
    rank = ctx.rank(0)
    perm = attr_ints(ctx, "perm") or list(range(rank))[::-1]
    if perm == list(range(rank)):
        sym = ctx.sym(0)
        return [sym if sym is not None else ctx.input(0)]
    return [R.permute_dims(ctx.input(0), norm_axes(ctx, perm, rank))]


@converter("onnx.Concat", since=1)
def concat(ctx: LowerCtx, node: Node):
    present = [i for i in range(ctx.num_inputs) if ctx.has_input(i)]
    syms = [ctx.sym(i, max_size=1 << 12) for i in present]
    if all(s is not None and len(s.shape) == 1 for s in syms):
        values = [v for s in syms for v in s.values]
        return [SymTensor(syms[0].dtype, (len(values),), values)]
    rank = ctx.rank(present[0])
    axis = norm_axis(ctx, int(ctx.attr("axis", 1 if ctx.opset < 4 else 0)), rank)
    # ONNX allows empty operands (e.g. a [0] shape piece); Relax does not need them
    keep = [i for i in present if not (is_static(ctx.shape(i)[axis]) and int(ctx.shape(i)[axis]) == 0)]
    keep = keep or present[:1]
    xs = [ctx.input(i) for i in keep]
    if len(xs) == 1:
        return [xs[0]]
    return [R.concat(ctx.aligned(*xs, concat_axis=axis), axis=axis)]


@converter("onnx.Split", since=1)
def split(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", 0)), len(dims))
    n = len(node.outputs)
    if ctx.opset >= 13 and ctx.has_input(1) and ctx.const(1) is None and ctx.sym(1) is None:
        return _split_runtime(ctx, axis, n)
    if ctx.opset >= 13 or (ctx.opset < 2 and ctx.has_input(1)):
        sizes = operand_ints(ctx, 1, "split")
    else:
        sizes = attr_ints(ctx, "split")
    if sizes is None:
        dim = dims[axis]
        if ctx.opset >= 18 and ctx.attr("num_outputs") is not None:
            n = int(ctx.attr("num_outputs"))
            d = static_int(ctx, dim, "split axis dim")
            chunk = -(-d // n)
            sizes = [min(chunk, d - k * chunk) for k in range(n)]
        elif is_static(dim):
            if int(dim) % n:
                raise ctx.error(f"axis dim {dim} does not split into {n} equal parts")
            sizes = [int(dim) // n] * n
        else:
            x = ctx.input(0)
            t = ctx.emit(R.split(x, n, axis=axis))
            return [relax.TupleGetItem(t, k) for k in range(n)]
    x = ctx.input(0)
    if len(sizes) == 1:
        return [x]
    if 0 in sizes:  # R.split refuses repeated split points: slice each piece
        ends = np.cumsum(sizes).tolist()
        return [R.strided_slice(x, [axis], [e - n], [e]) for n, e in zip(sizes, ends)]
    points = list(np.cumsum(sizes[:-1]).tolist())
    t = ctx.emit(R.split(x, points, axis=axis))
    return [relax.TupleGetItem(t, k) for k in range(len(sizes))]


def _split_runtime(ctx: LowerCtx, axis: int, n: int) -> list:
    """Split with sizes read at run time: one piece per size, each a slice between running sums."""
    shape = ctx.shape(1)
    if shape != [n]:
        raise ctx.error(f"split has shape {shape}, but the node has {n} outputs")
    sizes = ctx.runtime_dims(ctx.input(1), "split")
    x = ctx.input(0)
    pieces, start = [], prim(0)
    for size in sizes:
        pieces.append(R.strided_slice(x, axes=[axis], begin=[start], end=[start + size], assume_inbound=True))
        start = start + size
    return pieces


# -- Slice ----------------------------------------------------------------------------


def _slice(ctx: LowerCtx, starts, ends, axes, steps):
    dims = ctx.shape(0)
    rank = len(dims)
    axes = list(range(len(starts))) if axes is None else norm_axes(ctx, axes, rank)
    steps = [1] * len(starts) if steps is None else steps
    if any(is_static(s) and int(s) == 0 for s in steps):
        raise ctx.error("a step of 0 is not allowed")
    sym = ctx.sym(0, max_size=1 << 12)
    if sym is not None and len(sym.shape) == 1 and all(is_static(v) for v in list(starts) + list(ends) + steps):
        # python slicing clamps exactly as ONNX Slice does
        values = sym.values[int(starts[0]):int(ends[0]):int(steps[0])]
        return SymTensor(sym.dtype, (len(values),), values)
    begin, end = [], []
    for i, a in enumerate(axes):
        b, e, st = starts[i], ends[i], steps[i]
        d = dims[a]
        b = _clamp_index(b, d, int(st) if is_static(st) else 1, True)
        e = _clamp_index(e, d, int(st) if is_static(st) else 1, False)
        begin.append(b)
        end.append(e)
    # With positive steps and indices already in [0, dim] (static ones clamped above, symbolic
    # ones assumed to be, as shape subgraphs produce them), tell Relax the slice is in bounds:
    # its canonicalization of symbolic indices otherwise puts if_then_else into shapes, which
    # FuseOps cannot handle (TVM 0.27).
    inbound = all(is_static(st) and int(st) > 0 for st in steps) and all(
        not is_static(v) or int(v) >= 0 for v in begin + end)
    x = ctx.input(0)
    out = R.strided_slice(x, axes=axes, begin=relax_dims(begin), end=relax_dims(end),
                          strides=relax_dims(steps), assume_inbound=inbound)
    return out


def _clamp_index(v, dim, step, is_begin):
    """Clamp a huge static index (INT64_MAX-like) to the dim so that Relax sees sane numbers."""
    if not is_static(v):
        return v
    v = int(v)
    if is_static(dim):
        d = int(dim)
        if v < 0:
            v = v + d
        if step > 0:
            return min(max(v, 0), d)
        v = min(max(v, -1), d - 1)
        # Relax reads a negative index as counting from the end: "before index 0" must be -d - 1
        return -d - 1 if v == -1 else v
    if step > 0 and v >= 10**9:
        # "to the end": INT32_MAX / INT64_MAX, or tf2onnx's 1e9. min(dim, v) would be exact, but
        # Relax cannot broadcast min(N, 1e9) against N, so a dim that long is taken as impossible.
        return dim
    if step < 0 and v <= -(1 << 31):
        return -(1 << 62)
    if v < 0 and step > 0:
        return prim(dim) + v  # counted from the end of a symbolic dim
    return v


@converter("onnx.Slice", since=1)
def slice_v1(ctx: LowerCtx, node: Node):
    return [_slice(ctx, attr_ints(ctx, "starts"), attr_ints(ctx, "ends"), attr_ints(ctx, "axes"), None)]


def _slice_runtime(ctx: LowerCtx, axes: list[int] | None, steps: list[int] | None):
    """Slice with starts/ends read at run time (axes and steps known): the indices are clamped as
    ONNX says in tensor arithmetic, axes with negative steps are flipped first (so every step is
    positive and every index in [0, dim]), then `dynamic_strided_slice` cuts."""
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    rank = len(dims)
    n = int(ctx.shape(1)[0])
    axes = list(range(n)) if axes is None else norm_axes(ctx, axes, rank)
    steps = [1] * n if steps is None else steps
    if len(axes) != n or len(steps) != n:
        raise ctx.error(f"starts, ends, axes and steps have different lengths ({n}, {len(axes)}, {len(steps)})")
    if 0 in steps:
        raise ctx.error("a step of 0 is not allowed")
    for a, st in zip(axes, steps):
        if st < 0:
            x = ctx.emit(R.flip(x, a))
    i64 = lambda v: relax.const(np.array(v, np.int64), "int64")  # noqa: E731
    d = ctx.dims_tensor([dims[a] for a in axes])
    last = ctx.emit(R.subtract(d, i64(1)))
    negative = relax.const(np.array([st < 0 for st in steps]))

    def clamp(i: int) -> relax.Expr:
        v = ctx.emit(R.astype(ctx.input(i), "int64"))
        v = ctx.emit(R.where(R.less(v, i64(0)), R.add(v, d), v))
        forward = R.minimum(R.maximum(v, i64(0)), d)
        backward = R.subtract(last, R.minimum(R.maximum(v, i64(-1)), last))  # index in the flipped axis
        return ctx.emit(R.where(negative, backward, forward))

    begin = clamp(1)
    end = ctx.emit(R.maximum(clamp(2), begin))
    where = {a: j for j, a in enumerate(axes)}

    def full(v: relax.Expr, default) -> relax.Expr:
        pieces = [R.strided_slice(v, [0], [where[k]], [where[k] + 1]) if k in where else default(k)
                  for k in range(rank)]
        return ctx.emit(R.concat(pieces, axis=0))

    begin = full(begin, lambda k: i64([0]))
    end = full(end, lambda k: ctx.dims_tensor([dims[k]]))
    strides = i64([abs(steps[where[k]]) if k in where else 1 for k in range(rank)])
    return R.dynamic_strided_slice(x, begin, end, strides)


def _slice_kernel(ctx: LowerCtx) -> relax.Expr:
    """Slice with axes or steps read at run time: one gather kernel, out[i] = x[begin + i * step].

    Per dim of the input, the entry whose axis names it gives begin, end and step (else 0,
    dim, 1), clamped as ONNX says, and the length is ceil((end - begin) / step), all in
    tensor arithmetic; begin, length and step then become run-time dims.
    """
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    rank = len(dims)
    n = ctx.shape(1)
    if len(n) != 1 or not is_static(n[0]):
        raise ctx.need_const(1, "starts, of a length known only at run time")
    n = int(n[0])
    i64 = lambda v: relax.const(np.array(v, np.int64), "int64")  # noqa: E731

    def operand(i: int, default: int) -> relax.Expr:
        if not ctx.has_input(i):
            return i64([default] * n)
        return ctx.emit(R.astype(ctx.input(i), "int64"))

    axes = runtime_axes(ctx, 3, rank) if ctx.has_input(3) else None
    if axes is None:
        axes = i64(norm_axes(ctx, operand_ints(ctx, 3, "axes") or list(range(n)), rank))
    if ctx.shape_of(axes) != [n] or (ctx.has_input(4) and ctx.shape(4) != [n]):
        steps = ctx.shape(4) if ctx.has_input(4) else None
        raise ctx.error(f"starts has shape {[n]}, axes {ctx.shape_of(axes)}, steps {steps}: they must have one length")
    d = ctx.dims_tensor(dims)
    b = spread(ctx, axes, operand(1, 0), i64([0] * rank), rank)
    e = spread(ctx, axes, operand(2, 0), d, rank)
    st = spread(ctx, axes, operand(4, 1), i64([1] * rank), rank)
    b = ctx.emit(R.where(R.less(b, i64(0)), R.add(b, d), b))
    e = ctx.emit(R.where(R.less(e, i64(0)), R.add(e, d), e))
    forward = ctx.emit(R.greater(st, i64(0)))
    last = ctx.emit(R.subtract(d, i64(1)))
    clip = lambda v, lo, hi: R.minimum(R.maximum(v, lo), hi)  # noqa: E731
    b = ctx.emit(R.where(forward, clip(b, i64(0), d), clip(b, i64(0), last)))
    e = ctx.emit(R.where(forward, clip(e, i64(0), d), clip(e, i64(-1), last)))
    span = ctx.emit(R.where(forward, R.subtract(e, b), R.subtract(b, e)))
    step = ctx.emit(R.maximum(R.abs(st), i64(1)))
    size = ctx.emit(R.maximum(R.floor_divide(R.subtract(R.add(span, step), i64(1)), step), i64(0)))
    values = ctx.runtime_dims(ctx.emit(R.concat([b, size, st], axis=0)), "slice")
    begin, size, stride = values[:rank], values[rank:2 * rank], values[2 * rank:]

    def compute(t: te.Tensor, begin: list, size: list, stride: list) -> te.Tensor:
        return te.compute(size, lambda *i: t(*[b + j * s for b, j, s in zip(begin, i, stride)]), name="slice")

    # the dims go in as arguments: emit_te passes a PrimFunc only the vars it is given or finds in shapes
    return ctx.bb.emit_te(compute, x, list(begin), list(size), list(stride), primfunc_name_hint="slice")


@converter("onnx.Slice", since=10)
def slice_v10(ctx: LowerCtx, node: Node):
    if any(ctx.has_input(i) and ctx.const(i) is None and ctx.sym(i) is None for i in (3, 4)):
        return [_slice_kernel(ctx)]  # axes or steps at run time
    if ctx.sym(1, max_size=1 << 16) is None or ctx.sym(2, max_size=1 << 16) is None:
        axes = operand_ints(ctx, 3, "axes")
        steps = operand_ints(ctx, 4, "steps")
        return [_slice_runtime(ctx, axes, steps)]
    starts = ctx.shape_arg(1, "starts")
    ends = ctx.shape_arg(2, "ends")
    axes = operand_ints(ctx, 3, "axes")
    steps = ctx.shape_arg(4, "steps") if ctx.has_input(4) else None
    if steps is not None and not all(is_static(s) for s in steps):
        raise ctx.need_const(4, "steps")
    return [_slice(ctx, starts, ends, axes, [int(s) for s in steps] if steps is not None else None)]


# -- Gather family ----------------------------------------------------------------------


def _normalized_indices(ctx: LowerCtx, i: int, dim) -> relax.Expr:
    """Operand `i` (indices into an axis of size `dim`) with negative indices wrapped."""
    array = ctx.const(i)
    if array is not None and is_static(dim):
        array = np.where(array < 0, array + int(dim), array).astype(array.dtype)
        return relax.const(array)
    idx = ctx.input(i)
    dt = str(idx.ty.dtype)
    if dt.startswith("uint"):
        return idx
    zero = relax.const(0, dt)
    n = relax.const(int(dim), dt) if is_static(dim) else \
        R.astype(R.reshape(R.shape_to_tensor(relax.ShapeExpr([prim(dim)])), []), dt)
    return ctx.emit(R.where(R.less(idx, zero), R.add(idx, n), idx))


@converter("onnx.Gather", since=1)
def gather(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", 0)), len(dims))
    sym, idx = ctx.sym(0, max_size=1 << 12), ctx.const(1)
    if sym is not None and len(sym.shape) == 1 and idx is not None and idx.ndim <= 1:
        n = len(sym.values)
        picked = [sym.values[int(k) + n if int(k) < 0 else int(k)] for k in idx.reshape(-1)]
        return [SymTensor(sym.dtype, tuple(idx.shape), picked)]
    if ctx.const(1) is None and not is_static(dims[axis]):
        # run-time indices into a run-time axis: take's "wrap" mode maps [-n, n) onto [0, n) with n
        # read off the data's own shape (the where of `_normalized_indices` needs n as a tensor, a
        # shape_to_tensor that TVM's FuseTIR fails on when n is a var a match_cast defined)
        return [R.take(ctx.input(0), ctx.input(1), axis=axis, mode="wrap")]
    indices = _normalized_indices(ctx, 1, dims[axis])
    return [R.take(ctx.input(0), indices, axis=axis)]


@converter("onnx.GatherElements", since=11)
def gather_elements(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", 0)), len(dims))
    indices = _normalized_indices(ctx, 1, dims[axis])
    return [R.gather_elements(ctx.input(0), indices, axis=axis)]


@converter("onnx.GatherND", since=11)
def gather_nd(ctx: LowerCtx, node: Node):
    return [R.gather_nd(ctx.input(0), ctx.input(1), batch_dims=int(ctx.attr("batch_dims", 0)))]


# -- Expand, Tile, ConstantOfShape, Range ------------------------------------------------


@converter("onnx.Expand", since=8)
def expand(ctx: LowerCtx, node: Node):
    target = ctx.shape_arg(1, "shape")
    out = broadcast_dims(ctx.shape(0), target)
    sym = ctx.sym(0)
    if sym is not None and len(out) <= 1 and all(is_static(d) for d in out):
        n = int(out[0]) if out else 1
        if len(sym.values) in (1, n):
            return [SymTensor(sym.dtype, tuple(int(d) for d in out),
                              sym.values * (n if len(sym.values) == 1 else 1))]
    if list(out) == list(ctx.shape(0)):
        return [ctx.input(0)]
    return [R.broadcast_to(ctx.input(0), relax_dims(out))]


@converter("onnx.Tile", since=6)
def tile(ctx: LowerCtx, node: Node):
    sym = ctx.sym(1, max_size=1 << 12)
    if sym is not None and sym.static:
        return [R.tile(ctx.input(0), [int(r) for r in sym.values])]
    # repeats computed from dims or read at run time: out[i] = x[i mod dims]
    dims = ctx.shape(0)
    repeats = sym.values if sym is not None else ctx.runtime_dims(ctx.input(1), "r")
    if len(repeats) != len(dims):
        raise ctx.error(f"repeats has {len(repeats)} elements, the input has rank {len(dims)}")

    def compute(x: te.Tensor) -> te.Tensor:
        return te.compute([prim(r) * prim(d) for r, d in zip(repeats, dims)],
                          lambda *i: x(*[tirx.floormod(k, prim(d)) for k, d in zip(i, dims)]), name="tile")

    return [ctx.bb.emit_te(compute, ctx.input(0), primfunc_name_hint="tile")]


@converter("onnx.ConstantOfShape", since=9)
def constant_of_shape(ctx: LowerCtx, node: Node):
    value = ctx.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    dims = ctx.shape_arg(0, "shape")
    dtype = str(value.dtype)
    if all(is_static(d) for d in dims):
        shape = [int(d) for d in dims]
        if len(dims) <= 1 and (not dims or shape[0] <= 64):
            return [SymTensor.from_array(np.full(shape, value[0], dtype=value.dtype))]
        if int(np.prod(shape)) <= (1 << 26):
            # a constant now rather than R.full folded later: FoldConstant would compile and run a
            # kernel per tensor (the onnx "light" models make every weight this way)
            return [relax.const(np.full(shape, value[0], dtype=value.dtype), dtype)]
    return [R.full(relax_dims(dims), relax.const(value[0], dtype), dtype)]


@converter("onnx.Range", since=11)
def range_(ctx: LowerCtx, node: Node):
    syms = [ctx.sym(i) for i in range(3)]
    if any(s is None for s in syms):
        return [_range_runtime(ctx)]
    dtype = syms[0].dtype
    arrays = [s.numpy() for s in syms]
    if all(a is not None for a in arrays):
        out = np.arange(arrays[0].reshape(()), arrays[1].reshape(()), arrays[2].reshape(()), dtype=dtype)
        return [SymTensor.from_array(out) if out.size <= 64 else relax.const(out)]
    start, limit, delta = (s.values[0] for s in syms)
    whole = _integral_range(start, limit, delta)
    if is_float(dtype) and whole is not None:
        # a float Range over a dim (YOLOv8's anchor grid): counted in ints, cast after, so that its
        # length is a ceildiv, not ceil() of a float, which Relax cannot carry in a shape
        return [R.astype(R.arange(*whole, "int64"), dtype)]
    return [R.arange(prim(start, dtype), prim(limit, dtype), prim(delta, dtype), dtype)]


def _integral_range(start, limit, delta):
    """(start, limit, delta) as int64 when start and delta are whole numbers and limit is a cast of
    an integer dim expression; else None."""
    if not (is_static(start) and is_static(delta) and float(start).is_integer() and float(delta).is_integer()):
        return None
    if not isinstance(limit, tirx.Cast) or not pdtype(limit.value).startswith("int") or int(delta) == 0:
        return None
    return int(start), tirx.Cast("int64", limit.value) if pdtype(limit.value) != "int64" else limit.value, int(delta)


def _range_runtime(ctx: LowerCtx) -> relax.Expr:
    """Range of run-time start, limit, delta: its length max(ceil((limit - start) / delta), 0) is
    computed in float64 and bound to a fresh dim n, then start + arange(n) * delta."""
    dtype = ctx.dtype(0)
    start, limit, delta = (ctx.scalar(i) for i in range(3))
    wide = [ctx.emit(R.astype(v, "float64")) for v in (start, limit, delta)]
    count = R.maximum(R.ceil(R.divide(R.subtract(wide[1], wide[0]), wide[2])), relax.const(0.0, "float64"))
    (n,) = ctx.runtime_dims(ctx.emit(R.reshape(R.astype(count, "int64"), [1])), "n")

    def compute(first: te.Tensor, step: te.Tensor) -> te.Tensor:
        return te.compute([n], lambda i: first() + tirx.Cast(dtype, i) * step(), name="range")

    return ctx.bb.emit_te(compute, start, delta, primfunc_name_hint="range")


# -- Pad -----------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad_operand(ctx: LowerCtx, mode: str, axes: list[int] | None):
    """Pad's data operand, its dims and rank, and the padded axes (all when not given); checks the mode."""
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    rank = len(dims)
    if mode not in _PAD_MODES:
        raise ctx.error(f"pad mode {mode!r} is not one of constant, reflect, edge, wrap")
    axes = list(range(rank)) if axes is None else norm_axes(ctx, axes, rank)
    return x, dims, rank, axes


def _pad(ctx: LowerCtx, pads: list[int], value: float, mode: str, axes: list[int] | None = None):
    x, dims, rank, axes = _pad_operand(ctx, mode, axes)
    k = len(axes)
    before, after = [0] * rank, [0] * rank
    for j, a in enumerate(axes):
        before[a], after[a] = int(pads[j]), int(pads[k + j])
    # negative pads crop
    if any(p < 0 for p in before + after):
        crop_axes = [a for a in range(rank) if before[a] < 0 or after[a] < 0]
        x = ctx.emit(R.strided_slice(
            x, axes=crop_axes, begin=[max(0, -before[a]) for a in crop_axes],
            end=relax_dims([dims[a] + min(0, after[a]) for a in crop_axes])))
        before, after = [max(0, p) for p in before], [max(0, p) for p in after]
    if not any(before + after):
        return x
    width = [v for a in range(rank) for v in (before[a], after[a])]
    return R.nn.pad(x, width, _PAD_MODES[mode], float(value))


@converter("onnx.CenterCropPad", since=18)
def center_crop_pad(ctx: LowerCtx, node: Node):
    """Each named axis cropped or padded (with zeros) to its target size about its center: onnx's
    reference crops from (d - t) // 2 and pads (t - d) // 2 before, so as a Pad the width before
    is (t - d) / 2 rounded toward zero (negative: a crop). The target may be a run-time tensor."""
    dims = ctx.shape(0)
    rank = len(dims)
    axes = ctx.attr("axes")
    axes = norm_axes(ctx, [int(a) for a in axes], rank) if axes is not None else list(range(rank))
    target = ctx.shape_arg(1, "shape")
    if len(target) != len(axes):
        raise ctx.error(f"shape has {len(target)} sizes for {len(axes)} axes")
    before, after = [0] * rank, [0] * rank
    for a, t in zip(axes, target):
        diff = simplify(prim(t) - prim(dims[a]))
        before[a] = simplify(tirx.truncdiv(prim(diff), prim(2)))
        after[a] = simplify(prim(diff) - prim(before[a]))
    x = ctx.input(0)
    return [_emit_pad(ctx, x, dims, before, after, "constant", relax.const(0, str(x.ty.dtype)))]


@converter("onnx.Pad", since=1)
def pad_v1(ctx: LowerCtx, node: Node):
    pads = attr_ints(ctx, "pads" if ctx.opset >= 2 else "paddings")
    return [_pad(ctx, pads, float(ctx.attr("value", 0.0)), attr_str(ctx, "mode", "constant"))]


@converter("onnx.Pad", since=11)
def pad_v11(ctx: LowerCtx, node: Node):
    mode = attr_str(ctx, "mode", "constant")
    if ctx.opset >= 18 and ctx.has_input(3) and (axes := runtime_axes(ctx, 3, ctx.rank(0))) is not None:
        return [_pad_runtime(ctx, mode, None, axes)]  # a run-time axes tensor
    axes = operand_ints(ctx, 3, "axes") if ctx.opset >= 18 else None
    pads = ctx.const(1)
    value = ctx.const(2) if ctx.has_input(2) else np.zeros(1)
    if pads is None or value is None:
        return [_pad_runtime(ctx, mode, axes)]
    return [_pad(ctx, [int(p) for p in pads.reshape(-1)], float(value.reshape(-1)[0]), mode, axes)]


def _pad_runtime(ctx: LowerCtx, mode: str, axes: list[int] | None, runtime: relax.Expr | None = None):
    """Pad with run-time pads, value or axes (`runtime`, an int64 tensor), as one TE compute: each
    output index reads the input at index - pad_before, mapped back into range as the mode says
    (negative pads crop). With run-time axes, a dim takes the pads of the axis that names it."""
    x, dims, rank, axes = _pad_operand(ctx, mode, axes if runtime is None else None)
    sym = ctx.sym(1, max_size=1 << 12)
    k = len(axes) if runtime is None else length(runtime)
    if len(ctx.shape(1)) != 1 or ctx.shape(1)[0] != 2 * k:
        raise ctx.error(f"pads has shape {ctx.shape(1)}, expected [{2 * k}] (two per axis)")
    before, after = [0] * rank, [0] * rank
    if runtime is not None:
        pads = ctx.emit(R.astype(ctx.input(1), "int64"))
        zeros = relax.const(np.zeros(rank, np.int64), "int64")
        per_dim = [spread(ctx, runtime, ctx.emit(R.strided_slice(pads, [0], [lo], [lo + k])), zeros, rank)
                   for lo in (0, k)]
        values = ctx.runtime_dims(ctx.emit(R.concat(per_dim, axis=0)), "pad")
        before, after = values[:rank], values[rank:]
    else:
        pads = list(sym.values) if sym is not None else ctx.runtime_dims(ctx.input(1), "pad")
        for j, a in enumerate(axes):
            before[a], after[a] = pads[j], pads[k + j]
    value = ctx.scalar(2, str(x.ty.dtype)) if ctx.has_input(2) else relax.const(0, str(x.ty.dtype))
    return _emit_pad(ctx, x, dims, before, after, mode, value)


def _emit_pad(ctx: LowerCtx, x: relax.Expr, dims: list, before: list, after: list, mode: str, value: relax.Expr):
    """`x` padded by `before` / `after` per dim (ints or TIR expressions; negative ones crop), as one
    TE compute filled by the scalar tensor `value` in constant mode."""
    out_shape = [simplify(prim(d) + prim(b) + prim(e)) for d, b, e in zip(dims, before, after)]

    def compute(data: te.Tensor, fill: te.Tensor) -> te.Tensor:
        def element(*idx):
            src, inside = [], []
            for a, o in enumerate(idx):
                if is_static(before[a]) and is_static(after[a]) and int(before[a]) == int(after[a]) == 0:
                    src.append(o)
                    continue
                r, d = o - prim(before[a]), prim(dims[a])
                clamped = tirx.Max(tirx.Min(r, d - 1), prim(0))
                if mode == "constant":
                    inside.append(tirx.And(r >= 0, r < d))
                    src.append(clamped)
                elif mode == "edge":
                    src.append(clamped)
                elif mode == "wrap":
                    src.append(tirx.floormod(r, d))
                else:  # reflect: period 2 (d - 1), mirrored in its second half
                    period = tirx.Max(prim(2) * (d - 1), prim(1))
                    m = tirx.floormod(r, period)
                    src.append(tirx.Select(m < d, m, period - m))
            v = data(*src)
            if inside:
                cond = inside[0]
                for c in inside[1:]:
                    cond = tirx.And(cond, c)
                v = tirx.Select(cond, v, fill())
            return v
        return te.compute(out_shape, element, name="pad")

    return ctx.bb.emit_te(compute, x, value, primfunc_name_hint="pad")


# -- DepthToSpace, SpaceToDepth, Trilu, CumSum ---------------------------------------------


@converter("onnx.DepthToSpace", since=1)
def depth_to_space(ctx: LowerCtx, node: Node):
    n, c, h, w = ctx.shape(0)
    b = int(ctx.attr("blocksize"))
    x = ctx.input(0)
    c = static_int(ctx, c, "channel dim")
    if attr_str(ctx, "mode", "DCR") == "CRD":
        t = ctx.emit(R.reshape(x, relax_dims([n, c // (b * b), b, b, h, w])))
        t = ctx.emit(R.permute_dims(t, [0, 1, 4, 2, 5, 3]))
    else:
        t = ctx.emit(R.reshape(x, relax_dims([n, b, b, c // (b * b), h, w])))
        t = ctx.emit(R.permute_dims(t, [0, 3, 4, 1, 5, 2]))
    return [R.reshape(t, relax_dims([n, c // (b * b), h * b, w * b]))]


@converter("onnx.SpaceToDepth", since=1)
def space_to_depth(ctx: LowerCtx, node: Node):
    n, c, h, w = ctx.shape(0)
    b = int(ctx.attr("blocksize"))
    x = ctx.input(0)
    t = ctx.emit(R.reshape(x, relax_dims([n, c, tirx.floordiv(prim(h), b) if not is_static(h) else int(h) // b, b,
                                          tirx.floordiv(prim(w), b) if not is_static(w) else int(w) // b, b])))
    # DCR (the default): block offsets outermost in the new channels; CRD: the old channel outermost
    crd = attr_str(ctx, "mode", "DCR") == "CRD"
    t = ctx.emit(R.permute_dims(t, [0, 1, 3, 5, 2, 4] if crd else [0, 3, 5, 1, 2, 4]))
    hh = int(h) // b if is_static(h) else tirx.floordiv(prim(h), b)
    ww = int(w) // b if is_static(w) else tirx.floordiv(prim(w), b)
    return [R.reshape(t, relax_dims([n, c * b * b, hh, ww]))]


@converter("onnx.Trilu", since=14)
def trilu(ctx: LowerCtx, node: Node):
    upper = bool(int(ctx.attr("upper", 1)))
    x = ctx.input(0)
    k = ctx.const(1) if ctx.has_input(1) else np.zeros(1, np.int64)
    if k is not None:
        k = int(k.reshape(-1)[0])
        return [R.triu(x, k) if upper else R.tril(x, k)]
    # run-time k: keep x where (column - row) >= k (upper) or <= k (lower)
    rows, cols = ctx.shape_of(x)[-2:]
    i = ctx.emit(R.reshape(ctx.emit(R.arange(0, prim(rows), 1, "int64")), relax_dims([rows, 1])))
    j = ctx.emit(R.arange(0, prim(cols), 1, "int64"))
    diagonal = ctx.emit(R.subtract(j, i))
    k = ctx.scalar(1, "int64")
    keep = R.greater_equal(diagonal, k) if upper else R.less_equal(diagonal, k)
    return [R.where(keep, x, relax.const(0, str(x.ty.dtype)))]


@converter("onnx.CumSum", since=11)
def cumsum(ctx: LowerCtx, node: Node):
    return [along_axis_operand(ctx, R.cumsum)]


def along_axis_operand(ctx: LowerCtx, scan) -> relax.Expr:
    """CumSum / CumProd: `scan(x, axis=, exclusive=)` along the axis that operand 1 names, `reverse` honoured.

    An axis known only at run time picks among the rank's choices: every axis is scanned
    and `where` keeps the one asked for (rank times the work; such an axis is rare outside
    tests, and one artifact then takes any axis; a value out of range gives the last axis).
    """
    rank = ctx.rank(0)
    reverse, exclusive = int(ctx.attr("reverse", 0)), bool(ctx.attr("exclusive", 0))

    def along(x: relax.Expr, axis: int) -> relax.Expr:
        if reverse:
            x = ctx.emit(R.flip(x, axis))
        y = ctx.emit(scan(x, axis=axis, exclusive=exclusive))
        return ctx.emit(R.flip(y, axis)) if reverse else y

    x = ctx.input(0)
    if ctx.const(1) is not None or ctx.sym(1) is not None:
        return along(x, norm_axis(ctx, int(ctx.require_const(1, "axis").reshape(-1)[0]), rank))
    axis = ctx.scalar(1, "int64")
    axis = ctx.emit(R.where(R.less(axis, relax.const(0, "int64")), R.add(axis, relax.const(rank, "int64")), axis))
    y = along(x, rank - 1)
    for a in range(rank - 2, -1, -1):
        y = ctx.emit(R.where(R.equal(axis, relax.const(a, "int64")), along(x, a), y))
    return y


# -- TopK, ScatterElements, ScatterND, OneHot ---------------------------------------------------


def _topk(ctx: LowerCtx, k: int):
    dims = ctx.shape(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", -1)), len(dims))
    largest = bool(ctx.attr("largest", 1))
    x = ctx.input(0)
    if str(x.ty.dtype) == "uint64":
        # TVM's topk takes no uint64: flipping the top bit of the int64 view keeps the unsigned order
        keys = ctx.emit(R.bitwise_xor(R.astype(x, "int64"), relax.const(np.int64(-(1 << 63)), "int64")))
        t = ctx.emit(R.topk(keys, k=k, axis=axis, ret_type="indices", largest=largest, dtype="int64"))
        return [R.gather_elements(x, t, axis=axis), t]
    t = ctx.emit(R.topk(x, k=k, axis=axis, ret_type="both", largest=largest, dtype="int64"))
    return [relax.TupleGetItem(t, 0), relax.TupleGetItem(t, 1)]


@converter("onnx.TopK", since=1)
def topk_v1(ctx: LowerCtx, node: Node):
    return _topk(ctx, int(ctx.attr("k")))


@converter("onnx.TopK", since=10)
def topk_v10(ctx: LowerCtx, node: Node):
    if ctx.const(1) is None and ctx.sym(1) is None:
        return _topk_runtime(ctx)
    return _topk(ctx, int(ctx.require_const(1, "K").reshape(-1)[0]))


def _topk_runtime(ctx: LowerCtx):
    """TopK with k read at run time: a stable argsort along the axis (equal values keep the lower index
    first, as ONNX asks), its first k indices (k a run-time dim), and the values gathered at them."""
    dims = ctx.shape(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", -1)), len(dims))
    largest = bool(ctx.attr("largest", 1))
    x = ctx.input(0)
    keys = x
    if str(x.ty.dtype) == "uint64":  # as `_topk`: the int64 view with the top bit flipped keeps the order
        keys = ctx.emit(R.bitwise_xor(R.astype(x, "int64"), relax.const(np.int64(-(1 << 63)), "int64")))
    (k,) = ctx.runtime_dims(ctx.emit(R.reshape(ctx.input(1), [1])), "k")
    order = ctx.emit(R.argsort(keys, axis=axis, descending=largest, dtype="int64"))
    order = ctx.bb.match_cast(order, order.ty)  # after k's match_cast (see LowerCtx.runtime_dims)
    idx = ctx.emit(R.strided_slice(order, axes=[axis], begin=[0], end=[k], assume_inbound=True))
    return [R.gather_elements(x, idx, axis=axis), idx]


_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _reduction(ctx: LowerCtx) -> str:
    name = attr_str(ctx, "reduction", "none")
    if name not in _REDUCTIONS:
        raise ctx.error(f"reduction {name!r} is not one of none, add, mul, max, min")
    return _REDUCTIONS[name]


@converter("onnx.ScatterElements", since=11)
def scatter_elements(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", 0)), len(dims))
    indices = _normalized_indices(ctx, 1, dims[axis])
    return [R.scatter_elements(ctx.input(0), indices, ctx.input(2), axis=axis, reduction=_reduction(ctx))]


@converter("onnx.ScatterND", since=11)
def scatter_nd(ctx: LowerCtx, node: Node):
    return [R.scatter_nd(ctx.input(0), ctx.input(1), ctx.input(2), reduction=_reduction(ctx))]


@converter("onnx.OneHot", since=9)
def one_hot(ctx: LowerCtx, node: Node):
    rank = len(ctx.shape(0)) + 1
    axis = norm_axis(ctx, int(ctx.attr("axis", -1)), rank)
    indices = ctx.input(0)
    dt = str(indices.ty.dtype)
    if is_float(dt):  # ONNX casts non-integer indices to integers
        indices, dt = ctx.emit(R.astype(indices, "int64")), "int64"
    depth, values = ctx.const(1), ctx.const(2)
    if depth is None or values is None:
        return [_one_hot_runtime(ctx, indices, axis)]
    depth, values = int(depth.reshape(-1)[0]), values.reshape(-1)
    if not dt.startswith("uint"):
        indices = ctx.emit(R.where(R.less(indices, relax.const(0, dt)),
                                   R.add(indices, relax.const(depth, dt)), indices))
    out_dtype = str(values.dtype)
    off = relax.prim_value(prim(values[0].item(), out_dtype))
    on = relax.prim_value(prim(values[1].item(), out_dtype))
    return [R.one_hot(indices, on, off, depth, axis)]


def _one_hot_runtime(ctx: LowerCtx, indices: relax.Expr, axis: int) -> relax.Expr:
    """OneHot with a run-time depth (bound to a fresh dim) or values (read by the kernel)."""
    depth = ctx.const(1)
    if depth is not None:
        n = int(depth.reshape(-1)[0])
    else:
        (n,) = ctx.runtime_dims(ctx.emit(R.reshape(R.astype(ctx.input(1), "int64"), [1])), "depth")
    values = ctx.input(2)
    dims = ctx.shape_of(indices)
    signed = not str(indices.ty.dtype).startswith("uint")

    def compute(idx: te.Tensor, on_off: te.Tensor) -> te.Tensor:
        def element(*o):
            i = tirx.Cast("int64", idx(*(o[:axis] + o[axis + 1:])))
            if signed:
                i = tirx.Select(i < 0, i + prim(n), i)
            return tirx.Select(i == o[axis], on_off[1], on_off[0])
        return te.compute([prim(d) for d in dims[:axis]] + [prim(n)] + [prim(d) for d in dims[axis:]],
                          element, name="one_hot")

    return ctx.bb.emit_te(compute, indices, values, primfunc_name_hint="one_hot")
