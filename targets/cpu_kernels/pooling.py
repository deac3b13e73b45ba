"""Pooling on NCHW: max / average pooling windows and global average pooling.

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
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import CpuSpec, Kernel, KernelError, Param, check_dtype, finish, window_tag
from .depthwise import plan_window, schedule_window, window_compute

__all__ = ["global_avg_pool2d", "pool2d"]


def pool2d(data_shape: Sequence[int], kind: str, kernel, strides=1, padding=0, *, dilation=1,
           ceil_mode: bool = False, count_include_pad: bool = False, dtype: str = "float32",
           spec: CpuSpec = CpuSpec(), name: str | None = None, tile: tuple[int, int] | None = None) -> Kernel:
    """MaxPool / AveragePool over the last two axes of NCHW data.

    kind: "max" or "avg"; kernel, strides, dilation: int or (h, w); padding: int, (h, w) or
    ONNX (top, left, bottom, right); ceil_mode and count_include_pad follow ONNX.
    Returns a Kernel `f(data, out)`.
    """
    op = f"pool2d({kind})"
    check_dtype(op, dtype)
    if kind not in ("max", "avg"):
        raise KernelError(f"pool2d: kind must be 'max' or 'avg', got {kind!r}")
    data_shape = tuple(int(d) for d in data_shape)
    if len(data_shape) != 4:
        raise KernelError(f"{op}: expects NCHW data, got shape {data_shape}")
    n, c, h, w = data_shape
    plan = plan_window(op, data_shape, c, kernel, strides, padding, dilation, spec, tile, ceil_mode)
    (sh, sw), (dh, dw) = plan.strides, plan.dilation
    pt, pl, pb, pr = plan.pads
    kh, kw = plan.kh, plan.kw

    data = te.placeholder(data_shape, "float32", name="data")
    if kind == "max":
        acc = window_compute(plan, data, tirx.min_value("float32"), te.max,
                             lambda pad, i, o, y, col, rkh, rkw: pad[i, o, y * sh + rkh * dh, col + rkw * dw])

        def fout(i, o, y, x):
            return acc[i, o, y, x, 0]
    else:
        acc = window_compute(plan, data, tirx.const(0.0, "float32"), te.sum,
                             lambda pad, i, o, y, col, rkh, rkw: pad[i, o, y * sh + rkh * dh, col + rkw * dw])
        # taps that count: inside the input, or inside input + padding with count_include_pad
        lo_h, hi_h = (0, h + pt + pb) if count_include_pad else (pt, pt + h)
        lo_w, hi_w = (0, w + pl + pr) if count_include_pad else (pl, pl + w)

        def taps(start, k, d, lo, hi):
            cnt = tirx.const(0, "int32")
            for t in range(k):
                pos = start + t * d
                cnt = cnt + tirx.Select(tirx.all(pos >= lo, pos < hi), tirx.const(1, "int32"), tirx.const(0, "int32"))
            return cnt

        def fout(i, o, y, x):
            cnt = taps(y * sh, kh, dh, lo_h, hi_h) * taps(x * sw, kw, dw, lo_w, hi_w)
            return acc[i, o, y, x, 0] / tirx.max(cnt, 1).astype("float32")

    out = te.compute((n, c, plan.oh, plan.ow), fout, name="out")
    sch = Schedule(te.create_prim_func([data, out]))
    schedule_window(sch, plan)
    kname = name or f"{kind}pool2d_{window_tag((kh, kw), plan.strides, plan.pads, plan.dilation)}_{c}x{h}x{w}" + (
        "_ceil" if ceil_mode else "") + ("_incpad" if kind == "avg" and count_include_pad else "")
    flops = n * c * plan.oh * plan.ow * kh * kw
    return Kernel(kname, finish(sch.mod["main"], kname), (Param("data", data_shape), Param("out", (n, c, plan.oh, plan.ow))),
                  flops, plan.notes)


def global_avg_pool2d(data_shape: Sequence[int], *, keepdims: bool = True, dtype: str = "float32",
                      spec: CpuSpec = CpuSpec(), name: str | None = None) -> Kernel:
    """GlobalAveragePool: [N, C, H, W] -> [N, C, 1, 1] ([N, C] with keepdims=False).

    Returns a Kernel `f(data, out)`.
    """
    op = "global_avg_pool2d"
    check_dtype(op, dtype)
    data_shape = tuple(int(d) for d in data_shape)
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
