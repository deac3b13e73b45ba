"""Resize (opsets 10, 11, 13, 18, 19) and Upsample (7, 9), written as one TE compute.

mdoc computes Resize itself instead of going through `relax.op.image.resize2d`,
because ONNX's semantics need things TOPI does not offer: the coordinate of an
output index uses the *given* scale (not output/input sizes) when scales are
given, any axis may be resized (N-d, not only H and W), nearest rounding has
four modes, and opset 10 / Upsample use onnxruntime's legacy rounding.

Per resized axis, an output index `x` maps to an input coordinate `x_in`
(float32, as onnxruntime computes it):

    half_pixel            (x + 0.5) / scale - 0.5
    half_pixel_symmetric  center * (1 - out / (scale * in)) + (x + 0.5) / scale - 0.5, center = in / 2
    pytorch_half_pixel    out > 1 ? (x + 0.5) / scale - 0.5 : 0
    align_corners         out == 1 ? 0 : x * (in - 1) / (out - 1)
    asymmetric            x / scale
    tf_half_pixel_for_nn  (x + 0.5) / scale
    tf_crop_and_resize    out > 1 ? start * (in - 1) + x * (end - start) * (in - 1) / (out - 1)
                                  : 0.5 * (start + end) * (in - 1); outside [0, in - 1]: extrapolation_value

then `nearest` rounds it (round_prefer_floor, round_prefer_ceil, floor, ceil) and
clamps, `linear` blends the two neighbours (edge-clamped) and `cubic` the four
with Keys' kernel (coefficient `cubic_coeff_a`; `exclude_outside` drops taps
outside the input and renormalizes).
"""

from __future__ import annotations

import itertools

import numpy as np
from tvm import relax, te, tirx
from tvm.sym import Analyzer

from mdoc.ir import Node

from ..context import LowerCtx, _concrete, is_float, is_static, pdtype, prim
from ..registry import converter
from ..schedule import MATERIALIZE
from ._common import attr_str, norm_axes

R = relax.op

_COORD_MODES = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                "tf_half_pixel_for_nn", "tf_crop_and_resize"}
_RUNTIME = object()  # marks an axis whose scale is read from the run-time scales tensor
_TAPS = {"nearest": 1, "linear": 2, "cubic": 4}  # input elements per output element, per resized axis
_NEAREST_MODES = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "legacy"}


def _f(v) -> tirx.PrimExpr:
    return tirx.FloatImm("float32", float(_concrete(v)))


def _fl(v) -> tirx.PrimExpr:
    """A roi bound: a float known while lowering, or a float32 TIR expression reading the run-time roi."""
    return _f(v) if isinstance(v, (int, float)) else v


def _to_f(e) -> tirx.PrimExpr:
    return _f(e) if is_static(e) else tirx.Cast("float32", e)


def _normalized(raw: list[te.Tensor], k: int, name: str) -> te.Tensor:
    """exclude_outside's tap `k`: its weight over the sum of the output index's weights."""
    return te.compute(raw[k].shape, lambda i: raw[k][i] / (raw[0][i] + raw[1][i] + raw[2][i] + raw[3][i]), name=name,
                      attrs={MATERIALIZE: 1})


def _resize_te(x: te.Tensor, out_shape, axes: dict, mode: str, coord: str, nearest: str,
               cubic_a: float, exclude_outside: bool, extrapolation: float, tabulate: bool = False):
    """`axes` maps a resized axis to (scale, roi_start, roi_end); other axes copy their index.

    A scale of None means "sizes were given": it is out / in, computed in the kernel
    (the sizes may be run-time values), and the output width is `out` itself; a
    given scale (a float, or a float32 TIR expression reading run-time scales) makes
    the output width `scale * in` (a float, as onnx's reference computes
    align_corners and tf_crop_and_resize coordinates).

    `tabulate`: each resized axis's taps (input index and weight per output index) are computed
    first, one small 1-D stage per tap, and the resize reads them: cubic over run-time sizes
    or scales otherwise repeats 16 taps of symbolic float math in every output element, which
    TVM takes minutes to build.
    """
    in_shape = list(x.shape)
    dtype = x.dtype
    acc = "float32" if dtype in ("float16", "bfloat16") or not is_float(dtype) else dtype

    def coordinate(axis, i):
        scale, start, end = axes[axis]
        n_in, n_out = in_shape[axis], out_shape[axis]
        xi = _to_f(i)
        fin = _to_f(n_in)
        s = _to_f(n_out) / fin if scale is None else _f(scale) if is_static(scale) else scale
        fout = _to_f(n_out) if scale is None else s * fin
        if coord == "half_pixel":
            return (xi + _f(0.5)) / s - _f(0.5), None
        if coord == "half_pixel_symmetric":
            adjustment = _to_f(n_out) / (s * fin)
            offset = fin / _f(2) * (_f(1) - adjustment)
            return offset + (xi + _f(0.5)) / s - _f(0.5), None
        if coord == "pytorch_half_pixel":
            return tirx.Select(fout > _f(1), (xi + _f(0.5)) / s - _f(0.5), _f(0)), None
        if coord == "align_corners":
            return tirx.Select(fout > _f(1), xi * (fin - _f(1)) / tirx.Max(fout - _f(1), _f(1)), _f(0)), None
        if coord == "asymmetric":
            return xi / s, None
        if coord == "tf_half_pixel_for_nn":
            return (xi + _f(0.5)) / s, None
        # tf_crop_and_resize
        c = tirx.Select(fout > _f(1),
                        _fl(start) * (fin - _f(1)) + xi * (_fl(end) - _fl(start)) * (fin - _f(1))
                        / tirx.Max(fout - _f(1), _f(1)),
                        _f(0.5) * (_fl(start) + _fl(end)) * (fin - _f(1)))
        outside = tirx.Or(c < _f(0), c > fin - _f(1))
        return c, outside

    def clamp(i, n):
        return tirx.Max(tirx.Min(i, prim(n) - prim(1)), prim(0))

    def taps(axis, i, normalize=True):
        """[(index, weight or None)] for one axis (`normalize`: exclude_outside's weights divided by
        their sum; the caller divides otherwise)."""
        if axis not in axes:
            return [(i, None)], None
        c, outside = coordinate(axis, i)
        n = in_shape[axis]
        if mode == "nearest":
            scale = axes[axis][0]
            if nearest == "round_prefer_floor":
                r = tirx.ceil(c - _f(0.5))
            elif nearest == "round_prefer_ceil":
                r = tirx.floor(c + _f(0.5))
            elif nearest == "floor":
                r = tirx.floor(c)
            elif nearest == "ceil":
                r = tirx.ceil(c)
            else:  # legacy (opset < 11, scales only): onnxruntime truncates upsampling, rounds up downsampling
                r = (tirx.ceil(c) if scale < 1 else tirx.floor(c)) if is_static(scale) else \
                    tirx.Select(scale < _f(1), tirx.ceil(c), tirx.floor(c))
            return [(clamp(tirx.Cast("int64", r), n), None)], outside
        if mode == "linear":
            c = tirx.Max(tirx.Min(c, _to_f(n) - _f(1)), _f(0))
            lo = tirx.floor(c)
            t = c - lo
            i0 = tirx.Cast("int64", lo)
            return [(i0, _f(1) - t), (clamp(i0 + prim(1), n), t)], outside
        # cubic
        lo = tirx.floor(c)
        t = c - lo
        i0 = tirx.Cast("int64", lo)
        a = _f(cubic_a)

        def w(d):  # Keys' kernel on |d|
            d = tirx.abs(d)
            near = ((a + _f(2)) * d - (a + _f(3))) * d * d + _f(1)
            far = ((a * d - _f(5) * a) * d + _f(8) * a) * d - _f(4) * a
            return tirx.Select(d <= _f(1), near, tirx.Select(d < _f(2), far, _f(0)))

        out = []
        weights = []
        for k in (-1, 0, 1, 2):
            idx = i0 + prim(k)
            wk = w(t - _f(k))
            if exclude_outside:
                wk = tirx.Select(tirx.And(idx >= prim(0), idx < prim(n)), wk, _f(0))
            out.append((clamp(idx, n), wk))
            weights.append(wk)
        if exclude_outside and normalize:
            total = weights[0] + weights[1] + weights[2] + weights[3]
            out = [(idx, wk / total) for idx, wk in out]
        return out, outside

    def table(axis, name, pick):
        """One value of each output index's taps on `axis` (`pick` of `taps`), as a 1-D stage."""
        return te.compute((prim(out_shape[axis]),), lambda i: pick(taps(axis, i, normalize=False)),
                          name=f"{name}{axis}", attrs={MATERIALIZE: 1})

    tables = {}
    if tabulate:
        for axis in axes:
            listed, outside = taps(axis, tirx.Var("i", "int64"))
            weights = [table(axis, f"weight{k}_", lambda t, k=k: t[0][k][1]) for k in range(len(listed))]
            if exclude_outside and mode == "cubic":  # divided by their sum in a stage of its own
                weights = [_normalized(weights, k, f"normalized{k}_{axis}") for k in range(len(weights))]
            per_tap = [(table(axis, f"index{k}_", lambda t, k=k: t[0][k][0]), w) for k, w in enumerate(weights)]
            tables[axis] = (per_tap, table(axis, "outside", lambda t: t[1]) if outside is not None else None)

    def tabulated(axis, i):
        if axis not in tables:
            return taps(axis, i)
        per_tap, outside = tables[axis]
        return [(index[i], weight[i]) for index, weight in per_tap], (outside[i] if outside is not None else None)

    def fcompute(*idx):
        per_axis = []
        outside = []
        for axis, i in enumerate(idx):
            t, o = tabulated(axis, i)
            per_axis.append(t)
            if o is not None:
                outside.append(o)
        total = None
        for combo in itertools.product(*per_axis):
            v = x(*[ix for ix, _ in combo])
            ws = [wt for _, wt in combo if wt is not None]
            if ws:
                v = v.astype(acc) if pdtype(v) != acc else v
                weight = ws[0]
                for wt in ws[1:]:
                    weight = weight * wt
                v = v * (weight if acc == "float32" else tirx.Cast(acc, weight))
            total = v if total is None else total + v
        if pdtype(total) != dtype:
            total = tirx.Cast(dtype, tirx.round(total) if not is_float(dtype) else total)
        if outside:
            cond = outside[0]
            for o in outside[1:]:
                cond = tirx.Or(cond, o)
            total = tirx.Select(cond, tirx.const(extrapolation, dtype), total)
        return total

    return te.compute([prim(d) for d in out_shape], fcompute, name="resize")


def _emit_resize(ctx: LowerCtx, x: relax.Expr, scales: list[float] | relax.Expr | None, sizes: list | None, *,
                 mode: str, coord: str, nearest: str, cubic_a: float = -0.75, exclude_outside: bool = False,
                 extrapolation: float = 0.0, roi: list[float] | relax.Expr | None = None,
                 out_dims: list | None = None):
    """Resize `x`: output dims are `sizes` when given, else floor(dim * scale); coordinates use `scales`
    when given (keep_aspect_ratio_policy gives both), else sizes / dims.

    Sizes may be run-time values (TIR vars from `ctx.shape_arg`); scales are compile-time floats,
    or a run-time float32 tensor (then every axis is resized: floor(dim * scale) is computed at
    run time and bound to fresh dims, and the kernel reads the scales; `out_dims` gives those dims
    instead, when the caller computed them).
    """
    dims = ctx.shape_of(x)
    rank = len(dims)
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.error(f"mode {mode!r} is not one of nearest, linear, cubic")
    if coord not in _COORD_MODES:
        raise ctx.error(f"coordinate_transformation_mode {coord!r} is not supported")
    if nearest not in _NEAREST_MODES:
        raise ctx.error(f"nearest_mode {nearest!r} is not supported")
    out_shape, axes = [], {}
    runtime = scales if isinstance(scales, relax.Expr) else None
    runtime_roi = roi if isinstance(roi, relax.Expr) else None  # with sizes only: it moves no output dim
    spans = [(roi[a], roi[rank + a]) if roi is not None and runtime_roi is None and coord == "tf_crop_and_resize"
             else (0.0, 1.0) for a in range(rank)]
    if runtime is not None:
        wide = R.multiply(R.astype(runtime, "float64"), R.astype(ctx.dims_tensor(dims), "float64"))
        factors = relax.const(np.array([end - start for start, end in spans], np.float64), "float64")
        out_dims = out_dims or ctx.runtime_dims(ctx.emit(R.astype(R.floor(R.multiply(wide, factors)), "int64")), "o")
    for a in range(rank):
        start, end = spans[a]
        n = dims[a]
        if runtime is not None:
            out_shape.append(out_dims[a])
            axes[a] = (_RUNTIME, start, end)
            continue
        if sizes is not None:
            o = sizes[a]
            if not is_static(o) and not is_static(n) and _same_dim(o, n):
                out_shape.append(n)  # a symbolic dim kept as it is (the batch of a detector neck)
                continue
            o = int(o) if is_static(o) else o
            if scales is not None:
                scale = float(scales[a])
            elif is_static(n) and is_static(o):
                scale = None if int(o) != int(n) else 1.0
            else:
                scale = None
        else:
            scale = float(scales[a])
            factor = (end - start) * scale
            if is_static(n):
                o = int(np.floor(float(n) * factor))
            elif float(factor).is_integer():
                o = n if factor == 1.0 else prim(n) * int(factor)
            else:
                # floor(n * 1.5) would put float math into Relax shapes, which its passes reject
                raise ctx.error(f"Resize by a non-integer scale {scale} needs a static dim on axis {a}")
        out_shape.append(o)
        if scale == 1.0 and (start, end) == (0.0, 1.0) and runtime_roi is None and (
                not is_static(o) or not is_static(n) or int(o) == int(n)):
            continue  # this axis is copied
        axes[a] = (scale, start, end)
    if not axes:
        return x
    def compute(data: te.Tensor, *given: te.Tensor) -> te.Tensor:
        # one stage per group of axes: a stage blends taps**axes inputs per output element, and
        # run-time sizes make every axis a resized one (cubic over 4 axes: 256 taps, minutes to build;
        # symbolic shapes build slowly even at 16 taps)
        budget = 16 if all(is_static(d) for d in out_shape) or tabulate else 4
        per_stage = rank if _TAPS[mode] == 1 else max(1, int(np.log(budget + 0.5) / np.log(_TAPS[mode])))
        order = sorted(axes)
        for k in range(0, len(order), per_stage):
            group = order[k:k + per_stage]
            shape = [out_shape[a] if a in group else data.shape[a] for a in range(rank)]
            now = {a: (given[0][a] if axes[a][0] is _RUNTIME else axes[a][0],
                       *((given[-1][a], given[-1][rank + a]) if runtime_roi is not None else axes[a][1:]))
                   for a in group}
            data = _resize_te(data, shape, now, mode, coord, nearest, cubic_a, exclude_outside, extrapolation,
                              tabulate)
        return data

    tabulate = mode == "cubic" and (runtime is not None or not all(is_static(d) for d in out_shape))

    given = [t for t in (runtime, runtime_roi) if t is not None]
    return ctx.bb.emit_te(compute, x, *given, primfunc_name_hint="resize")


def _same_dim(a, b) -> bool:
    return bool(Analyzer().can_prove_equal(prim(a), prim(b)))


def _scales(ctx: LowerCtx, i: int) -> list[float] | relax.Expr | None:
    """Operand `i` (scales): floats when known, a float32 tensor when read at run time, None when
    omitted or empty."""
    if not ctx.has_input(i):
        return None
    array = ctx.const(i)
    if array is not None:
        return None if array.size == 0 else [float(v) for v in array.reshape(-1)]
    (n,) = ctx.shape(i)
    if not is_static(n):
        raise ctx.need_const(i, "scales")
    if int(n) == 0:
        return None
    x = ctx.input(i)
    return x if str(x.ty.dtype) == "float32" else ctx.emit(R.astype(x, "float32"))


def _runtime_roi(ctx: LowerCtx, rank: int) -> relax.Expr | None:
    """Resize's roi (operand 1) as a float32 tensor when it is read at run time; None when known
    (or empty). Taken with sizes only: with scales the roi would move the output dims."""
    if ctx.const(1) is not None:
        return None
    shape = ctx.shape(1)
    if len(shape) != 1 or not is_static(shape[0]):
        raise ctx.need_const(1, "roi, of a length known only at run time")
    if int(shape[0]) == 0:
        return None
    x = ctx.input(1)
    return x if str(x.ty.dtype) == "float32" else ctx.emit(R.astype(x, "float32"))


def _float_list(ctx: LowerCtx, i: int, what: str) -> list[float] | None:
    if not ctx.has_input(i):
        return None
    array = ctx.require_const(i, what)
    return None if array.size == 0 else [float(v) for v in array.reshape(-1)]


@converter("onnx.Resize", since=10)
def resize_v10(ctx: LowerCtx, node: Node):
    scales = _scales(ctx, 1)
    mode = attr_str(ctx, "mode", "nearest")
    return [_emit_resize(ctx, ctx.input(0), scales, None, mode=mode, coord="asymmetric", nearest="legacy")]


@converter("onnx.Resize", since=11)
def resize_v11(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    rank = len(dims)
    coord = attr_str(ctx, "coordinate_transformation_mode", "half_pixel")
    mode = attr_str(ctx, "mode", "nearest")
    scales = _scales(ctx, 2)
    roi = None
    if coord == "tf_crop_and_resize" and ctx.has_input(1):
        roi = _runtime_roi(ctx, rank) if scales is None else None
        roi = roi if roi is not None else _float_list(ctx, 1, "roi")
    antialias = ctx.opset >= 18 and int(ctx.attr("antialias", 0)) and mode != "nearest"
    # antialias widens the taps with the scale: specialized to the operand's value, like axes
    if isinstance(scales, relax.Expr) and antialias:
        raise ctx.need_const(2, "scales, with antialias")
    sizes, out_dims = None, None
    if scales is None and ctx.has_input(3):
        sizes = list(ctx.shape_arg(3, "sizes"))
    if scales is None and sizes is None:
        raise ctx.error("one of scales and sizes must be given")
    if ctx.opset >= 18:
        axes = ctx.attr("axes")
        if axes is not None:
            axes = norm_axes(ctx, [int(a) for a in axes], rank)
            if isinstance(scales, relax.Expr):  # run-time scales of the named axes; 1 elsewhere
                one = relax.const(np.ones(1, np.float32))
                scales = ctx.emit(R.concat([R.strided_slice(scales, [0], [axes.index(a)], [axes.index(a) + 1])
                                            if a in axes else one for a in range(rank)], axis=0))
            elif scales is not None:
                full = [1.0] * rank
                for a, s in zip(axes, scales):
                    full[a] = s
                scales = full
            if sizes is not None:
                full_sizes = list(dims)
                for a, s in zip(axes, sizes):
                    full_sizes[a] = s
                sizes = full_sizes
            if isinstance(roi, relax.Expr):  # run-time roi of the named axes; [0, 1] elsewhere
                k, f32 = len(axes), lambda v: relax.const(np.array([v], np.float32))  # noqa: E731
                piece = lambda j: R.strided_slice(roi, [0], [j], [j + 1])  # noqa: E731
                roi = ctx.emit(R.concat([piece(axes.index(a)) if a in axes else f32(0.0) for a in range(rank)]
                                        + [piece(k + axes.index(a)) if a in axes else f32(1.0) for a in range(rank)],
                                        axis=0))
            elif roi is not None:
                k = len(axes)
                full_roi = [0.0] * rank + [1.0] * rank
                for j, a in enumerate(axes):
                    full_roi[a], full_roi[rank + a] = roi[j], roi[k + j]
                roi = full_roi
        else:
            axes = list(range(rank))
        policy = attr_str(ctx, "keep_aspect_ratio_policy", "stretch")
        if sizes is not None and policy != "stretch" and not antialias and not all(is_static(d) for d in sizes):
            scales, out_dims = _kept_aspect(ctx, dims, axes, policy)
            sizes = None
        if sizes is not None and (policy != "stretch" or antialias) and not all(is_static(d) for d in sizes):
            raise ctx.need_const(3, f"sizes, with keep_aspect_ratio_policy={policy} and antialias={antialias:d}")
        if sizes is not None and policy != "stretch":
            ratios = [float(sizes[a]) / float(dims[a]) for a in axes]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            scales = [1.0] * rank
            for a in axes:
                scales[a] = scale
            sizes = [int(np.floor(float(dims[a]) * scales[a] + 0.5)) if a in axes else dims[a] for a in range(rank)]
        if antialias:
            if scales is None:
                scales_check = [float(sizes[a]) / float(dims[a]) for a in range(rank)]
            else:
                scales_check = scales
            if any(s < 1.0 for s in scales_check):
                raise ctx.error("antialias=1 when downsampling is not supported by the Relax target")
    nearest = attr_str(ctx, "nearest_mode", "round_prefer_floor")
    y = _emit_resize(ctx, x, scales, sizes, mode=mode, coord=coord, nearest=nearest,
                     cubic_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                     exclude_outside=bool(ctx.attr("exclude_outside", 0)),
                     extrapolation=float(ctx.attr("extrapolation_value", 0.0)), roi=roi, out_dims=out_dims)
    return [y]


def _kept_aspect(ctx: LowerCtx, dims: list, axes: list[int], policy: str) -> tuple[relax.Expr, list]:
    """Run-time sizes with keep_aspect_ratio_policy not_larger / not_smaller: one scale, the least
    (greatest) of sizes / dims over `axes`, and the dims floor(dim * scale + 0.5) there, at run time."""
    rank = len(dims)
    f64 = lambda e: R.astype(e, "float64")  # noqa: E731
    full = ctx.emit(f64(ctx.dims_tensor(dims)))
    ratios = ctx.emit(R.divide(f64(ctx.input(3)), R.take(full, relax.const(np.array(axes, np.int64)), axis=0)))
    scale = ctx.emit((R.min if policy == "not_larger" else R.max)(ratios))
    named = relax.const(np.isin(np.arange(rank), axes))
    out = ctx.emit(R.where(named, R.floor(R.add(R.multiply(full, scale), relax.const(0.5, "float64"))), full))
    ones = relax.const(np.ones(rank), "float64")
    scales = ctx.emit(R.astype(R.where(named, R.broadcast_to(scale, [rank]), ones), "float32"))
    return scales, ctx.runtime_dims(ctx.emit(R.astype(out, "int64")), "o")


@converter("onnx.Upsample", since=7)
def upsample_v7(ctx: LowerCtx, node: Node):
    scales = [float(s) for s in ctx.attr("scales")]
    mode = attr_str(ctx, "mode", "nearest")
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    return [_emit_resize(ctx, ctx.input(0), scales, None, mode=mode, coord="asymmetric", nearest="legacy")]


@converter("onnx.Upsample", since=9)
def upsample_v9(ctx: LowerCtx, node: Node):
    scales = _scales(ctx, 1)
    mode = attr_str(ctx, "mode", "nearest")
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    return [_emit_resize(ctx, ctx.input(0), scales, None, mode=mode, coord="asymmetric", nearest="legacy")]
