"""Depthwise conv2d (one input channel per group, any channel multiplier) on NCHW activations.

(With layout="NCHWc" the activations are channel-blocked and the kernel is `blocked_window`'s;
the rest of this docstring is about NCHW.)

Why a kernel of its own: a depthwise conv has no reduction over channels, so the dense
conv's register tile (broadcast one input value into a vector of output channels) would
multiply mostly zeros, and a channels-last repack (NCHW16c) costs a full transposition on
the way in and out for a layer that is memory-bound anyway.  So here the vectors run along
the width, which is contiguous in NCHW, and every FMA is (input row vector) x (broadcast
weight):

* one parallel task per (image, channel, band of rows) copies the rows it needs into a
  zero-padded local buffer (a few KB, stays in L1), vectorized along the row;
* the register tile is `rb` output rows x the whole row width in vectors: for each
  (kh, kw) the weight is broadcast once and every row vector gets one load + one FMA;
* stride 2 (MobileNetV2's downsampling layers) is computed at full input resolution along
  the width and every other column is kept when the tile is stored: contiguous loads and
  2x the FMAs are much cheaper than TVM's strided loads, which it scalarizes into 16 scalar
  loads and inserts per vector (measured: 3x slower for the 96x112x112 layer);
* the epilogue (bias, residual, activation) runs on the tile before the store.

Weights stay [C * m, KH, KW] (no packing needed: they are broadcast scalars).
Measured pitfalls that shaped this: vectorized loops must be exactly `lanes` wide (a
56-wide vector makes LLVM emit hundreds of vinsertps); and a padding if_then_else inside a
loop split with a remainder predicate makes TVM scalarize the loop into a branch per
element, so the padded copy vectorizes each whole row instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from .blocked_window import blocked_window_compute, plan_blocked_window, schedule_blocked_window
from .common import (CpuSpec, Epilogue, Kernel, KernelError, Param, apply_nchw_epilogue, apply_nchwc_epilogue, batch_dims, ceil_div,
                     check_dtype, check_layout, epilogue_inputs, finish, window_geometry, window_tag)
from .tile_schedules import schedule_nchw_tile

__all__ = ["WindowPlan", "depthwise_conv2d", "pack_depthwise_weight", "plan_window", "schedule_window", "window_compute"]


@dataclass(frozen=True)
class WindowPlan:
    """Geometry and tiling of a per-channel sliding-window op on NCHW (depthwise conv, pooling)."""

    n: int
    c: int  # input channels
    h: int
    w: int
    oc: int  # output channels (c * multiplier)
    kh: int
    kw: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    oh: int
    ow: int
    full: bool  # stride > 1 computed at full input resolution along the width
    rb: int  # rows of the register tile
    rows_task: int  # output rows of one parallel task
    nxv: int  # vectors per tile row
    lanes: int

    @property
    def xs(self) -> int:  # column stride inside the accumulator grid
        return 1 if self.full else self.strides[1]

    @property
    def phases(self) -> int:
        return self.strides[1] if self.full else 1

    @property
    def cols(self) -> int:  # accumulator columns, a whole number of tiles
        sw = self.strides[1]
        cols = ceil_div((self.ow - 1) * sw + 1, self.lanes) * self.lanes if self.full else ceil_div(self.ow, self.lanes) * self.lanes
        return ceil_div(cols, self.nxv * self.lanes) * self.nxv * self.lanes

    @property
    def rows(self) -> int:
        return ceil_div(self.oh, self.rows_task) * self.rows_task

    @property
    def padded_hw(self) -> tuple[int, int]:
        (sh, _), (dh, dw) = self.strides, self.dilation
        return (self.rows - 1) * sh + dh * (self.kh - 1) + 1, (self.cols - 1) * self.xs + dw * (self.kw - 1) + 1

    @property
    def notes(self) -> str:
        return f"rb={self.rb} rows/task={self.rows_task} vectors={self.nxv}{' full-width' if self.full else ''}"


def plan_window(op: str, data_shape, oc: int, kernel, strides, padding, dilation, spec: CpuSpec,
                tile: tuple[int, int] | None = None, ceil_mode: bool = False) -> WindowPlan:
    n, c, h, w = batch_dims("depthwise_conv2d", data_shape)
    (kh, kw), (sh, sw), pads, (dh, dw), (oh, ow) = window_geometry(op, data_shape, kernel, strides, padding, dilation,
                                                                   ceil_mode)
    lanes, budget = spec.lanes, spec.accumulators
    full_cols = ceil_div((ow - 1) * sw + 1, lanes) * lanes
    full = sw > 1 and full_cols // lanes <= budget
    cols = full_cols if full else ceil_div(ow, lanes) * lanes
    nxv = cols // lanes if full else min(cols // lanes, budget)
    if tile is not None:
        rb, rows_task = tile
    else:
        # Rows per register tile: about 8 accumulators, at least 2 rows.  Measured on one core,
        # 144x56x56: 2 rows x 4 vectors 0.127 ms, 4 x 4 0.237, 7 x 4 0.240; 32x112x112: 2 x 7
        # 0.112, 1 x 7 0.146, 4 x 7 0.149; 192x28x28: 4 x 2 0.043, 7 x 2 0.062.
        rb_max = max(1, min(oh, max(2, 8 // nxv), budget // nxv))
        # rows per task: the whole plane when its padded band fits ~48 KB, else fewer
        xs = 1 if full else sw
        vw_est = (cols - 1) * xs + dw * (kw - 1) + 1
        rows_task = oh
        while rows_task > rb_max and ((rows_task - 1) * sh + dh * (kh - 1) + 1) * vw_est * 4 > 48 * 1024:
            rows_task = ceil_div(rows_task, 2)
        divisors = [d for d in range(1, rb_max + 1) if rows_task % d == 0]
        rb = divisors[-1]
        if 2 * rb < rb_max:  # no good divisor: even tiles, a few padded rows
            rb = ceil_div(rows_task, ceil_div(rows_task, rb_max))
        rows_task = ceil_div(rows_task, rb) * rb
    return WindowPlan(n, c, h, w, oc, kh, kw, (sh, sw), pads, (dh, dw), oh, ow, full, rb, rows_task, nxv, lanes)


def window_compute(plan: WindowPlan, data: te.Tensor, pad_value, reduce, term, name: str = "acc") -> te.Tensor:
    """The padded band and the accumulator of a window op.

    term(padded, i, o, y, col, rkh, rkw) -> the value reduced over the window, reading
    padded[i, o, y * sh + rkh * dh, col + rkw * dw] where col is the accumulator's input column;
    reduce is te.sum or te.max.  The accumulator has shape (n, oc, rows, cols / phases, phases):
    full column xq * phases + p, so the output reads acc[i, o, y, x, 0] for output column x.
    """
    pt, pl, _, _ = plan.pads
    mult = plan.oc // plan.c
    vh, vw = plan.padded_hw
    h, w = plan.h, plan.w
    padded = te.compute(
        (plan.n, plan.oc, vh, vw),
        lambda i, o, y, x: tirx.if_then_else(tirx.all(y >= pt, y < pt + h, x >= pl, x < pl + w),
                                             data[i, o // mult if mult > 1 else o, y - pt, x - pl], pad_value),
        name="pad")
    rkh = te.reduce_axis((0, plan.kh), "rkh")
    rkw = te.reduce_axis((0, plan.kw), "rkw")
    ph = plan.phases
    return te.compute(
        (plan.n, plan.oc, plan.rows, plan.cols // ph, ph),
        lambda i, o, y, xq, p: reduce(term(padded, i, o, y, (xq * ph + p) * plan.xs, rkh, rkw), axis=[rkh, rkw]),
        name=name)


def schedule_window(sch: Schedule, plan: WindowPlan, out: str = "out", acc: str = "acc", pad: str = "pad") -> None:
    """Tile a window op built by `window_compute` (see the module docstring).

    The accumulator's own loops define the tile (so its columns are exactly whole vectors) and
    the epilogue is placed under them with reverse_compute_at; the other way round (compute_at
    of acc under the output's loops), the stride-2 read acc[2 * x] makes TVM infer a 63-column
    region and predicate the FMAs.  No set_scope("local"): TVM allocates every "local" buffer
    with TVMBackendAllocWorkspace, once per task, while a "global" one under 1 KB becomes a
    stack alloca.
    """
    lanes, rb = plan.lanes, plan.rb
    ob, ab, pb_ = sch.get_sblock(out), sch.get_sblock(acc), sch.get_sblock(pad)
    i, o, y, xq, p, r1, r2 = sch.get_loops(ab)
    x = sch.fuse(xq, p)
    yt, yo, yi = sch.split(y, [None, plan.rows_task // rb, rb])
    xc, xo, xl = sch.split(x, [None, plan.nxv, lanes])
    sch.reorder(i, yt, o, yo, xc, r1, r2, yi, xo, xl)
    task = sch.fuse(i, yt, o)  # bands of rows outermost (conv.py, "Tasks by rows")
    sch.parallel(task)
    sch.unroll(yi)
    sch.unroll(xo)
    sch.vectorize(xl)
    sch.reverse_compute_at(ob, xc, preserve_unit_loops=True)
    oy, ox = sch.get_loops(ob)[-2:]
    oxo, oxl = sch.split(ox, [None, lanes])
    sch.unroll(oy)
    sch.unroll(oxo)
    sch.vectorize(oxl)
    sch.compute_at(pb_, task, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(pb_)[-1])
    init = sch.decompose_reduction(ab, r1)
    sch.vectorize(sch.get_loops(init)[-1])


def depthwise_conv2d(data_shape: Sequence[int], weight, *, strides=1, padding=0, dilation=1,
                     epilogue: Epilogue = Epilogue(), dtype: str = "float32", spec: CpuSpec | None = None,
                     name: str | None = None, tile: tuple[int, ...] | None = None, layout: str = "NCHW") -> Kernel:
    """A scheduled depthwise conv2d (groups == C, weight [C * m, 1, KH, KW]).

    data_shape: the NCHW shape of the input, whatever the layout.
    weight: numpy array (becomes a constant parameter) or its shape (the kernel then takes
        the packed array at run time; `kernel.packers["weight"]` packs it).
    layout: "NCHW", or "NCHWc": data, residual and output in `blocked_shape(.., spec.lanes)`,
        channel multiplier 1 and C a multiple of the lanes (see blocked_window.py).
    tile: NCHW: (rb, rows per task), the register tile's row count and the task height;
        NCHWc: (wb, ocv) or (wb, ocv, rows per task), the register tile's output columns and
        channel vectors and the task height.
    Returns a Kernel `f(data, weight, [bias], [residual], out)`.
    """
    spec = spec or CpuSpec.host()
    op = "depthwise_conv2d"
    check_dtype(op, dtype)
    check_layout(op, layout)
    data_shape = batch_dims("depthwise_conv2d", data_shape)
    wshape = tuple(int(d) for d in (weight.shape if isinstance(weight, np.ndarray) else weight))
    if len(data_shape) != 4 or len(wshape) != 4 or wshape[1] != 1 or wshape[0] % data_shape[1]:
        raise KernelError(f"{op}: weight {wshape} for data {data_shape} is not depthwise "
                          f"(need shape [C * multiplier, 1, KH, KW]); use conv2d(groups=...) for other groupings")
    if epilogue.scale is not None:
        raise KernelError(f"{op}: Epilogue.scale is not supported for convolutions; fold it into the weight")
    oc, _, kh, kw = wshape
    if layout == "NCHWc":
        if oc != data_shape[1]:
            raise KernelError(f"{op}: NCHWc layout needs channel multiplier 1; weight {wshape} for data {data_shape} "
                              f"has {oc // data_shape[1]}")
        return _depthwise_blocked(data_shape, weight, strides, padding, dilation, epilogue, spec, name, tile)
    plan = plan_window(op, data_shape, oc, (kh, kw), strides, padding, dilation, spec, tile)
    if tile is None and plan.ow * 2 <= spec.lanes:
        return _depthwise_channel_vectors(plan, weight, epilogue, spec, name)
    n, c, h, w = data_shape
    oh, ow = plan.oh, plan.ow
    (sh, _), (dh, dw) = plan.strides, plan.dilation

    data = te.placeholder(data_shape, "float32", name="data")
    wparam = te.placeholder((oc, kh, kw), "float32", name="weight")
    acc = window_compute(plan, data, tirx.const(0.0, "float32"), te.sum,
                         lambda pad, i, o, y, col, rkh, rkw: pad[i, o, y * sh + rkh * dh, col + rkw * dw] * wparam[o, rkh, rkw])

    extra, extra_params, bias, residual = epilogue_inputs(epilogue, (oc,), (n, oc, oh, ow))

    def epi(i, o, y, x):
        return apply_nchw_epilogue(epilogue, acc[i, o, y, x, 0], bias, residual, i, o, y, x)

    out = te.compute((n, oc, oh, ow), epi, name="out")
    sch = Schedule(te.create_prim_func([data, wparam, *extra, out]))
    schedule_window(sch, plan)

    kname = name or _kernel_name(plan, oc, epilogue)
    wvalue = pack_depthwise_weight(weight) if isinstance(weight, np.ndarray) else None
    params = (Param("data", data_shape), Param("weight", (oc, kh, kw), value=wvalue), *extra_params,
              Param("out", (n, oc, oh, ow)))
    flops = 2 * n * oc * oh * ow * kh * kw
    return Kernel(kname, finish(sch.mod["main"], kname), params, flops, plan.notes,
                  packers={"weight": pack_depthwise_weight})


def _depthwise_channel_vectors(plan: WindowPlan, weight, epilogue: Epilogue, spec: CpuSpec, name: str | None) -> Kernel:
    """NCHW in and out, tiny planes (a row fills at most half a vector, 7x7 in MobileNetV2): vectors over channels.

    A width vector would be mostly padding there and the per-channel task overhead dominates,
    so one copy stage transposes the input into padded [N, C / lanes, H', W', lanes] and the
    register tile is (output columns) x (channel vectors) with one vector load and one FMA per
    tap, stored back NCHW through the conv's transposing epilogue (tile_schedules.schedule_nchw_tile).
    Measured on 960x7x7: 0.040 ms against the width-vector schedule's 0.075 (onnxruntime 0.037).
    """
    n, c, h, w, oc, oh, ow = plan.n, plan.c, plan.h, plan.w, plan.oc, plan.oh, plan.ow
    lanes = spec.lanes
    data = te.placeholder((n, c, h, w), "float32", name="data")
    acc, wparam, blocks, tile = channel_vector_compute(plan, lanes, data, tirx.const(0.0, "float32"), "float32",
                                                       lambda a, b: a * b)
    extra, extra_params, bias, residual = epilogue_inputs(epilogue, (oc,), (n, oc, oh, ow))

    def epi(i, o, y, x):
        return apply_nchw_epilogue(epilogue, acc[i, o // lanes, y, x, o % lanes], bias, residual, i, o, y, x)

    out = te.compute((n, oc, oh, ow), epi, name="out")
    sch = Schedule(te.create_prim_func([data, wparam, *extra, out]))
    schedule_channel_vectors(sch, lanes, tile)
    wb, ocv = tile
    kh, kw = plan.kh, plan.kw

    packer = partial(pack_depthwise_weight_blocked, lanes=lanes, blocks=blocks)
    kname = name or _kernel_name(plan, oc, epilogue)
    wvalue = packer(weight) if isinstance(weight, np.ndarray) else None
    params = (Param("data", (n, c, h, w)), Param("weight", (blocks, kh, kw, lanes), value=wvalue), *extra_params,
              Param("out", (n, oc, oh, ow)))
    return Kernel(kname, finish(sch.mod["main"], kname), params, 2 * n * oc * oh * ow * kh * kw,
                  f"channel-vectors wb={wb} ocv={ocv} blocks={blocks}", packers={"weight": packer})


def channel_vector_compute(plan: WindowPlan, lanes: int, data: te.Tensor, pad_value, weight_dtype: str, product):
    """The padded, channel-transposed input [N, blocks, H', W', lanes] and the accumulator of the channel-vector tile
    (see `_depthwise_channel_vectors`); product(input value, weight tap) is one term. (acc, the weight placeholder
    [blocks, KH, KW, lanes], blocks, (wb, ocv))."""
    n, c, h, w, oc, kh, kw = plan.n, plan.c, plan.h, plan.w, plan.oc, plan.kh, plan.kw
    (sh, sw), (dh, dw) = plan.strides, plan.dilation
    pt, pl, _, _ = plan.pads
    oh, ow = plan.oh, plan.ow
    mult = oc // c
    nvec = ceil_div(oc, lanes)
    wb = ow
    ocv = next((v for v in (3, 2) if wb * v <= 16 and nvec % v == 0), 1)
    blocks = ceil_div(nvec, ocv) * ocv
    vh, vw = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1

    def pack(i, cb, y, x, v):
        ch = cb * lanes + v
        ok = tirx.all(ch < oc, y >= pt, y < pt + h, x >= pl, x < pl + w)
        return tirx.if_then_else(ok, data[i, tirx.min(ch, oc - 1) // mult, y - pt, x - pl], pad_value)

    packed = te.compute((n, blocks, vh, vw, lanes), pack, name="pad")
    wparam = te.placeholder((blocks, kh, kw, lanes), weight_dtype, name="weight")
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    acc = te.compute(
        (n, blocks, oh, ow, lanes),
        lambda i, b, y, x, v: te.sum(product(packed[i, b, y * sh + rkh * dh, x * sw + rkw * dw, v], wparam[b, rkh, rkw, v]),
                                     axis=[rkh, rkw]),
        name="acc")
    return acc, wparam, blocks, (wb, ocv)


def schedule_channel_vectors(sch: Schedule, lanes: int, tile: tuple[int, int]) -> None:
    """Schedule `channel_vector_compute`'s stages under an NCHW output block "out"."""
    wb, ocv = tile
    schedule_nchw_tile(sch, "out", "acc", n_reduce=2, lanes=lanes, wb=wb, ocv=ocv)
    pb_ = sch.get_sblock("pad")
    i, cb, y, x, v = sch.get_loops(pb_)
    sch.parallel(sch.fuse(i, cb, y))
    sch.vectorize(v)


def _depthwise_blocked(data_shape, weight, strides, padding, dilation, epilogue: Epilogue, spec: CpuSpec,
                       name: str | None, tile) -> Kernel:
    """NCHWc in and out: `blocked_window`'s (columns x channel vectors) register tile, weights [C / lanes, KH, KW, lanes]."""
    op = "depthwise_conv2d"
    c = data_shape[1]
    kh, kw = (int(d) for d in (weight.shape if isinstance(weight, np.ndarray) else weight)[2:])
    plan = plan_blocked_window(op, data_shape, (kh, kw), strides, padding, dilation, spec, tile)
    (sh, sw), (dh, dw) = plan.strides, plan.dilation
    lanes, cb = plan.lanes, plan.cb

    data = te.placeholder(plan.data_shape, "float32", name="data")
    wparam = te.placeholder((cb, kh, kw, lanes), "float32", name="weight")
    _, acc = blocked_window_compute(
        plan, data, tirx.const(0.0, "float32"), te.sum,
        lambda read, i, b, y, x, v, rkh, rkw: read(i, b, y * sh + rkh * dh, x * sw + rkw * dw, v) * wparam[b, rkh, rkw, v])
    extra, extra_params, bias, residual = epilogue_inputs(epilogue, (c,), plan.out_shape)

    out = te.compute(plan.out_shape,
                     lambda i, b, y, x, v: apply_nchwc_epilogue(epilogue, acc[i, b, y, x, v], bias, residual, lanes,
                                                                i, b, y, x, v),
                     name="out")
    sch = Schedule(te.create_prim_func([data, wparam, *extra, out]))
    schedule_blocked_window(sch, plan)

    packer = partial(pack_depthwise_weight_blocked, lanes=lanes, blocks=cb)
    kname = name or _kernel_name(plan, c, epilogue, "_nchwc")
    params = (Param("data", plan.data_shape),
              Param("weight", (cb, kh, kw, lanes), value=packer(weight) if isinstance(weight, np.ndarray) else None),
              *extra_params, Param("out", plan.out_shape))
    return Kernel(kname, finish(sch.mod["main"], kname), params, 2 * plan.n * c * plan.oh * plan.ow * kh * kw,
                  plan.notes, packers={"weight": packer})


def _kernel_name(plan, oc: int, epilogue: Epilogue, suffix: str = "") -> str:
    mult = oc // plan.c
    return (f"dwconv2d{suffix}_{window_tag((plan.kh, plan.kw), plan.strides, plan.pads, plan.dilation)}"
            f"_{plan.c}x{plan.h}x{plan.w}" + (f"_m{mult}" if mult > 1 else "") + (f"_{epilogue.tag()}" if epilogue.tag() else ""))


def pack_depthwise_weight_blocked(weight: np.ndarray, lanes: int, blocks: int, dtype: str = "float32") -> np.ndarray:
    """[C * m, 1, KH, KW] -> [blocks, KH, KW, lanes] of `dtype`, channel o at [o // lanes, .., o % lanes], zeros
    past C * m."""
    if weight.ndim != 4 or weight.shape[1] != 1:
        raise KernelError(f"pack_depthwise_weight_blocked: weight {weight.shape} is not depthwise (shape[1] must be 1)")
    flat = np.asarray(weight)[:, 0]  # [oc, kh, kw]
    full = np.zeros((blocks * lanes, *flat.shape[1:]), dtype)
    full[: flat.shape[0]] = flat
    return np.ascontiguousarray(full.reshape(blocks, lanes, *flat.shape[1:]).transpose(0, 2, 3, 1))


def pack_depthwise_weight(weight: np.ndarray) -> np.ndarray:
    """[C * m, 1, KH, KW] -> [C * m, KH, KW] (a view; the kernel broadcasts the taps)."""
    weight = np.asarray(weight, dtype="float32")
    if weight.ndim != 4 or weight.shape[1] != 1:
        raise KernelError(f"pack_depthwise_weight: weight {weight.shape} is not depthwise (shape[1] must be 1)")
    return np.ascontiguousarray(weight[:, 0])
