"""MobileNetV2's inverted residual block in one kernel: 1x1 expand, depthwise kxk, 1x1 project.

(The first conv may be any dense conv: the network's 3x3 stride-2 stem and the depthwise
block after it run as one kernel too.)

Why: the block widens its input six times (16 -> 96 channels at 112x112 is 4.8 MB), and run
as three kernels that wide activation goes to memory and back twice.  On this host the
layers then run at half their in-cache speed inside a model, and onnxruntime, which has the
same problem, stayed ahead of mdoc on MobileNetV2 while mdoc won on ResNet-18 and BERT.
This kernel computes the block per band of output rows: each task expands the input rows its
band needs into a buffer of its own (a few hundred KB, kept in the core's L2), runs the
depthwise conv on it into a second one, and projects that into the output.  Only the block's
narrow input and output touch memory.  Measured against the three NCHWc kernels chained
(cold = caches flushed before each call, as inside a model): 16x112x112 -> 96 s2 -> 24: 848 -> 393 us; 24x56x56 -> 144 s1
-> 24 (+ residual): 531 -> 359; 32x28x28 -> 192 s1 -> 32: 243 -> 148.

The price is recomputing the expanded rows a band shares with its neighbour (the depthwise
window's halo): (kh - stride) rows per band, so bands are long (`rows`, up to 14 output rows)
and fusion is only planned where the rows split evenly into at least one band per core
(`plan_inverted_residual`); at 7x7 and for a stride-2 14x14 block the layers are small, the
halo is a large share, and the separate kernels stay faster.

Layouts: the output (and the residual) are NCHWc (`common.blocked_shape`, the last vector
zero-padded); the input is NCHWc or NCHW (`data_layout`), since the expand stage reads it
by broadcasts either way.  The expanded channels are padded to whole vectors internally.
Every stage has its bias (zeros for a conv without one); `expand` and `depthwise` say the
activations after the first two convs, `project` the residual and activation after the last.

Tile: (rows,), the output rows per task; the register tiles inside are fixed: `wb` columns x
one channel vector for the expand and depthwise stages, `wb` columns x `ocv` vectors for the
projection, `wb` the largest divisor of the width up to 14.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import (
    CpuSpec,
    Epilogue,
    Kernel,
    KernelError,
    Param,
    as_pads,
    batch_dims,
    as_pair,
    blocked_shape,
    ceil_div,
    check_layout,
    finish,
    is_symbolic,
    largest_divisor,
)
from .tile_schedules import schedule_copy

L2_BAND_BYTES = 1_300_000  # the expanded band a task keeps (x the rows it needs); L2 is 2 MB a core here
MAX_ROWS = 14
MAX_WB = 14


@dataclass(frozen=True)
class InvertedResidualPlan:
    data_shape: tuple[int, int, int, int]  # NCHW
    expanded: int  # M, the depthwise conv's channels
    out_channels: int
    kernel: tuple[int, int]  # the depthwise conv's window, strides and pads
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    lanes: int
    rows: int  # output rows per task
    data_layout: str
    expand_kernel: tuple[int, int] = (1, 1)  # the first conv's (1x1 for MobileNetV2's expand)
    expand_strides: tuple[int, int] = (1, 1)
    expand_pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def pointwise_expand(self) -> bool:
        return self.expand_kernel == (1, 1) and self.expand_strides == (1, 1) and not any(self.expand_pads)

    @property
    def expanded_hw(self) -> tuple[int, int]:
        _, _, h, w = self.data_shape
        return _conv_hw((h, w), self.expand_kernel, self.expand_strides, self.expand_pads)

    @property
    def out_hw(self) -> tuple[int, int]:
        return _conv_hw(self.expanded_hw, self.kernel, self.strides, self.pads)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.data_shape[0], self.out_channels, *self.out_hw)

    @property
    def reduce_in(self) -> int:
        """The expand stage's reduction: the input channels, padded to whole vectors when blocked."""
        c = self.data_shape[1]
        return ceil_div(c, self.lanes) * self.lanes if self.data_layout == "NCHWc" else c

    @property
    def flops(self) -> int:
        n, c = self.data_shape[:2]
        (eh, ew), (oh, ow) = self.expanded_hw, self.out_hw
        m, (kh, kw), (k1h, k1w) = self.expanded, self.kernel, self.expand_kernel
        return 2 * n * (m * c * k1h * k1w * eh * ew + m * kh * kw * oh * ow + self.out_channels * m * oh * ow)


def _conv_hw(hw, kernel, strides, pads) -> tuple[int, int]:
    (h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr) = hw, kernel, strides, pads
    return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


def plan_inverted_residual(data_shape, expanded: int, out_channels: int, kernel, strides, padding,
                           spec: CpuSpec, tile: tuple[int, ...] | None = None, data_layout: str = "NCHWc",
                           expand_kernel=1, expand_strides=1, expand_padding=0) -> InvertedResidualPlan | None:
    """The plan of one fused block, or None where fusing does not pay (see the module docstring):
    the output rows must split into equal bands, at least one per core, of at least 4 rows
    (of `tile[0]` rows when given), whose expanded rows fit `L2_BAND_BYTES`."""
    check_layout("inverted_residual", data_layout)
    n, c, h, w = batch_dims("inverted_residual", data_shape)
    op = "inverted_residual"
    geometry = dict(kernel=as_pair(kernel, "kernel", op), strides=as_pair(strides, "strides", op),
                    pads=as_pads(padding, op), expand_kernel=as_pair(expand_kernel, "expand_kernel", op),
                    expand_strides=as_pair(expand_strides, "expand_strides", op),
                    expand_pads=as_pads(expand_padding, op))
    lanes = spec.lanes
    (eh, ew) = _conv_hw((h, w), geometry["expand_kernel"], geometry["expand_strides"], geometry["expand_pads"])
    oh, ow = _conv_hw((eh, ew), geometry["kernel"], geometry["strides"], geometry["pads"])
    # one image per call (a run-time batch takes the separate kernels, which loop over images)
    if (is_symbolic(n) or n != 1 or min(eh, ew, oh, ow) < 1 or largest_divisor(ew, MAX_WB) < 4
            or largest_divisor(ow, MAX_WB) < 4):
        return None
    (kh, _), (sh, _) = geometry["kernel"], geometry["strides"]
    width = ceil_div(expanded, lanes) * lanes * ew * 4

    def fits(r):
        return ((r - 1) * sh + kh) * width <= L2_BAND_BYTES

    if tile is not None:
        rows = int(tile[0])
        if rows < 1 or oh % rows:
            raise KernelError(f"inverted_residual: tile rows={rows} must divide the {oh} output rows")
    else:
        if oh % spec.cores:
            return None
        per_core = oh // spec.cores
        options = [r for r in range(4, min(per_core, MAX_ROWS) + 1) if per_core % r == 0 and fits(r)]
        if not options:
            return None
        rows = max(options)
    return InvertedResidualPlan((n, c, h, w), int(expanded), int(out_channels), lanes=lanes, rows=rows,
                                data_layout=data_layout, **geometry)


def inverted_residual_tiles(plan: InvertedResidualPlan, spec: CpuSpec, limit: int = 6) -> list[tuple[int]]:
    """Rows per task to try when tuning: divisors of the output rows leaving a band per core."""
    oh, _ = plan.out_hw
    rows = [r for r in range(2, oh // spec.cores + 1) if oh % r == 0]
    return [(r,) for r in sorted(rows, key=lambda r: abs(r - plan.rows))[:limit]]


def inverted_residual(data_shape: Sequence[int], expand_shape: Sequence[int], depthwise_shape: Sequence[int],
                      project_shape: Sequence[int], *, strides=1, padding=0, expand_strides=1, expand_padding=0,
                      expand: Epilogue = Epilogue(), depthwise: Epilogue = Epilogue(),
                      project: Epilogue = Epilogue(), spec: CpuSpec | None = None, name: str | None = None,
                      tile: tuple[int, ...] | None = None, data_layout: str = "NCHWc") -> Kernel:
    """The fused block; weights by their ONNX shapes ([M, C, k1h, k1w], [M, 1, kh, kw], [CO, M, 1, 1]).

    The first conv is MobileNetV2's 1x1 expand, or any dense conv (`expand_strides`,
    `expand_padding`; the network's stem, 3x3 stride 2 over the image, before the first
    depthwise conv); `strides` and `padding` are the depthwise conv's.  The kernel is
    `f(data, expand_weight, expand_bias, dw_weight, dw_bias, weight, bias, [residual], out)`; every weight and bias is packed by `kernel.packers[name]` from its ONNX
    array (a bias from its [channels] vector).  Raises KernelError where the block does not fuse
    (`plan_inverted_residual`).
    """
    spec = spec or CpuSpec.host()
    m, c = int(expand_shape[0]), int(expand_shape[1])
    co = int(project_shape[0])
    if (len(expand_shape) != 4 or tuple(project_shape[2:]) != (1, 1) or int(data_shape[1]) != c
            or int(depthwise_shape[0]) != m or int(depthwise_shape[1]) != 1 or int(project_shape[1]) != m):
        raise KernelError(f"inverted_residual: weights {tuple(expand_shape)}, {tuple(depthwise_shape)}, "
                          f"{tuple(project_shape)} do not chain a conv, a depthwise conv and a 1x1 conv "
                          f"over data {tuple(data_shape)}")
    plan = plan_inverted_residual(data_shape, m, co, tuple(depthwise_shape[2:]), strides, padding, spec, tile,
                                  data_layout, tuple(expand_shape[2:]), expand_strides, expand_padding)
    if plan is None:
        raise KernelError(f"inverted_residual: {tuple(data_shape)} -> {m} -> {co} does not split into bands "
                          "of rows that pay for fusion; use the three kernels")
    func = _schedule(plan, expand, depthwise, project)
    kname = name or _kernel_name(plan, project)
    lanes, mb, ob = plan.lanes, ceil_div(m, plan.lanes), ceil_div(co, plan.lanes)
    out_shape = blocked_shape(plan.out_shape, lanes)
    kh, kw = plan.kernel
    params = [Param("data", blocked_shape(plan.data_shape, lanes) if data_layout == "NCHWc" else plan.data_shape),
              Param("expand_weight", (mb, *plan.expand_kernel, plan.reduce_in, lanes)),
              Param("expand_bias", (mb, lanes)),
              Param("dw_weight", (mb, kh, kw, lanes)), Param("dw_bias", (mb, lanes)),
              Param("weight", (ob, mb * lanes, lanes)), Param("bias", (ob, lanes))]
    if project.residual:
        params.append(Param("residual", out_shape))
    params.append(Param("out", out_shape))
    packers = {"expand_weight": lambda a: _pack_dense(a, lanes, plan.reduce_in),
               "expand_bias": lambda a: _pack_bias(a, lanes),
               "dw_weight": lambda a: _pack_depthwise(a, lanes),
               "dw_bias": lambda a: _pack_bias(a, lanes),
               "weight": lambda a: _pack_dense(a, lanes, mb * lanes).reshape(ob, mb * lanes, lanes),
               "bias": lambda a: _pack_bias(a, lanes)}
    logical = {"expand_weight": tuple(expand_shape), "expand_bias": (m,), "dw_weight": tuple(depthwise_shape),
               "dw_bias": (m,), "weight": tuple(project_shape), "bias": (co,)}
    notes = f"rows={plan.rows} {data_layout}->NCHWc"
    return Kernel(kname, finish(func, kname), tuple(params), plan.flops, notes, packers=packers,
                  logical_shapes={k: tuple(int(d) for d in v) for k, v in logical.items()})


def _kernel_name(plan: InvertedResidualPlan, project: Epilogue) -> str:
    _, c, h, w = plan.data_shape
    (kh, kw), (sh, _) = plan.kernel, plan.strides
    (k1h, k1w), (s1, _) = plan.expand_kernel, plan.expand_strides
    first = "" if plan.pointwise_expand else f"_k{k1h}x{k1w}s{s1}"
    tail = "_res" if project.residual else ""
    return f"invres_{c}x{h}x{w}_{plan.expanded}{first}_dw{kh}x{kw}s{sh}_{plan.out_channels}{tail}"


def _pack_dense(weight: np.ndarray, lanes: int, reduce: int) -> np.ndarray:
    """[O, K, kh, kw] -> [ceil(O / lanes), kh, kw, reduce, lanes], zeros for padded outputs and inputs."""
    o, k, kh, kw = weight.shape
    full = np.zeros((ceil_div(o, lanes) * lanes, reduce, kh, kw), np.float32)
    full[:o, :k] = weight
    return np.ascontiguousarray(full.reshape(-1, lanes, reduce, kh, kw).transpose(0, 3, 4, 2, 1))


def _pack_depthwise(weight: np.ndarray, lanes: int) -> np.ndarray:
    """[M, 1, kh, kw] -> [ceil(M / lanes), kh, kw, lanes]."""
    m, _, kh, kw = weight.shape
    full = np.zeros((ceil_div(m, lanes) * lanes, kh, kw), np.float32)
    full[:m] = weight[:, 0]
    return np.ascontiguousarray(full.reshape(-1, lanes, kh, kw).transpose(0, 2, 3, 1))


def _pack_bias(bias: np.ndarray, lanes: int) -> np.ndarray:
    full = np.zeros(ceil_div(bias.size, lanes) * lanes, np.float32)
    full[:bias.size] = bias.reshape(-1)
    return full.reshape(-1, lanes)


def _schedule(plan: InvertedResidualPlan, expand: Epilogue, depthwise: Epilogue, project: Epilogue):
    n, c, h, w = plan.data_shape
    lanes = plan.lanes
    mb, ob = ceil_div(plan.expanded, lanes), ceil_div(plan.out_channels, lanes)
    (kh, kw), (sh, sw), (pt, pl, pb, _) = plan.kernel, plan.strides, plan.pads
    (k1h, k1w), (s1h, s1w), (p1t, p1l, p1b, p1r) = plan.expand_kernel, plan.expand_strides, plan.expand_pads
    eh, ew = plan.expanded_hw
    oh, ow = plan.out_hw
    he = eh + pt + pb  # the expanded rows, offset by the top padding; the pad rows are masked below
    blocked_in = plan.data_layout == "NCHWc"
    zero = tirx.const(0.0, "float32")

    data = te.placeholder(blocked_shape(plan.data_shape, lanes) if blocked_in else plan.data_shape, name="data")
    we = te.placeholder((mb, k1h, k1w, plan.reduce_in, lanes), name="expand_weight")
    be = te.placeholder((mb, lanes), name="expand_bias")
    wd = te.placeholder((mb, kh, kw, lanes), name="dw_weight")
    bd = te.placeholder((mb, lanes), name="dw_bias")
    wp = te.placeholder((ob, mb * lanes, lanes), name="weight")
    bp = te.placeholder((ob, lanes), name="bias")
    out_shape = blocked_shape(plan.out_shape, lanes)
    residual = te.placeholder(out_shape, name="residual") if project.residual else None

    def row(y):  # the first conv's output row of expanded row y, clamped (masked below when out of range)
        return tirx.max(tirx.min(y - pt, eh - 1), 0)

    source = data
    if not plan.pointwise_expand and any(plan.expand_pads):  # zero-padded copy of the input, made once
        hpad, wpad = h + p1t + p1b, w + p1l + p1r

        def inside(y, x):
            return tirx.all(y >= p1t, y < p1t + h, x >= p1l, x < p1l + w)

        if blocked_in:
            source = te.compute((n, data.shape[1], hpad, wpad, lanes), lambda i, cb, y, x, v: tirx.if_then_else(
                inside(y, x), data[i, cb, y - p1t, x - p1l, v], zero), name="pad")
        else:
            source = te.compute((n, c, hpad, wpad), lambda i, ch, y, x: tirx.if_then_else(
                inside(y, x), data[i, ch, y - p1t, x - p1l], zero), name="pad")

    rc = te.reduce_axis((0, plan.reduce_in), "rc")
    r1h, r1w = te.reduce_axis((0, k1h), "r1h"), te.reduce_axis((0, k1w), "r1w")

    def x_at(i, ch, y, x):
        yy, xx = row(y) * s1h + r1h, x * s1w + r1w
        return source[i, ch // lanes, yy, xx, ch % lanes] if blocked_in else source[i, ch, yy, xx]

    acc_e = te.compute((n, mb, he, ew, lanes), lambda i, b, y, x, v: te.sum(
        x_at(i, rc, y, x) * we[b, r1h, r1w, rc, v], axis=[r1h, r1w, rc]), name="acc_e")
    expanded = te.compute((n, mb, he, ew, lanes),
                          lambda i, b, y, x, v: expand.activate(acc_e[i, b, y, x, v] + be[b, v]), name="expanded")
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")

    def tap(i, b, y, x, v):
        col = x - pl
        inside = tirx.all(y >= pt, y < pt + eh, col >= 0, col < ew)
        return tirx.if_then_else(inside, expanded[i, b, y, tirx.max(tirx.min(col, ew - 1), 0), v], zero)

    acc_d = te.compute((n, mb, oh, ow, lanes), lambda i, b, y, x, v: te.sum(
        tap(i, b, y * sh + rh, x * sw + rw, v) * wd[b, rh, rw, v], axis=[rh, rw]), name="acc_d")
    dw = te.compute((n, mb, oh, ow, lanes),
                    lambda i, b, y, x, v: depthwise.activate(acc_d[i, b, y, x, v] + bd[b, v]), name="dw")
    rm = te.reduce_axis((0, mb * lanes), "rm")
    acc_p = te.compute((n, ob, oh, ow, lanes), lambda i, b, y, x, v: te.sum(
        dw[i, rm // lanes, y, x, rm % lanes] * wp[b, rm, v], axis=rm), name="acc_p")

    def fout(i, b, y, x, v):
        val = acc_p[i, b, y, x, v] + bp[b, v]
        return project.activate(val + residual[i, b, y, x, v] if residual is not None else val)

    out = te.compute(out_shape, fout, name="out")
    args = [data, we, be, wd, bd, wp, bp] + ([residual] if residual is not None else []) + [out]
    sch = Schedule(te.create_prim_func(args))
    _schedule_bands(sch, plan, ob)
    if source is not data:
        schedule_copy(sch, "pad", lanes)
    return sch.mod["main"]


def _schedule_bands(sch: Schedule, plan: InvertedResidualPlan, ob: int) -> None:
    """One parallel task per band of `plan.rows` output rows; inside it the three stages, each
    register-tiled (`wb` columns x channel vectors, reductions outside, lanes vectorized) and
    computed only for the rows the band needs (TVM's compute_at infers the halo)."""
    g = sch.get_sblock
    _, w = plan.expanded_hw
    _, ow = plan.out_hw
    wb_e, wb_o = largest_divisor(w, MAX_WB), largest_divisor(ow, MAX_WB)
    ocv = 2 if ob % 2 == 0 and 2 * wb_o <= MAX_WB else 1

    i, b, y, x, v = sch.get_loops(g("out"))
    yo, yi = sch.split(y, [None, plan.rows])
    xo, xi = sch.split(x, [None, wb_o])
    bo, bi = sch.split(b, [None, ocv])
    sch.reorder(i, yo, yi, xo, bo, bi, xi, v)
    band = sch.fuse(i, yo)
    sch.compute_at(g("acc_p"), sch.fuse(yi, xo, bo), preserve_unit_loops=True)
    for block in ("dw", "acc_d", "expanded", "acc_e"):  # consumers first: each sizes its producer's rows
        sch.compute_at(g(block), band, preserve_unit_loops=True)  # a single channel block keeps its loop
    _tile_stage(sch, "expanded", "acc_e", wb_e, channels_inside=True)
    _tile_stage(sch, "dw", "acc_d", wb_o, channels_inside=False)
    sch.parallel(band)
    for block, n_reduce in (("acc_e", 3), ("acc_d", 2), ("acc_p", 1)):
        _register_tile(sch, g(block), n_reduce)
    sch.unroll(bi)
    sch.unroll(xi)
    sch.vectorize(v)


def _tile_stage(sch: Schedule, out: str, acc: str, wb: int, channels_inside: bool) -> None:
    """Split a stage's output loops (channel block, row, column, lane) into register tiles of
    `wb` columns and put its accumulator under the tile loop."""
    _, b, r, col, v = sch.get_loops(sch.get_sblock(out))[-5:]
    co, ci = sch.split(col, [None, wb])
    if channels_inside:  # the expand tile: rows, columns, then channel blocks (its input row stays hot)
        sch.reorder(r, co, b, ci, v)
        tile = sch.fuse(r, co, b)
    else:
        sch.reorder(r, b, co, ci, v)
        tile = sch.fuse(r, b, co)
    sch.compute_at(sch.get_sblock(acc), tile, preserve_unit_loops=True)
    sch.unroll(ci)
    sch.vectorize(v)


def _register_tile(sch: Schedule, block, n_reduce: int) -> None:
    """The accumulator in registers: reductions outside the tile, blocks and columns unrolled,
    lanes vectorized, initialised by a vector store (as `tile_schedules._register_tile`, without the
    parallel task, which is the band here)."""
    sch.set_scope(block, 0, "local")
    loops = sch.get_loops(block)[-5 - n_reduce:]
    tile, reds = loops[:5], loops[5:]
    sch.reorder(*reds, *tile)
    sch.unroll(tile[1])
    sch.unroll(tile[3])
    sch.vectorize(tile[4])
    init = sch.decompose_reduction(block, reds[0])
    sch.vectorize(sch.get_loops(init)[-1])
