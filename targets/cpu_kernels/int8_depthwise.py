"""The int8 depthwise conv: u8 / s8 activations x s8 weights -> s32 accumulators, requantized in the tile.

Why a kernel of its own: `int8.qconv2d` reduces over groups of 4 input channels with the CPU's
dot product, and a depthwise conv has one input channel per output channel, nothing to reduce
there. Without it a quantized depthwise conv dequantized its input in one pass, ran the float
kernel and quantized the result in another (MobileNetV2's 17), with float32 tensors between.

So the loops are `depthwise.py`'s NCHW ones (`plan_window` / `window_compute` / `schedule_window`:
one task per image, channel and band of rows copies its rows into a padded local buffer, the
register tile is rows x vectors along the width, stride 2 at full width) on integers: the bytes are
widened to int32 and multiplied by the broadcast int32 tap (vpmulld on x86, mul on NEON), the
padding is the activation's zero point, and the epilogue is `QEpilogue`'s (as `int8.py`):

    t = act(float(acc + offset[c]) * mult[c] + bias[c] + residual)      offset[c] = -xz * sum of w[c]
    y = saturate(round(t / y_scale) + y_zero_point)                     when the op requantizes

The activation is read in its own type (no dot product, so no shift by 128). Memory moves bytes
in and out instead of float32; the multiply-adds are integer vectors (LLVM reads the widened bytes as
int16 pairs: vpdpwssd on AVX-512 VNNI, vpmaddwd on AVX2, mla on NEON). Not yet: the float kernel's
channel-vector tile for planes narrower than half a vector (7x7), NCHWc chains, inverted-residual fusion.
"""

from __future__ import annotations


from functools import partial

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import CpuSpec, Kernel, KernelError, Param, batch_dims, finish, window_tag
from .depthwise import (channel_vector_compute, pack_depthwise_weight_blocked, plan_window, schedule_channel_vectors,
                        schedule_window, window_compute)
from .int8 import QEpilogue

__all__ = ["pack_qdepthwise_weight", "qdepthwise_conv2d"]


def pack_qdepthwise_weight(weight: np.ndarray) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> [C, KH, KW] (the kernel broadcasts each tap)."""
    weight = np.asarray(weight, np.int8)
    if weight.ndim != 4 or weight.shape[1] != 1:
        raise KernelError(f"pack_qdepthwise_weight: weight {weight.shape} is not depthwise (shape[1] must be 1)")
    return np.ascontiguousarray(weight[:, 0])


def qdepthwise_conv2d(data_shape, weight_shape, *, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                      x_zero_point: int = 0, epilogue: QEpilogue = QEpilogue(), spec: CpuSpec | None = None,
                      name: str | None = None, tile: tuple[int, int] | None = None) -> Kernel:
    """Y = epilogue(DepthwiseConv(X - xz, W)) for NCHW uint8 (int8 with `epilogue.signed`) X and int8 W [C, 1, KH, KW]
    (channel multiplier 1), Y NCHW; x_zero_point pads. tile: (rows of the register tile, rows per task).

    Returns a Kernel f(x, weight (packed, `packers["weight"]`), offset [C] int32, mult [C] float32, [bias], [residual],
    out).
    """
    spec = spec or CpuSpec.host()
    op = "qdepthwise_conv2d"
    data_shape = batch_dims(op, data_shape)
    n, c, h, wd = data_shape
    oc, one, kh, kw = (int(d) for d in weight_shape)
    if one != 1 or oc != c:
        raise KernelError(f"{op}: weight {tuple(weight_shape)} for data {tuple(data_shape)} is not depthwise with "
                          "channel multiplier 1 (need [C, 1, KH, KW])")
    plan = plan_window(op, data_shape, oc, (kh, kw), strides, padding, dilation, spec, tile)
    (sh, _), (dh, dw) = plan.strides, plan.dilation
    oh, ow = plan.oh, plan.ow
    adtype = "int8" if epilogue.signed else "uint8"
    x = te.placeholder(data_shape, adtype, name="x")
    offset = te.placeholder((oc,), "int32", name="offset")
    mult = te.placeholder((oc,), "float32", name="mult")
    extra, extra_params, bias, residual = epilogue.extra(oc, (n, oc, oh, ow))
    if tile is None and ow * 2 <= plan.lanes:
        return _channel_vectors(plan, x, offset, mult, extra, extra_params, bias, residual, x_zero_point, epilogue,
                                name)

    w = te.placeholder((oc, kh, kw), "int8", name="weight")
    acc = window_compute(plan, x, tirx.const(x_zero_point, adtype), te.sum,
                         lambda pad, i, o, y, col, rkh, rkw: pad[i, o, y * sh + rkh * dh, col + rkw * dw].astype("int32")
                         * w[o, rkh, rkw].astype("int32"))
    # a row that is not whole vectors: the tile is stored whole into a padded buffer and the rows copied out
    # (a predicated uint8 store is scalarized: 384x14x14 0.153 ms, 0.061 so)
    ragged = plan.ow % plan.lanes != 0
    shape = (n, oc, plan.rows, plan.cols // plan.phases) if ragged else (n, oc, oh, ow)
    clamp = (lambda y, xx: (tirx.min(y, oh - 1), tirx.min(xx, ow - 1))) if ragged else (lambda y, xx: (y, xx))
    out = te.compute(shape, lambda i, o, y, xx: epilogue.value(
        acc[i, o, y, xx, 0], offset[o], mult[o], bias[o] if bias is not None else None,
        residual[(i, o, *clamp(y, xx))] if residual is not None else None), name="tile" if ragged else "out")
    if ragged:
        out = te.compute((n, oc, oh, ow), lambda i, o, y, xx: out[i, o, y, xx], name="out")
    sch = Schedule(te.create_prim_func([x, w, offset, mult, *extra, out]))
    schedule_window(sch, plan, out="tile" if ragged else "out")
    if ragged:
        sch.reverse_compute_at(sch.get_sblock("out"), sch.get_loops(sch.get_sblock("tile"))[0])

    return _kernel(sch, plan, epilogue, name, (oc, kh, kw), extra_params, plan.notes, pack_qdepthwise_weight)


def _channel_vectors(plan, x, offset, mult, extra, extra_params, bias, residual, x_zero_point: int,
                     epilogue: QEpilogue, name) -> Kernel:
    """Planes whose row fills at most half a vector (7x7): `depthwise.py`'s channel-vector tile on integers
    (the float kernel's reason: a width vector would be mostly padding)."""
    lanes, (n, oc, oh, ow) = plan.lanes, (plan.n, plan.oc, plan.oh, plan.ow)
    acc, w, blocks, tile = channel_vector_compute(plan, lanes, x, tirx.const(x_zero_point, x.dtype), "int8",
                                                  lambda a, b: a.astype("int32") * b.astype("int32"))
    out = te.compute((n, oc, oh, ow), lambda i, o, y, xx: epilogue.value(
        acc[i, o // lanes, y, xx, o % lanes], offset[o], mult[o], bias[o] if bias is not None else None,
        residual[i, o, y, xx] if residual is not None else None), name="out")
    sch = Schedule(te.create_prim_func([x, w, offset, mult, *extra, out]))
    schedule_channel_vectors(sch, lanes, tile)
    packer = partial(pack_depthwise_weight_blocked, lanes=lanes, blocks=blocks, dtype="int8")
    return _kernel(sch, plan, epilogue, name, (blocks, plan.kh, plan.kw, lanes), extra_params,
                   f"channel-vectors wb={tile[0]} ocv={tile[1]} blocks={blocks}", packer)


def _kernel(sch, plan, epilogue: QEpilogue, name, weight_shape, extra_params, notes: str, packer) -> Kernel:
    n, c, h, wd, oh, ow = plan.n, plan.c, plan.h, plan.w, plan.oh, plan.ow
    adtype = "int8" if epilogue.signed else "uint8"
    tag = window_tag((plan.kh, plan.kw), plan.strides, plan.pads, plan.dilation)
    kname = name or f"qdwconv2d_{tag}_{c}x{h}x{wd}" + (f"_{epilogue.tag()}" if epilogue.tag() else "")
    params = (Param("x", (n, c, h, wd), adtype), Param("weight", weight_shape, "int8"), Param("offset", (c,), "int32"),
              Param("mult", (c,)), *extra_params,
              Param("out", (n, c, oh, ow), epilogue.out_dtype))
    return Kernel(kname, finish(sch.mod["main"], kname), params, 2 * n * c * oh * ow * plan.kh * plan.kw, notes,
                  packers={"weight": packer})
