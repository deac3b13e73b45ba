"""Reductions: Reduce{Mean,Sum,Max,Min,Prod,L1,L2,LogSum,LogSumExp,SumSquare}, ArgMax, ArgMin.

Axes are an attribute before opset 18 (before 13 for ReduceSum) and an optional
input after; an omitted or empty axes list reduces everything unless
`noop_with_empty_axes` is set, in which case the op is the identity.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx, is_float, is_static
from ..registry import converter
from ._common import attr_ints, norm_axes, norm_axis, operand_ints, relax_dims, sym_eval

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
