"""Neural-network ops: Conv, ConvTranspose, pooling, normalizations, LRN, Softmax family.

Conv, MaxPool and AveragePool go through `ctx.kernels` (see `kernels.py`) so that
hand-scheduled kernels can replace the default `relax.op.nn` calls.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx, is_static
from ..kernels import POOL_LAYOUTS as _POOL_LAYOUT
from ..kernels import POOL_OPS as _POOL
from ..registry import converter
from ._common import attr_ints, attr_str, float_const, norm_axis, prod, static_int

R = relax.op


def _auto_pads(ctx: LowerCtx, in_dims, kernel, strides, dilations) -> list[int] | None:
    """ONNX pads (begins then ends) for auto_pad, or None for NOTSET (use the pads attribute)."""
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
        size = static_int(ctx, in_dims[i], f"spatial dim {i} (auto_pad {mode})")
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
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


# -- convolution --------------------------------------------------------------


@converter("onnx.Conv", since=1)
def conv(ctx: LowerCtx, node: Node):
    x, w = ctx.input(0), ctx.input(1)
    xs, ws = ctx.shape(0), ctx.shape(1)
    nd = len(xs) - 2
    if nd not in (1, 2, 3):
        raise ctx.error(f"{nd}-d convolution is not supported (1-d, 2-d and 3-d are)")
    kernel = attr_ints(ctx, "kernel_shape") or [static_int(ctx, d, "kernel size") for d in ws[2:]]
    strides, dilations, pads = _spatial_attrs(ctx, xs[2:], kernel)
    groups = int(ctx.attr("group", 1))
    bias = ctx.input(2) if ctx.has_input(2) else None  # the kernel adds it (and may fuse it)
    return [ctx.kernels.conv(ctx, x, w, strides=strides, pads=pads, dilations=dilations, groups=groups, bias=bias)]


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
    if out_shape is None and mode in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = [static_int(ctx, xs[2 + i], "spatial dim") * strides[i] for i in range(nd)]
    if out_shape is not None:
        begins, ends = [], []
        for i in range(nd):
            size = static_int(ctx, xs[2 + i], "spatial dim")
            total = strides[i] * (size - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1 - out_shape[i]
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
    if ceil_mode:
        ceil_mode = _ceil_matters(ctx, xs[2:], kernel, strides, dilations, pads)
    if kind == "avg" and ceil_mode and count_include_pad:
        return [_avg_pool_ceil_include_pad(ctx, x, xs, kernel, strides, dilations, pads)]
    return [ctx.kernels.pool(ctx, x, kind, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                             ceil_mode=ceil_mode, count_include_pad=count_include_pad)]


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


def _avg_pool_ceil_include_pad(ctx, x, xs, kernel, strides, dilations, pads):
    """AveragePool, ceil_mode=1, count_include_pad=1 as onnxruntime computes it: the divisor counts
    the explicit padding but not the extra cells that ceil mode adds past the end padding."""
    nd = len(kernel)
    ins = [static_int(ctx, d, "spatial dim (ceil_mode with count_include_pad)") for d in xs[2:]]
    outs = [_out_size(ins[i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i], True) for i in range(nd)]
    # sum pool over the explicitly padded input, extended with zeros so that every ceil window fits
    extra = [max(0, (outs[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                 - (ins[i] + pads[i] + pads[nd + i])) for i in range(nd)]
    width = [0, 0, 0, 0] + [v for i in range(nd) for v in (pads[i], pads[nd + i] + extra[i])]
    padded = ctx.emit(R.nn.pad(x, width))
    avg = ctx.emit(_POOL["avg"][nd](padded, pool_size=kernel, strides=strides, padding=[0] * (2 * nd),
                                    dilation=dilations, ceil_mode=False, count_include_pad=True,
                                    layout=_POOL_LAYOUT[nd]))
    # divisor per output cell: the window's size clipped at the end of the explicit padding
    counts = np.ones(outs, dtype=np.float64)
    for i in range(nd):
        limit = ins[i] + pads[i] + pads[nd + i]
        starts = np.arange(outs[i]) * strides[i]
        taps = starts[:, None] + np.arange(kernel[i])[None, :] * dilations[i]
        c = (taps < limit).sum(axis=1).astype(np.float64)
        shape = [1] * nd
        shape[i] = outs[i]
        counts = counts * c.reshape(shape)
    scale = (float(np.prod(kernel)) / counts).astype(str(x.ty.dtype))
    return R.multiply(avg, relax.const(scale))


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
    dt = str(x.ty.dtype)
    xp = ctx.emit(R.power(R.abs(x), float_const(float(p), dt)))
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
