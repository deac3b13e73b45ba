"""Neural-network ops: Conv, ConvTranspose, pooling, normalizations, LRN, Softmax family.

Conv, MaxPool and AveragePool go through `ctx.kernels` (see `kernels.py`) so that
hand-scheduled kernels can replace the default `relax.op.nn` calls.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx, topi

from mdoc.ir import Node

from ..context import LowerCtx, is_float, is_static, prim, simplify
from ..kernels import POOL_LAYOUTS as _POOL_LAYOUT
from ..kernels import POOL_OPS as _POOL
from ..registry import converter
from ._common import attr_ints, attr_str, float_const, norm_axis, prod, static_int

R = relax.op


def _auto_pads(ctx: LowerCtx, in_dims, kernel, strides, dilations) -> list | None:
    """ONNX pads (begins then ends) for auto_pad, or None for NOTSET (use the pads attribute).

    SAME pads a run-time size n by (-n) mod s more than a multiple of the stride s needs, so
    with symbolic spatial dims they are TIR expressions (static again when s is 1); the
    converters then pad explicitly (`_padded_input`).
    """
    mode = attr_str(ctx, "auto_pad", "NOTSET")
    nd = len(kernel)
    if mode in ("NOTSET", ""):
        return None
    if mode == "VALID":
        return [0] * (2 * nd)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.error(f"auto_pad {mode!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    begins, ends = [], []
    for i in range(nd):
        size, s, eff = in_dims[i], strides[i], (kernel[i] - 1) * dilations[i] + 1
        if is_static(size):
            out = -(-int(size) // s)
            total = max(0, (out - 1) * s + eff - int(size))
        else:  # (-n) mod s: what the ceil division adds to n
            total = simplify(tirx.Max(prim(0), eff - s + tirx.floormod(prim(0) - size, prim(s))))
        small, big = simplify(total // 2), simplify(total - total // 2)
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return begins + ends


def _spatial_attrs(ctx: LowerCtx, in_dims, kernel):
    nd = len(kernel)
    strides = attr_ints(ctx, "strides") or [1] * nd
    dilations = attr_ints(ctx, "dilations") or [1] * nd
    pads = _auto_pads(ctx, in_dims, kernel, strides, dilations)
    if pads is None:
        pads = attr_ints(ctx, "pads") or [0] * (2 * nd)
    return strides, dilations, pads


def _padded_input(ctx: LowerCtx, x: relax.Expr, pads: list, value: float = 0.0) -> relax.Expr:
    """`x` with ONNX `pads` (begins, then ends; ints or TIR expressions) added around its spatial dims."""
    nd = len(pads) // 2
    return ctx.bb.emit_te(topi.nn.pad, x, [0, 0, *pads[:nd]], [0, 0, *pads[nd:]], value,
                          primfunc_name_hint="window_pad")


def _check_window(ctx: LowerCtx, in_dims, kernel, strides, dilations, pads, ceil_mode: bool = False) -> None:
    """MdocError naming the input and its sizes when a static spatial dim leaves the window op no output.

    (TVM's legalization would otherwise stop the build with "Invalid conv parameters: negative
    output shape", an error that names neither the node nor the input.)
    """
    nd = len(kernel)
    outs = []
    for i in range(nd):
        if not (is_static(in_dims[i]) and is_static(pads[i]) and is_static(pads[nd + i])):
            outs.append(None)
            continue
        num = int(in_dims[i]) + int(pads[i]) + int(pads[nd + i]) - (kernel[i] - 1) * dilations[i] - 1
        outs.append((-(-num // strides[i]) if ceil_mode else num // strides[i]) + 1)
    _refuse_empty(ctx, in_dims, outs, f"kernel {list(kernel)} with strides {list(strides)}, dilations "
                                      f"{list(dilations)} and pads {list(pads)}")


def _refuse_empty(ctx: LowerCtx, in_dims, outs: list, window: str) -> None:
    """The MdocError for output spatial dims `outs` (None: known at run time) that leave nothing."""
    if all(o is None or o > 0 for o in outs):
        return
    raise ctx.error(f"input %{ctx.node.input(0).name} has spatial dims {list(in_dims)}, too small for {window}: "
                    f"the output would have spatial dims {['?' if o is None else o for o in outs]}; if the model "
                    f"leaves its input sizes open, {ctx.size_hint(0)}")


# -- convolution --------------------------------------------------------------


@converter("onnx.Conv", since=1)
def conv(ctx: LowerCtx, node: Node):
    return [lower_conv(ctx)]


def lower_conv(ctx: LowerCtx, tail=None) -> relax.Expr:
    """The node's Conv (ONNX attributes, operands x, w, b?) through `ctx.kernels.conv`, with the
    fused `tail` (a `kernels.Tail`) of an mdoc.conv."""
    x, w = ctx.input(0), ctx.input(1)
    xs, ws = ctx.shape(0), ctx.shape(1)
    nd = len(xs) - 2
    if nd not in (1, 2, 3):
        raise ctx.error(f"{nd}-d convolution is not supported (1-d, 2-d and 3-d are)")
    kernel = attr_ints(ctx, "kernel_shape") or [static_int(ctx, d, "kernel size") for d in ws[2:]]
    strides, dilations, pads = _spatial_attrs(ctx, xs[2:], kernel)
    _check_window(ctx, xs[2:], kernel, strides, dilations, pads)
    if not all(is_static(p) for p in pads):
        x, pads = _padded_input(ctx, x, pads), [0] * len(pads)
    groups = int(ctx.attr("group", 1))
    bias = ctx.input(2) if ctx.has_input(2) else None  # the kernel adds it (and may fuse it)
    return ctx.kernels.conv(ctx, x, w, strides=strides, pads=pads, dilations=dilations, groups=groups, bias=bias,
                            tail=tail)


_CONV_T = {1: (R.nn.conv1d_transpose, "NCW", "IOW"), 2: (R.nn.conv2d_transpose, "NCHW", "IOHW"),
           3: (R.nn.conv3d_transpose, "NCDHW", "IODHW")}


@converter("onnx.ConvTranspose", since=1)
def conv_transpose(ctx: LowerCtx, node: Node):
    x, w = ctx.input(0), ctx.input(1)
    xs, ws = ctx.shape(0), ctx.shape(1)
    nd = len(xs) - 2
    if nd not in _CONV_T:
        raise ctx.error(f"{nd}-d transposed convolution is not supported (1-d, 2-d and 3-d are)")
    kernel = attr_ints(ctx, "kernel_shape") or [static_int(ctx, d, "kernel size") for d in ws[2:]]
    strides = attr_ints(ctx, "strides") or [1] * nd
    dilations = attr_ints(ctx, "dilations") or [1] * nd
    out_pad = attr_ints(ctx, "output_padding") or [0] * nd
    groups = int(ctx.attr("group", 1))
    mode = attr_str(ctx, "auto_pad", "NOTSET")
    out_shape = attr_ints(ctx, "output_shape")
    if out_shape is not None and len(out_shape) > nd:
        out_shape = out_shape[-nd:]
    if out_shape is not None or mode in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(nd):
            eff = (kernel[i] - 1) * dilations[i] + 1
            if out_shape is None:  # SAME: the output is input * stride, whatever the input's size
                total = out_pad[i] + eff - strides[i]
            else:
                size = ctx.static_dim(0, 2 + i, "ConvTranspose's output_shape attribute")
                total = strides[i] * (size - 1) + out_pad[i] + eff - out_shape[i]
            if total < 0:
                out_pad[i] -= total
                total = 0
            if mode == "SAME_UPPER":
                begins.append(total // 2), ends.append(total - total // 2)
            else:
                begins.append(total - total // 2), ends.append(total // 2)
        pads = begins + ends
    elif mode == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = attr_ints(ctx, "pads") or [0] * (2 * nd)
    _check_transposed(ctx, xs[2:], kernel, strides, dilations, pads, out_pad)
    fn, data_layout, kernel_layout = _CONV_T[nd]
    # Relax requires output_padding < stride; larger paddings extend the output with zeros below.
    extra = [max(0, p - (s - 1)) for p, s in zip(out_pad, strides)]
    rel_pad = [p - e for p, e in zip(out_pad, extra)]
    y = ctx.emit(fn(x, w, strides=strides, padding=pads, output_padding=rel_pad, dilation=dilations,
                    groups=groups, data_layout=data_layout, kernel_layout=kernel_layout))
    if any(extra):
        y = ctx.emit(R.nn.pad(y, [0, 0, 0, 0] + [v for e in extra for v in (0, e)]))
    if ctx.has_input(2):
        y = R.add(y, _per_channel(ctx, ctx.input(2), nd + 2))
    return [y]


def _check_transposed(ctx: LowerCtx, in_dims, kernel, strides, dilations, pads, out_pad) -> None:
    """MdocError when pads larger than the transposed convolution's full output leave nothing."""
    nd = len(kernel)
    outs = [strides[i] * (int(in_dims[i]) - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            - pads[i] - pads[nd + i] if is_static(in_dims[i]) else None for i in range(nd)]
    _refuse_empty(ctx, in_dims, outs, f"pads {list(pads)}")


# -- pooling ------------------------------------------------------------------



def _pool(ctx: LowerCtx, node: Node, kind: str):
    x = ctx.input(0)
    xs = ctx.shape(0)
    nd = len(xs) - 2
    if nd not in (1, 2, 3):
        raise ctx.error(f"{nd}-d pooling is not supported (1-d, 2-d and 3-d are)")
    if kind == "max" and len(node.outputs) > 1 and node.outputs[1].has_uses():
        raise ctx.error("the Indices result of MaxPool is not supported by the Relax target")
    if int(ctx.attr("storage_order", 0)) and len(node.outputs) > 1:
        raise ctx.error("storage_order=1 is not supported")
    kernel = attr_ints(ctx, "kernel_shape")
    strides, dilations, pads = _spatial_attrs(ctx, xs[2:], kernel)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    count_include_pad = bool(ctx.attr("count_include_pad", 0))
    _check_window(ctx, xs[2:], kernel, strides, dilations, pads, ceil_mode)
    if ceil_mode:
        ceil_mode = _ceil_matters(ctx, xs[2:], kernel, strides, dilations, pads)
    if kind == "avg" and max(kernel) > WIDE_WINDOW and all(is_static(p) and int(p) == 0 for p in pads) \
            and all(d == 1 for d in dilations):
        return [_wide_avg_pool(ctx, x, kernel, strides, ceil_mode)]
    if kind == "avg" and (count_include_pad and ceil_mode or not all(is_static(p) for p in pads)):
        return [_avg_pool_padded(ctx, x, kernel, strides, dilations, pads, ceil_mode, count_include_pad)]
    if not all(is_static(p) for p in pads):  # SAME on run-time sizes: max over explicit -inf padding
        x, pads = _padded_input(ctx, x, pads, _lowest(str(x.ty.dtype))), [0] * len(pads)
    return [ctx.kernels.pool(ctx, x, kind, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                             ceil_mode=ceil_mode, count_include_pad=count_include_pad)]


def _lowest(dtype: str) -> float:
    """The padding value a max pool never picks."""
    return float("-inf") if is_float(dtype) else float(np.iinfo(dtype).min)


def _out_size(size, k, s, d, pb, pe, ceil_mode):
    eff = (k - 1) * d + 1
    num = size + pb + pe - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + pb:
        out -= 1  # a last window that starts in the end padding is dropped
    return out


def _ceil_matters(ctx, in_dims, kernel, strides, dilations, pads) -> bool:
    nd = len(kernel)
    if not all(is_static(d) for d in in_dims):
        return True
    return any(_out_size(int(in_dims[i]), kernel[i], strides[i], dilations[i], pads[i], pads[nd + i], True)
               != _out_size(int(in_dims[i]), kernel[i], strides[i], dilations[i], pads[i], pads[nd + i], False)
               for i in range(nd))


WIDE_WINDOW = 64
"""An average pool whose window is wider than this is summed over the window clamped to the input."""


def _wide_avg_pool(ctx, x, kernel, strides, ceil_mode: bool) -> relax.Expr:
    """AveragePool without padding whose window may exceed the input, summed over the clamped window.

    Hugging Face's EfficientNet pools its 7x7 map with AvgPool2d(1280, ceil_mode=True): TOPI
    loops over all 1280 x 1280 window positions and tests each against the bounds (2.2 s of a
    2.2 s call). Without padding, each output averages the cells of its window that lie inside
    the input (what onnxruntime computes whether or not count_include_pad is set), so the window
    loops run to min(kernel, size) only.
    """
    dims = ctx.shape_of(x)
    nd = len(kernel)
    dt = str(x.ty.dtype)
    sizes = [prim(d) for d in dims[2:]]
    outs = [prim(_out_size(d, k, s, 1, 0, 0, ceil_mode)) if is_static(d) else
            simplify(((tirx.floordiv(prim(d) - k + s - 1, s) if ceil_mode else tirx.floordiv(prim(d) - k, s)) + 1))
            for d, k, s in zip(dims[2:], kernel, strides)]

    def compute(data):
        axes = [te.reduce_axis((0, tirx.min(prim(k), size)), name=f"r{i}")
                for i, (k, size) in enumerate(zip(kernel, sizes))]

        def start(i, o):
            return o * strides[i]

        def cell(*idx):
            n, c, pos = idx[0], idx[1], idx[2:]
            inside = tirx.all(*[start(i, pos[i]) + axes[i] < sizes[i] for i in range(nd)])
            at = [start(i, pos[i]) + axes[i] for i in range(nd)]
            return te.sum(tirx.Select(inside, data(n, c, *at), tirx.const(0, dt)), axis=axes)

        total = te.compute([*data.shape[:2], *outs], cell, name="wide_avg_sum")

        def avg(*idx):
            pos = idx[2:]
            n = 1
            for i in range(nd):
                n = n * (tirx.min(pos[i] * strides[i] + kernel[i], sizes[i]) - pos[i] * strides[i])
            return total(*idx) / tirx.Cast(dt, n)

        return te.compute(total.shape, avg, name="wide_avg_pool")

    return ctx.bb.emit_te(compute, x, primfunc_name_hint="wide_avg_pool")


def _avg_pool_padded(ctx, x, kernel, strides, dilations, pads, ceil_mode: bool, count_include_pad: bool):
    """AveragePool with its padding made explicit, for the cases Relax's own padding gets wrong.

    * ceil_mode with count_include_pad, as onnxruntime computes it: the divisor counts the
      explicit padding but not the extra cells that ceil mode adds past the end padding. Padding
      with zeros first and then averaging without padding, excluding what lies outside, is
      exactly that.
    * pads that are TIR expressions (SAME on run-time sizes): zeros padded explicitly; when the
      padding must not be counted, the divisor is the same pool over ones padded the same way.
    """
    nd = len(kernel)
    dt = str(x.ty.dtype)
    padded = _padded_input(ctx, x, pads)
    pool = _POOL["avg"][nd]
    attrs = dict(pool_size=kernel, strides=strides, padding=[0] * (2 * nd), dilation=dilations,
                 ceil_mode=ceil_mode, layout=_POOL_LAYOUT[nd])
    if count_include_pad:
        return pool(padded, count_include_pad=False, **attrs)
    summed = ctx.emit(pool(padded, count_include_pad=True, **attrs))
    ones = ctx.emit(R.ones(relax.ShapeExpr([1, 1, *[prim(d) for d in ctx.shape_of(x)[2:]]]), dt))
    share = ctx.emit(pool(_padded_input(ctx, ones, pads), count_include_pad=True, **attrs))
    return R.divide(summed, share)


@converter("onnx.MaxPool", since=1)
def max_pool(ctx: LowerCtx, node: Node):
    return _pool(ctx, node, "max")


@converter("onnx.AveragePool", since=1)
def avg_pool(ctx: LowerCtx, node: Node):
    return _pool(ctx, node, "avg")


@converter("onnx.GlobalAveragePool", since=1)
def global_avg_pool(ctx: LowerCtx, node: Node):
    rank = ctx.rank(0)
    return [R.mean(ctx.input(0), axis=list(range(2, rank)), keepdims=True)]


@converter("onnx.GlobalMaxPool", since=1)
def global_max_pool(ctx: LowerCtx, node: Node):
    rank = ctx.rank(0)
    return [R.max(ctx.input(0), axis=list(range(2, rank)), keepdims=True)]


@converter("onnx.LpPool", since=1)
def lp_pool(ctx: LowerCtx, node: Node):
    p = int(ctx.attr("p", 2))
    x = ctx.input(0)
    xs = ctx.shape(0)
    nd = len(xs) - 2
    kernel = attr_ints(ctx, "kernel_shape")
    strides, dilations, pads = _spatial_attrs(ctx, xs[2:], kernel)
    _check_window(ctx, xs[2:], kernel, strides, dilations, pads, bool(ctx.attr("ceil_mode", 0)))
    dt = str(x.ty.dtype)
    xp = ctx.emit(R.power(R.abs(x), float_const(float(p), dt)))
    if not all(is_static(d) for d in pads):  # SAME on run-time sizes: zeros add nothing to the sum
        xp, pads = _padded_input(ctx, xp, pads), [0] * len(pads)
    s = ctx.emit(_POOL["avg"][nd](xp, pool_size=kernel, strides=strides, padding=pads, dilation=dilations,
                                  ceil_mode=bool(ctx.attr("ceil_mode", 0)), count_include_pad=True,
                                  layout=_POOL_LAYOUT[nd]))
    s = ctx.emit(R.multiply(s, float_const(float(np.prod(kernel)), dt)))
    return [R.power(s, float_const(1.0 / p, dt))]


@converter("onnx.GlobalLpPool", since=2)
def global_lp_pool(ctx: LowerCtx, node: Node):
    p = float(ctx.attr("p", 2))
    x = ctx.input(0)
    dt = str(x.ty.dtype)
    s = ctx.emit(R.sum(R.power(R.abs(x), float_const(p, dt)), axis=list(range(2, ctx.rank(0))), keepdims=True))
    return [R.power(s, float_const(1.0 / p, dt))]


# -- normalization ------------------------------------------------------------


def _per_channel(ctx: LowerCtx, v: relax.Expr, rank: int) -> relax.Expr:
    """A per-channel vector as [1, C, 1, ...] of the data's full rank.

    Full rank matters: Relax's ConvertLayout carries NHWC through a binary op only
    when both operands have the data's rank; with [C, 1, 1] it converts back to
    NCHW after every convolution (two transposes per conv).
    """
    return ctx.emit(R.reshape(v, [1, -1] + [1] * (rank - 2)))


@converter("onnx.BatchNormalization", since=1)
def batch_norm(ctx: LowerCtx, node: Node):
    """Inference batch norm, y = x * a + b with a = scale / sqrt(var + eps), b = B - mean * a.

    With constant statistics (the usual case) `a` and `b` are computed here in float64.
    training_mode=1 (opset 14+) normalizes with the batch's statistics instead and also
    returns the running mean and variance updated with `momentum`.
    """
    if int(ctx.attr("training_mode", 0)):
        return _batch_norm_training(ctx)
    if ctx.opset < 7 and not int(ctx.attr("is_test", 1 if ctx.opset >= 6 else 0)) and len(node.outputs) > 1 \
            and any(o.has_uses() for o in node.outputs[1:]):
        raise ctx.error("training-mode outputs are not supported")
    x = ctx.input(0)
    rank = ctx.rank(0)
    dt = str(x.ty.dtype)
    eps = float(ctx.attr("epsilon", 1e-5))
    spatial = int(ctx.attr("spatial", 1)) if ctx.opset < 9 else 1
    arrays = [ctx.const(i) for i in range(1, 5)]
    if all(a is not None for a in arrays):
        scale, bias, mean, var = (a.astype(np.float64) for a in arrays)
        a = scale / np.sqrt(var + eps)
        b = bias - mean * a
        a_c, b_c = relax.const(a.astype(dt)), relax.const(b.astype(dt))
        if spatial:
            a_c, b_c = _per_channel(ctx, a_c, rank), _per_channel(ctx, b_c, rank)
        return [R.add(ctx.emit(R.multiply(x, a_c)), b_c)]
    scale, bias, mean, var = (ctx.input(i) for i in range(1, 5))
    if spatial:
        scale, bias, mean, var = (_per_channel(ctx, v, rank) for v in (scale, bias, mean, var))
    inv = ctx.emit(R.divide(scale, R.sqrt(R.add(var, float_const(eps, dt)))))
    return [R.add(ctx.emit(R.multiply(ctx.emit(R.subtract(x, mean)), inv)), bias)]


def _batch_norm_training(ctx: LowerCtx) -> list:
    x = ctx.input(0)
    rank = ctx.rank(0)
    dt = str(x.ty.dtype)
    eps, momentum = float(ctx.attr("epsilon", 1e-5)), float(ctx.attr("momentum", 0.9))
    axes = [0] + list(range(2, rank))
    batch_mean = ctx.emit(R.mean(x, axes, keepdims=False))
    centered = ctx.emit(R.subtract(x, _per_channel(ctx, batch_mean, rank)))
    batch_var = ctx.emit(R.mean(R.multiply(centered, centered), axes, keepdims=False))
    scale, bias, mean, var = (ctx.input(i) for i in range(1, 5))
    inv = ctx.emit(R.divide(scale, R.sqrt(R.add(batch_var, float_const(eps, dt)))))
    y = R.add(ctx.emit(R.multiply(centered, _per_channel(ctx, inv, rank))), _per_channel(ctx, bias, rank))

    def running(old: relax.Expr, new: relax.Expr) -> relax.Expr:
        return R.add(R.multiply(old, float_const(momentum, dt)), R.multiply(new, float_const(1 - momentum, dt)))

    return [y, running(mean, batch_mean), running(var, batch_var)]


def normalize(ctx: LowerCtx, x: relax.Expr, axes: list[int], eps: float):
    """(x - mean) / sqrt(var + eps) over `axes`, with the mean and 1/std (keepdims) as well."""
    dt = str(x.ty.dtype)
    mean = ctx.emit(R.mean(x, axis=axes, keepdims=True))
    d = ctx.emit(R.subtract(x, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), axis=axes, keepdims=True))
    inv_std = ctx.emit(R.rsqrt(R.add(var, float_const(eps, dt))))
    return ctx.emit(R.multiply(d, inv_std)), mean, inv_std


@converter("onnx.InstanceNormalization", since=1)
def instance_norm(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    rank = ctx.rank(0)
    y, _, _ = normalize(ctx, x, list(range(2, rank)), float(ctx.attr("epsilon", 1e-5)))
    y = ctx.emit(R.multiply(y, _per_channel(ctx, ctx.input(1), rank)))
    return [R.add(y, _per_channel(ctx, ctx.input(2), rank))]


@converter("onnx.LayerNormalization", since=17)
def layer_norm(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    rank = ctx.rank(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", -1)), rank)
    dt = str(x.ty.dtype)
    stash = int(ctx.attr("stash_type", 1))
    xc = ctx.emit(R.astype(x, "float32")) if stash == 1 and dt != "float32" else x
    y, mean, inv_std = normalize(ctx, xc, list(range(axis, rank)), float(ctx.attr("epsilon", 1e-5)))
    if xc is not x:
        y = ctx.emit(R.astype(y, dt))
    y = ctx.emit(R.multiply(y, ctx.input(1)))
    if ctx.has_input(2):
        y = R.add(y, ctx.input(2))
    return [y, mean, inv_std]


@converter("onnx.GroupNormalization", since=18)
def group_norm(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    xs = ctx.shape(0)
    rank = len(xs)
    groups = int(ctx.attr("num_groups"))
    c = static_int(ctx, xs[1], "channel dim")
    grouped = ctx.emit(R.reshape(x, [xs[0], groups, c // groups] + list(xs[2:])))
    y, _, _ = normalize(ctx, grouped, list(range(2, rank + 1)), float(ctx.attr("epsilon", 1e-5)))
    scale, bias = ctx.input(1), ctx.input(2)
    if ctx.opset < 21:  # scale and bias per group
        y = ctx.emit(R.multiply(y, R.reshape(scale, [groups] + [1] * (rank - 1))))
        y = ctx.emit(R.add(y, R.reshape(bias, [groups] + [1] * (rank - 1))))
        return [R.reshape(y, xs)]
    y = ctx.emit(R.reshape(y, xs))
    y = ctx.emit(R.multiply(y, _per_channel(ctx, scale, rank)))
    return [R.add(y, _per_channel(ctx, bias, rank))]


@converter("onnx.MeanVarianceNormalization", since=9)
def mean_variance_norm(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    rank = ctx.rank(0)
    axes = [norm_axis(ctx, a, rank) for a in (attr_ints(ctx, "axes") or [0, 2, 3])]
    y, _, _ = normalize(ctx, x, axes, 1e-9)
    return [y]


@converter("onnx.LRN", since=1)
def lrn(ctx: LowerCtx, node: Node):
    """y = x / (bias + alpha / size * sum of x^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)])^beta."""
    x = ctx.input(0)
    xs = ctx.shape(0)
    rank = len(xs)
    dt = str(x.ty.dtype)
    size = int(ctx.attr("size"))
    alpha, beta, bias = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0))
    lo = (size - 1) // 2
    hi = size - 1 - lo
    sq = ctx.emit(R.multiply(x, x))
    padded = ctx.emit(R.nn.pad(sq, [0, 0, lo, hi] + [0, 0] * (rank - 2)))
    c = xs[1]
    total = None
    for j in range(size):
        part = R.strided_slice(padded, axes=[1], begin=[j], end=[c + j])
        total = part if total is None else R.add(total, part)
    total = ctx.emit(total)
    denom = R.power(R.add(float_const(bias, dt), R.multiply(total, float_const(alpha / size, dt))),
                    float_const(beta, dt))
    return [R.divide(x, denom)]


# -- softmax family -------------------------------------------------------------


def _softmax_like(ctx: LowerCtx, node: Node, fn):
    x = ctx.input(0)
    xs = ctx.shape(0)
    rank = len(xs)
    if ctx.opset >= 13:
        return [fn(x, norm_axis(ctx, int(ctx.attr("axis", -1)), rank))]
    axis = norm_axis(ctx, int(ctx.attr("axis", 1)), rank)
    if axis == rank - 1:
        return [fn(x, axis)]
    # opsets < 13 coerce the input to 2-D [prod(dims[:axis]), prod(dims[axis:])]
    flat = ctx.emit(R.reshape(x, [prod(xs[:axis]), prod(xs[axis:])]))
    y = ctx.emit(fn(flat, 1))
    return [R.reshape(y, xs)]


def _hardmax(ctx: LowerCtx, x: relax.Expr, axis: int) -> relax.Expr:
    xs = ctx.shape_of(x)
    dt = str(x.ty.dtype)
    idx = ctx.emit(R.argmax(x, axis=axis, keepdims=True))
    shape = [1] * len(xs)
    shape[axis] = xs[axis]
    iota = ctx.emit(R.reshape(R.arange(0, xs[axis], 1, "int64"), shape))
    return R.astype(R.equal(iota, idx), dt)


converter("onnx.Softmax", since=1)(lambda ctx, node: _softmax_like(ctx, node, lambda x, a: R.nn.softmax(x, a)))
converter("onnx.LogSoftmax", since=1)(
    lambda ctx, node: _softmax_like(ctx, node, lambda x, a: R.nn.log_softmax(x, a)))
converter("onnx.Hardmax", since=1)(
    lambda ctx, node: _softmax_like(ctx, node, lambda x, a: ctx.emit(_hardmax(ctx, x, a))))
