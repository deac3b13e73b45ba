"""Per-channel sliding-window ops (depthwise conv, pooling) on NCHWc activations.

Why a schedule of its own: in NCHWc (N, C / lanes, H, W, lanes) the `lanes` channels of one
pixel are one vector, so a window op needs none of the NCHW kernels' tricks (width vectors,
stride 2 computed at full resolution, transposing stores).  Every tap of every output is one
contiguous vector load and one FMA (or max / add), at any stride:

* a parallel task is (image, `ocv` channel vectors, band of `rows` output rows);
* if the op pads, the task first copies the input rows its band reads into a zero-
  (or -inf-) padded local band, vectorized along the lanes; without padding it reads the
  input in place;
* the register tile is `wb` output columns x `ocv` channel vectors (one accumulator
  vector each, like conv's NCHW tile); per tap the weight vector is loaded once and each
  column does one load + FMA;
* the epilogue (bias, residual, activation, or pooling's divide) runs on the tile and the
  block is stored contiguously, vector along the lanes.

Output columns are padded up to a whole number of tiles inside the padded band, never by
requiring divisibility; the rows of a task divide the output height.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import CpuSpec, KernelError, batch_dims, blocked_shape, planned, ceil_div, pick_block, window_geometry

__all__ = ["BlockedWindowPlan", "blocked_window_compute", "blocked_window_tiles", "plan_blocked_window",
           "schedule_blocked_window"]

# a task's padded input band should stay in L2 (1 MB per core on Zen 4).  Every task copies
# the (kh - 1) * dh rows it shares with the next one again, so larger bands copy less: measured
# on 32x112x112 (stride 1, 14 x 1 tile), bands of 2 / 4 / 7 / 14 / 28 rows (29 to 219 KB) ran
# 0.068 / 0.059 / 0.055 / 0.052 / 0.051 ms (hot loop; 0.111 to 0.085 with the cache flushed)
_BAND_BYTES = 256 * 1024


@dataclass(frozen=True)
class BlockedWindowPlan:
    """Geometry (in NCHW terms) and tiling of a window op on NCHWc data."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    oh: int
    ow: int
    lanes: int
    wb: int  # output columns of the register tile
    ocv: int  # channel vectors of the register tile (and of a task)
    rows: int  # output rows of one parallel task (divides oh)

    @property
    def cb(self) -> int:
        return self.c // self.lanes

    @property
    def owp(self) -> int:  # output columns padded to whole tiles
        return ceil_div(self.ow, self.wb) * self.wb

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Rows and columns of input (padding included) the padded output grid reads."""
        (sh, sw), (dh, dw) = self.strides, self.dilation
        return (self.oh - 1) * sh + dh * (self.kh - 1) + 1, (self.owp - 1) * sw + dw * (self.kw - 1) + 1

    @property
    def direct(self) -> bool:
        """No padding stage: the taps read the input in place."""
        vh, vw = self.padded_hw
        return self.pads == (0, 0, 0, 0) and vh <= self.h and vw <= self.w

    @property
    def data_shape(self) -> tuple[int, ...]:
        return blocked_shape((self.n, self.c, self.h, self.w), self.lanes)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return blocked_shape((self.n, self.c, self.oh, self.ow), self.lanes)

    @property
    def notes(self) -> str:
        return f"nchwc wb={self.wb} ocv={self.ocv} rows/task={self.rows}{'' if self.direct else ' padded-band'}"


def plan_blocked_window(op: str, data_shape, kernel, strides, padding, dilation, spec: CpuSpec,
                        tile: tuple[int, ...] | None = None, ceil_mode: bool = False) -> BlockedWindowPlan:
    """Choose the register tile and task of a window op on NCHWc data (data_shape is NCHW).

    tile: (wb, ocv) or (wb, ocv, rows per task) overrides the choice; wb is rounded to the
    output width when larger, ocv must divide C / lanes and rows must divide the output height.
    """
    n, c, h, w = batch_dims(op, data_shape)
    lanes = spec.lanes
    if c % lanes:
        raise KernelError(f"{op}: NCHWc layout needs C a multiple of {lanes} lanes; data {tuple(data_shape)} has C={c}")
    (kh, kw), (sh, sw), pads, (dh, dw), (oh, ow) = window_geometry(op, data_shape, kernel, strides, padding, dilation,
                                                                   ceil_mode)
    cb = c // lanes
    if tile is not None:
        if len(tile) not in (2, 3):
            raise KernelError(f"{op}: NCHWc tile is (wb, ocv) or (wb, ocv, rows per task), got {tuple(tile)}")
        wb, ocv = min(int(tile[0]), ow), int(tile[1])
        rows = int(tile[2]) if len(tile) == 3 else None
        if wb < 1 or ocv < 1 or cb % ocv or (rows is not None and (rows < 1 or oh % rows)):
            raise KernelError(f"{op}: NCHWc tile {tuple(tile)} for C={c}, output {oh}x{ow}: need wb >= 1, "
                              f"ocv dividing {cb} channel vectors and rows dividing {oh}")
    else:
        # up to 14 columns x 1 channel vector.  Measured (MobileNetV2's 3x3 layers, 2 loaded
        # cores): 14 x 1 is as fast as 8 x 1 and 16 x 1 and up to 15% faster on stride 2; 8 x 2
        # and 7 x 2 are 5-25% slower (the band grows with the channel vectors, so it holds
        # fewer rows); 28 x 1 and 8 x 3 spill and run 1.5-2x slower
        wb = pick_block(ow, 14, low=7)
        ocv = 1
        rows = None
    if rows is None:
        # the most rows whose padded band fits, keeping at least 4 tasks per core, the cores
        # evenly loaded (9 tasks on 2 cores ran 20% slower than 18) and a band of rows per
        # core at least, so that each core reads the rows it wrote in the layer before
        # (conv.py, "Tasks by rows")
        vw = (ceil_div(ow, wb) * wb - 1) * sw + dw * (kw - 1) + 1
        rows = 1
        for r in range(2, oh + 1):
            band = ocv * ((r - 1) * sh + dh * (kh - 1) + 1) * vw * lanes * 4
            tasks = planned(n) * (cb // ocv) * (oh // r)
            balanced = ceil_div(tasks, spec.cores) * spec.cores <= 1.05 * tasks
            if oh % r == 0 and band <= _BAND_BYTES and tasks >= 4 * spec.cores and balanced and oh // r >= spec.cores:
                rows = r
    return BlockedWindowPlan(n, c, h, w, kh, kw, (sh, sw), pads, (dh, dw), oh, ow, lanes, wb, ocv, rows)


def blocked_window_tiles(plan: BlockedWindowPlan, spec: CpuSpec, limit: int = 12) -> list[tuple[int, int, int]]:
    """(wb, ocv, rows per task) tiles worth measuring for `plan` (for `mdoc tune`), the plan's own
    excluded: 7 to 16 columns x 1 or 2 channel vectors (within half the accumulators), and the
    plan's task height, half or double it, or single rows (dividing the output height)."""
    half = spec.accumulators // 2 + 2
    widths = sorted({wb for wb in (7, 8, 14, 16, plan.ow) if wb <= plan.ow} or {plan.ow})
    ocvs = [v for v in (1, 2) if plan.cb % v == 0]
    rows = sorted({r for r in (1, plan.rows, plan.rows // 2, plan.rows * 2) if r >= 1 and plan.oh % r == 0})
    own = (plan.wb, plan.ocv, plan.rows)
    tiles = [(wb, v, r) for wb in widths for v in ocvs for r in rows if wb * v <= half and (wb, v, r) != own]
    # fewest padded columns, then the plan's own task height, then the fuller tiles
    tiles.sort(key=lambda t: (ceil_div(plan.ow, t[0]) * t[0] - plan.ow, t[2] != plan.rows, -t[0] * t[1]))
    return tiles[:limit]


def blocked_window_compute(plan: BlockedWindowPlan, data: te.Tensor, pad_value, reduce, term, name: str = "acc"):
    """The padded band (None when the op reads its input in place) and the accumulator.

    term(read, i, b, y, x, v, rkh, rkw) -> the value reduced over the window, where read(i, b, y, x, v)
    reads the padded input (padding-relative y, x: the tap is read(i, b, oy * sh + rkh * dh,
    ox * sw + rkw * dw, v)); reduce is te.sum or te.max.  The accumulator is
    (n, C / lanes, oh, owp, lanes).
    """
    pt, pl, _, _ = plan.pads
    h, w = plan.h, plan.w
    if plan.direct:
        padded = None

        def read(i, b, y, x, v):
            return data[i, b, y, x, v]
    else:
        vh, vw = plan.padded_hw
        padded = te.compute(
            (plan.n, plan.cb, vh, vw, plan.lanes),
            lambda i, b, y, x, v: tirx.if_then_else(tirx.all(y >= pt, y < pt + h, x >= pl, x < pl + w),
                                                    data[i, b, y - pt, x - pl, v], pad_value),
            name="pad")

        def read(i, b, y, x, v):
            return padded[i, b, y, x, v]

    rkh = te.reduce_axis((0, plan.kh), "rkh")
    rkw = te.reduce_axis((0, plan.kw), "rkw")
    acc = te.compute((plan.n, plan.cb, plan.oh, plan.owp, plan.lanes),
                     lambda i, b, y, x, v: reduce(term(read, i, b, y, x, v, rkh, rkw), axis=[rkh, rkw]), name=name)
    return padded, acc


def schedule_blocked_window(sch: Schedule, plan: BlockedWindowPlan, out: str = "out", acc: str = "acc",
                            pad: str | None = "pad") -> None:
    """Tile a window op built by `blocked_window_compute` whose epilogue block `out` writes
    out[n, C / lanes, oh, ow, lanes] from acc (see the module docstring)."""
    ob, ab = sch.get_sblock(out), sch.get_sblock(acc)
    i, b, y, x, v = sch.get_loops(ob)
    bo, bi = sch.split(b, [None, plan.ocv])
    yt, yi = sch.split(y, [None, plan.rows])
    xo, xi = sch.split(x, [None, plan.wb])
    sch.reorder(i, yt, bo, yi, xo, bi, xi, v)
    task = sch.fuse(i, yt, bo)  # bands of rows outermost (conv.py, "Tasks by rows")
    sch.parallel(task)
    sch.unroll(bi)
    sch.unroll(xi)
    sch.vectorize(v)
    sch.compute_at(ab, xo, preserve_unit_loops=True)
    sch.set_scope(ab, 0, "local")
    loops = sch.get_loops(ab)
    an, ab_, ay, ax, av, rkh, rkw = loops[-7:]
    sch.reorder(rkh, rkw, an, ab_, ay, ax, av)
    sch.unroll(ab_)
    sch.unroll(ax)
    sch.vectorize(av)
    if pad is not None and not plan.direct:
        pb_ = sch.get_sblock(pad)
        sch.compute_at(pb_, task, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(pb_)[-1])
    init = sch.decompose_reduction(ab, rkh)
    sch.vectorize(sch.get_loops(init)[-1])
