"""Pooling on NCHW or NCHWc: max / average pooling windows and global average pooling.

Why: TVM's legalized pooling is a scalar loop nest with a bounds check per tap.  A pooling
window is a depthwise conv without weights, so max/avg pooling reuse the depthwise
sliding-window schedule (`depthwise.window_compute` / `schedule_window`): per (image,
channel, band of rows) task a padded local copy of the rows, a register tile of rows x
width vectors, stride 2 computed at full resolution along the width (ResNet's 3x3/2 max
pool) and every other column kept on the store.  Max pooling pads with -inf; average
pooling pads with 0 and divides by the number of taps that count (ONNX's
`count_include_pad`), computed per output position with plain arithmetic that vectorizes.

Global average pooling reduces each channel's H*W contiguous values: the full vectors are
summed lane-wise (vectorized), the leftover tail and the 16 lanes are added up per channel,
and channels are spread over the cores.

With layout="NCHWc" the windows use `blocked_window` instead (one vector load per tap along
the lanes, any stride), and global average pooling sums whole pixel vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx
from tvm.s_tir import Schedule

from .blocked_window import blocked_window_compute, plan_blocked_window, schedule_blocked_window
from .common import (CpuSpec, Kernel, KernelError, Param, batch_dims, blocked_shape, is_symbolic, planned, ceil_div, check_dtype, check_layout, finish,
                     largest_divisor, shape_of, window_tag)
from .depthwise import plan_window, schedule_window, window_compute

__all__ = ["global_avg_pool2d", "pool2d"]

# independent partial sums per channel vector in the NCHWc global average pool
_GAP_CHAINS = 4
# tasks per core of the NCHWc global average pool (a 7x7 channel vector alone is ~50 loads: all overhead)
_GAP_TASKS_PER_CORE = 4


def pool2d(data_shape: Sequence[int], kind: str, kernel, strides=1, padding=0, *, dilation=1,
           ceil_mode: bool = False, count_include_pad: bool = False, dtype: str = "float32",
           spec: CpuSpec | None = None, name: str | None = None, tile: tuple[int, ...] | None = None,
           layout: str = "NCHW") -> Kernel:
    """MaxPool / AveragePool over the last two axes of NCHW (or NCHWc) data.

    data_shape: the NCHW shape of the input, whatever the layout.
    kind: "max" or "avg"; kernel, strides, dilation: int or (h, w); padding: int, (h, w) or
    ONNX (top, left, bottom, right); ceil_mode and count_include_pad follow ONNX.
    layout: "NCHW", or "NCHWc" (data and output in `blocked_shape(.., spec.lanes)`, C a
    multiple of the lanes; see blocked_window.py).
    tile: NCHW: (rb, rows per task); NCHWc: (wb, ocv) or (wb, ocv, rows per task).
    Returns a Kernel `f(data, out)`.
    """
    spec = spec or CpuSpec.host()
    op = f"pool2d({kind})"
    check_dtype(op, dtype)
    check_layout(op, layout)
    if kind not in ("max", "avg"):
        raise KernelError(f"pool2d: kind must be 'max' or 'avg', got {kind!r}")
    data_shape = batch_dims("pool2d", data_shape)
    if len(data_shape) != 4:
        raise KernelError(f"{op}: expects NCHW data, got shape {data_shape}")
    n, c, h, w = data_shape
    blocked = layout == "NCHWc"
    if blocked:
        plan = plan_blocked_window(op, data_shape, kernel, strides, padding, dilation, spec, tile, ceil_mode)
    else:
        plan = plan_window(op, data_shape, c, kernel, strides, padding, dilation, spec, tile, ceil_mode)
    (sh, sw), (dh, dw) = plan.strides, plan.dilation
    pt, pl, pb, pr = plan.pads
    kh, kw = plan.kh, plan.kw
    pad_value = tirx.min_value("float32") if kind == "max" else tirx.const(0.0, "float32")
    reduce = te.max if kind == "max" else te.sum

    if blocked:
        data = te.placeholder(plan.data_shape, "float32", name="data")
        _, acc = blocked_window_compute(plan, data, pad_value, reduce,
                                        lambda read, i, b, y, x, v, rkh, rkw: read(i, b, y * sh + rkh * dh, x * sw + rkw * dw, v))
        out_shape = plan.out_shape
    else:
        data = te.placeholder(data_shape, "float32", name="data")
        acc = window_compute(plan, data, pad_value, reduce,
                             lambda pad, i, o, y, col, rkh, rkw: pad[i, o, y * sh + rkh * dh, col + rkw * dw])
        out_shape = (n, c, plan.oh, plan.ow)

    def result(idx):  # the accumulator at an output index (NCHW: its first phase)
        return acc[(*idx, 0)] if not blocked else acc[idx]

    if kind == "max":
        def fout(*idx):
            return result(idx)
    else:
        # taps that count: inside the input, or inside input + padding with count_include_pad
        lo_h, hi_h = (0, h + pt + pb) if count_include_pad else (pt, pt + h)
        lo_w, hi_w = (0, w + pl + pr) if count_include_pad else (pl, pl + w)

        def fout(*idx):
            y, x = idx[2], idx[3]
            cnt = _taps(y * sh, kh, dh, lo_h, hi_h) * _taps(x * sw, kw, dw, lo_w, hi_w)
            return result(idx) / tirx.max(cnt, 1).astype("float32")

    out = te.compute(out_shape, fout, name="out")
    sch = Schedule(te.create_prim_func([data, out]))
    (schedule_blocked_window if blocked else schedule_window)(sch, plan)
    kname = name or f"{kind}pool2d{'_nchwc' if blocked else ''}_{window_tag((kh, kw), plan.strides, plan.pads, plan.dilation)}" \
        f"_{c}x{h}x{w}" + ("_ceil" if ceil_mode else "") + ("_incpad" if kind == "avg" and count_include_pad else "")
    flops = n * c * plan.oh * plan.ow * kh * kw
    return Kernel(kname, finish(sch.mod["main"], kname), (Param("data", shape_of(data)), Param("out", out_shape)),
                  flops, plan.notes)


def _taps(start, k: int, d: int, lo: int, hi: int) -> tirx.PrimExpr:
    """How many of the taps start, start + d, ..., start + (k - 1) * d lie in [lo, hi) (plain int
    arithmetic that vectorizes)."""
    cnt = tirx.const(0, "int32")
    for t in range(k):
        pos = start + t * d
        cnt = cnt + tirx.Select(tirx.all(pos >= lo, pos < hi), tirx.const(1, "int32"), tirx.const(0, "int32"))
    return cnt


def global_avg_pool2d(data_shape: Sequence[int], *, keepdims: bool = True, dtype: str = "float32",
                      spec: CpuSpec | None = None, name: str | None = None, layout: str = "NCHW") -> Kernel:
    """GlobalAveragePool: [N, C, H, W] -> [N, C, 1, 1] ([N, C] with keepdims=False).

    data_shape: the NCHW shape of the input, whatever the layout.
    layout: "NCHW", or "NCHWc": data `blocked_shape(.., spec.lanes)`, output
        (N, C / lanes, 1, 1, lanes); keepdims=True only.
    Returns a Kernel `f(data, out)`.
    """
    spec = spec or CpuSpec.host()
    op = "global_avg_pool2d"
    check_dtype(op, dtype)
    check_layout(op, layout)
    data_shape = batch_dims("global_avg_pool2d", data_shape)
    if layout == "NCHWc":
        return _global_avg_pool2d_blocked(data_shape, keepdims, spec, name)
    if len(data_shape) < 3:
        raise KernelError(f"{op}: expects [N, C, spatial...], got {data_shape}")
    n, c = data_shape[:2]
    spatial = data_shape[2:]
    hw = 1
    for d in spatial:
        hw *= d
    lanes = spec.lanes
    nvec, tail = hw // lanes, hw % lanes

    data = te.placeholder(data_shape, "float32", name="data")

    def at(i, ch, p):  # data[i, ch, p] with the spatial axes flattened (simplifies to a contiguous load)
        idx, rem = [], p
        for ext in reversed(spatial):
            idx.append(rem % ext)
            rem = rem // ext
        return data[(i, ch, *reversed(idx))]

    stages = []
    if nvec:
        rv = te.reduce_axis((0, nvec), "rv")
        part = te.compute((n, c, lanes), lambda i, ch, l: te.sum(at(i, ch, rv * lanes + l), axis=rv), name="part")
        rl = te.reduce_axis((0, lanes), "rl")
        s_vec = te.compute((n, c), lambda i, ch: te.sum(part[i, ch, rl], axis=rl), name="lanesum")
        stages += ["part", "lanesum"]
    if tail:
        rt = te.reduce_axis((0, tail), "rt")
        s_tail = te.compute((n, c), lambda i, ch: te.sum(at(i, ch, nvec * lanes + rt), axis=rt), name="tailsum")
        stages.append("tailsum")
    inv = tirx.const(1.0 / hw, "float32")

    def fout(i, ch, *_):
        total = (s_vec[i, ch] if nvec else 0.0) + (s_tail[i, ch] if tail else 0.0)
        return total * inv

    out_shape = (n, c, *([1] * len(spatial))) if keepdims else (n, c)
    out = te.compute(out_shape, fout, name="out")
    sch = Schedule(te.create_prim_func([data, out]))
    ob = sch.get_sblock("out")
    loops = sch.get_loops(ob)
    task_loops = loops[:2]
    # channels in chunks: one task reduces `chunk` channels
    chunk = max(1, min(c, 64))
    i, ch = task_loops
    co, ci = sch.split(ch, [None, chunk])
    task = sch.fuse(i, co)
    sch.parallel(task)
    for st in reversed(stages):
        b = sch.get_sblock(st)
        sch.compute_at(b, ci, preserve_unit_loops=True)
    if nvec:
        pl_ = sch.get_loops(sch.get_sblock("part"))
        # [..., ci, n, c, lane, rv] -> rv outside the lane loop, lanes vectorized
        sch.reorder(pl_[-1], pl_[-2])
        sch.vectorize(pl_[-2])
        sch.decompose_reduction(sch.get_sblock("part"), pl_[-1])
    kname = name or f"global_avg_pool2d_{c}x{'x'.join(map(str, spatial))}"
    return Kernel(kname, finish(sch.mod["main"], kname), (Param("data", data_shape), Param("out", out_shape)),
                  n * c * hw, f"channels/task={chunk}")


def _global_avg_pool2d_blocked(data_shape: tuple[int, ...], keepdims: bool, spec: CpuSpec, name: str | None) -> Kernel:
    """NCHWc: each (image, channel vector) sums its H * W pixel vectors lane-wise into `_GAP_CHAINS`
    independent partial sums (one add chain would wait on the add latency at every pixel), then
    adds those up and scales; channel vectors are spread over the cores."""
    op = "global_avg_pool2d"
    if len(data_shape) != 4:
        raise KernelError(f"{op}: NCHWc layout expects NCHW data of rank 4, got {data_shape}")
    if not keepdims:
        raise KernelError(f"{op}: NCHWc layout keeps the spatial dims (keepdims=True); "
                          "reshape the (N, C / lanes, 1, 1, lanes) result instead")
    n, c, h, w = data_shape
    lanes = spec.lanes
    if c % lanes:
        raise KernelError(f"{op}: NCHWc layout needs C a multiple of {lanes} lanes; data {tuple(data_shape)} has C={c}")
    shape = blocked_shape(data_shape, lanes)
    cb, hw = c // lanes, h * w
    chains = min(_GAP_CHAINS, hw)
    steps = ceil_div(hw, chains)

    data = te.placeholder(shape, "float32", name="data")
    rs = te.reduce_axis((0, steps), "rs")

    def pixel(i, b, p, v):  # pixel p of the flattened plane, zero past the end
        q = tirx.min(p, hw - 1)
        val = data[i, b, q // w, q % w, v]
        return val if steps * chains == hw else tirx.if_then_else(p < hw, val, tirx.const(0.0, "float32"))

    part = te.compute((n, cb, chains, lanes), lambda i, b, k, v: te.sum(pixel(i, b, rs * chains + k, v), axis=rs),
                      name="part")
    rk = te.reduce_axis((0, chains), "rk")
    total = te.compute((n, cb, lanes), lambda i, b, v: te.sum(part[i, b, rk, v], axis=rk), name="total")
    inv = tirx.const(1.0 / hw, "float32")
    out_shape = (n, cb, 1, 1, lanes)
    out = te.compute(out_shape, lambda i, b, y, x, v: total[i, b, v] * inv, name="out")
    sch = Schedule(te.create_prim_func([data, out]))
    i, b, y, x, v = sch.get_loops(sch.get_sblock("out"))
    # a few tasks per core, each a run of channel vectors (one per task is all overhead at 7x7)
    # (a run-time batch: runs within one image's channel vectors, so the split stays exact)
    per = largest_divisor(cb if is_symbolic(n) else n * cb, max(1, planned(n) * cb // (_GAP_TASKS_PER_CORE * spec.cores)))
    task, vec = sch.split(sch.fuse(i, b, y, x), [None, per])
    sch.parallel(task)
    sch.vectorize(v)
    for st in ("total", "part"):
        sch.compute_at(sch.get_sblock(st), vec, preserve_unit_loops=True)
    pblk = sch.get_sblock("part")
    *_, pk, pv, prs = sch.get_loops(pblk)
    sch.reorder(prs, pk, pv)
    sch.unroll(pk)
    sch.vectorize(pv)
    tblk = sch.get_sblock("total")
    *_, tv, trk = sch.get_loops(tblk)
    sch.reorder(trk, tv)
    sch.vectorize(tv)
    for blk, first in ((pblk, prs), (tblk, trk)):
        sch.set_scope(blk, 0, "local")
        sch.vectorize(sch.get_loops(sch.decompose_reduction(blk, first))[-1])
    kname = name or f"global_avg_pool2d_nchwc_{c}x{h}x{w}"
    return Kernel(kname, finish(sch.mod["main"], kname), (Param("data", shape), Param("out", out_shape)),
                  n * c * hw, f"nchwc chains={chains} vectors/task={per}")
