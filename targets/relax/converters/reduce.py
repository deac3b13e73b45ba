"""Reductions: Reduce{Mean,Sum,Max,Min,Prod,L1,L2,LogSum,LogSumExp,SumSquare}, ArgMax, ArgMin.

Axes are an attribute before opset 18 (before 13 for ReduceSum) and an optional
input after; an omitted or empty axes list reduces everything unless
`noop_with_empty_axes` is set, in which case the op is the identity.

Axes given at run time (of a known length) go to one TE kernel, `_masked_reduce`:
every dim is reduced or kept by a run-time mask (`runtime_axes.axis_mask`), the
result keeps the input's rank with 1 where reduced, and keepdims=0 reshapes it to
the kept dims. So the artifact takes any axes; no value is bound at compile time.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from mdoc.ir import Node

from ..context import LowerCtx, is_float, is_static
from ..registry import converter
from ._common import attr_ints, norm_axes, norm_axis, operand_ints, prod, relax_dims, sym_eval
from .runtime_axes import axis_mask, kept_dims, length, runtime_axes

R = relax.op


def _axes(ctx: LowerCtx, axes_from_input: bool) -> list[int] | None:
    """The normalized axes, [] for the identity (noop_with_empty_axes), None for all axes."""
    rank = ctx.rank(0)
    axes = operand_ints(ctx, 1, "axes") if axes_from_input else attr_ints(ctx, "axes")
    if not axes:
        return [] if axes_from_input and int(ctx.attr("noop_with_empty_axes", 0)) else None
    return sorted(set(norm_axes(ctx, axes, rank)))


def _reduce(kind: str, axes_from_input: bool):
    def convert(ctx: LowerCtx, node: Node):
        keep = bool(ctx.attr("keepdims", 1))
        runtime = runtime_axes(ctx, 1, ctx.rank(0)) if axes_from_input and ctx.has_input(1) else None
        if runtime is not None and length(runtime):
            return [_reduce_runtime_axes(ctx, kind, runtime, keep)]
        if runtime is not None:  # an empty axes tensor: its length says enough
            axes = [] if int(ctx.attr("noop_with_empty_axes", 0)) else None
        else:
            axes = _axes(ctx, axes_from_input)
        if kind in ("Max", "Min", "Sum", "Prod") and ctx.sym(0) is not None and axes in (None, [0]):
            np_fn = {"Max": np.max, "Min": np.min, "Sum": np.sum, "Prod": np.prod}[kind]
            sym = sym_eval(ctx, lambda a: np.asarray(np_fn(a, keepdims=keep)), None, operands=[0])
            if sym is not None:
                return [sym]
        x = ctx.input(0)
        if axes == []:
            return [x]
        dt = str(x.ty.dtype)
        if kind in ("Max", "Min"):
            empty = _empty_extreme(ctx, kind, axes, keep, dt)
            if empty is not None:
                return [empty]
            if dt == "bool":  # TVM has no bool max/min: any / all through uint8
                y = (R.max if kind == "Max" else R.min)(R.astype(x, "uint8"), axes, keep)
                return [R.astype(y, "bool")]
            if is_float(dt):
                return [_float_extreme(ctx, kind, x, axes, keep, dt)]
        if kind == "Mean":
            return [R.mean(x, axes, keep)]
        if kind == "Sum":
            return [R.sum(x, axes, keep)]
        if kind == "Max":
            return [R.max(x, axes, keep)]
        if kind == "Min":
            return [R.min(x, axes, keep)]
        if kind == "Prod":
            return [R.prod(x, axes, keep)]
        if kind == "L1":
            return [R.sum(R.abs(x), axes, keep)]
        if kind == "L2":
            return [R.sqrt(R.sum(R.multiply(x, x), axes, keep))]
        if kind == "SumSquare":
            return [R.sum(R.multiply(x, x), axes, keep)]
        if kind == "LogSum":
            return [R.log(R.sum(x, axes, keep))]
        if kind == "LogSumExp":
            m = ctx.emit(R.max(x, axes, True))
            s = ctx.emit(R.log(R.sum(R.exp(R.subtract(x, m)), axes, True)))
            y = R.add(s, m)
            if not keep:
                rank = ctx.rank(0)
                y = R.squeeze(ctx.emit(y), list(range(rank)) if axes is None else axes)
            return [y]
        raise AssertionError(kind)
    return convert


def _reduce_runtime_axes(ctx: LowerCtx, kind: str, axes: relax.Expr, keep: bool) -> relax.Expr:
    """Reduce `kind` over axes known at run time: masked kernels, then the kept dims when not `keep`."""
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    rank = len(dims)
    mask = axis_mask(ctx, axes, rank)
    full, ones = ctx.dims_tensor(dims), relax.const(np.ones(rank, np.int64), "int64")
    sizes = ctx.runtime_dims(ctx.emit(R.concat([R.where(mask, ones, full), R.where(mask, full, ones)], axis=0)), "r")
    out, extents = sizes[:rank], sizes[rank:]
    dt = str(x.ty.dtype)
    if dt == "bool":  # as the static path: any / all through uint8
        x = ctx.emit(R.astype(x, "uint8"))
    square = lambda v, *_: v * v  # noqa: E731
    reduce = lambda k, value=None, *extra: _masked_reduce(ctx, x, out, extents, k, value, *extra)  # noqa: E731
    if kind == "LogSumExp":
        m = reduce("Max")
        y = ctx.emit(R.add(R.log(reduce("Sum", lambda v, j, m: tirx.exp(v - m(*j)), m)), m))
    elif kind in ("L1", "L2", "SumSquare", "LogSum"):
        y = reduce("Sum", {"L1": lambda v, *_: tirx.abs(v), "L2": square, "SumSquare": square, "LogSum": None}[kind])
        y = ctx.emit(R.sqrt(y) if kind == "L2" else R.log(y)) if kind in ("L2", "LogSum") else y
    else:
        y = reduce("Sum" if kind == "Mean" else kind)
        if kind == "Mean":
            n = ctx.emit(R.astype(R.reshape(ctx.dims_tensor([prod(extents)]), []), dt))
            y = ctx.emit(R.divide(y, n))
    if dt == "bool":
        y = ctx.emit(R.astype(y, "bool"))
    if keep:
        return y
    return R.reshape(y, relax_dims(kept_dims(ctx, dims, mask, rank - length(axes))))


def _masked_reduce(ctx: LowerCtx, x: relax.Expr, out: list, extents: list, kind: str, value=None,
                   *extra: relax.Expr) -> relax.Var:
    """A kernel reducing `x` over the dims of extent `extents` (1 where kept), keeping them as 1 (`out`).

    Output index j and reduction index k meet at x[j + k]: a reduced dim has j in [0, 1)
    and k in [0, d), a kept one j in [0, d) and k in [0, 1). `value(v, j, *extra)` turns
    each element before the reduction. Max and Min of floats start from -inf / inf (the
    identity ONNX gives an empty set); Prod from 1.
    """
    dt = str(x.ty.dtype)
    if any(is_static(d) and int(d) == 0 for d in ctx.shape_of(x)):
        # nothing to read: the identity everywhere (an empty input may also come with strides TVM
        # does not take as compact)
        ident = _identity(kind, dt)
        return ctx.bb.emit_te(lambda out: te.compute(out, lambda *j: tirx.const(ident, dt), name="reduce_empty"),
                              list(out), primfunc_name_hint="reduce_empty")
    reducer = {"Sum": te.sum, "Max": te.max, "Min": te.min,
               "Prod": te.comm_reducer(lambda a, b: a * b, lambda t: tirx.const(1, t), name="prod")}[kind]
    if kind in ("Max", "Min") and is_float(dt):
        inf = float("-inf") if kind == "Max" else float("inf")
        pick = tirx.max if kind == "Max" else tirx.min
        reducer = te.comm_reducer(lambda a, b: pick(a, b), lambda t: tirx.const(inf, t), name=kind.lower())

    def compute(t: te.Tensor, out: list, extents: list, *others: te.Tensor) -> te.Tensor:
        ks = [te.reduce_axis((0, e), name=f"k{i}") for i, e in enumerate(extents)]

        def element(*j):
            v = t(*[a + k for a, k in zip(j, ks)])
            return reducer(value(v, j, *others) if value else v, axis=ks)

        return te.compute(out, element, name=f"reduce_{kind.lower()}")

    # the dims go in as arguments: emit_te passes a PrimFunc only the vars it is given or finds in shapes
    return ctx.bb.emit_te(compute, x, list(out), list(extents), *extra, primfunc_name_hint=f"reduce_{kind.lower()}")


def _identity(kind: str, dt: str):
    """What a reduction of no elements gives: 0, 1, or the lowest / highest value for Max / Min."""
    if kind in ("Sum", "Prod"):
        return 0 if kind == "Sum" else 1
    if is_float(dt):
        return float("-inf") if kind == "Max" else float("inf")
    info = np.iinfo(dt)
    return int(info.min) if kind == "Max" else int(info.max)


def _float_extreme(ctx: LowerCtx, kind: str, x, axes: list[int] | None, keep: bool, dt: str):
    """ReduceMax / ReduceMin of floats. TVM's reductions start from the lowest (highest) finite value,
    so a set of only -inf (+inf) gives -FLT_MAX (FLT_MAX); ONNX gives the infinity, and graphs test
    for it (a fully masked attention row is all -inf)."""
    reduce = R.max if kind == "Max" else R.min
    inf = relax.const(-np.inf if kind == "Max" else np.inf, dt)
    y = ctx.emit(reduce(x, axes, keep))
    finite_seen = ctx.emit(R.max(R.astype(R.greater(x, inf) if kind == "Max" else R.less(x, inf), "uint8"), axes, keep))
    return R.where(R.astype(finite_seen, "bool"), y, inf)


def _empty_extreme(ctx: LowerCtx, kind: str, axes: list[int] | None, keep: bool, dt: str):
    """ReduceMax / ReduceMin over an empty set of elements: the identity (-inf / inf for floats,
    the type's least / greatest value otherwise), as onnx's reference gives; None when not empty."""
    dims = ctx.shape(0)
    reduced = range(len(dims)) if axes is None else axes
    if not any(is_static(dims[a]) and int(dims[a]) == 0 for a in reduced):
        return None
    out = [1 if a in reduced else d for a, d in enumerate(dims) if keep or a not in reduced]
    if is_float(dt):
        value = -np.inf if kind == "Max" else np.inf
    elif dt == "bool":
        value = kind == "Min"
    else:
        info = np.iinfo(dt)
        value = info.min if kind == "Max" else info.max
    return R.broadcast_to(relax.const(value, dt), relax_dims(out))


for _kind, _input_since in [("Mean", 18), ("Sum", 13), ("Max", 18), ("Min", 18), ("Prod", 18), ("L1", 18),
                            ("L2", 18), ("LogSum", 18), ("LogSumExp", 18), ("SumSquare", 18)]:
    converter(f"onnx.Reduce{_kind}", since=1)(_reduce(_kind, False))
    converter(f"onnx.Reduce{_kind}", since=_input_since)(_reduce(_kind, True))


def _arg(kind: str):
    def convert(ctx: LowerCtx, node: Node):
        x = ctx.input(0)
        dims = ctx.shape(0)
        axis = norm_axis(ctx, int(ctx.attr("axis", 0)), len(dims))
        keep = bool(ctx.attr("keepdims", 1))
        fn = R.argmax if kind == "max" else R.argmin
        if int(ctx.attr("select_last_index", 0)):
            flipped = ctx.emit(R.flip(x, axis))
            idx = ctx.emit(R.astype(fn(flipped, axis=axis, keepdims=keep), "int64"))
            last = ctx.emit(R.subtract(R.reshape(R.shape_to_tensor(relax.ShapeExpr([dims[axis]])), []),
                                       relax.const(1, "int64")))
            return [R.subtract(last, idx)]
        return [R.astype(fn(x, axis=axis, keepdims=keep), "int64")]
    return convert


converter("onnx.ArgMax", since=1)(_arg("max"))
converter("onnx.ArgMin", since=1)(_arg("min"))
