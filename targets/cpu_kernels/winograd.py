"""Winograd F(m x m, 3 x 3) convolution on NCHWc activations: fewer multiplies than the direct kernel.

Why: the direct NCHWc kernel (conv.py) already runs 3x3 stride-1 convs at the FMA peak, and so
does onnxruntime; the only way past it is less arithmetic.  Winograd computes an m x m output
tile from an (m + 2) x (m + 2) input tile with (m + 2)^2 products per channel pair instead of
9 m^2: 2.25x fewer for F(2x2), 4x fewer for F(4x4), paid for with transforms that are linear
in C (input) and OC (output) and with a weight that grows from 9 to (m + 2)^2 values per pair.

A padding copy and the algorithm's three stages, one PrimFunc (alpha = m + 2, E = alpha^2
transform points, P tiles):

    pad   [N, C/L, th*m + 2, tw*m + 2, L]   zero-padded input covering every tile (L = lanes)
    V     [alpha, alpha, P, C/L, L]   V = B^T d B per tile and channel, vectors along the channels
    M     [E, P, OC/L, L]    M[e] = V[e] @ U[e], E independent GEMMs (P x C) @ (C x OC) with the
                             register tile of matmul.py: mr tiles x nv channel vectors
    out   [N, OC/L, OH, OW, L]   Y = A^T M A per tile, epilogue fused, written NCHWc

U = G g G^T is computed at compile time in float64 and packed [E, OC/L, C/L, L, L] (block ob,
input channel, lane = output channel) so each GEMM k step loads nv whole vectors.

The transforms are small constant matrices, applied separably: first the rows (R = B^T d, and
S = A^T M for the output), computed per tile and transform row into alpha vectors that stay
in registers (compute_at), then the columns.  Each product is written out in Python with the
zero coefficients dropped and picks its row with a Select on an unrolled loop index, which
folds away.  (Written as one 2-D expression instead, the unrolled bodies repeat the shared row
sums and TVM's common-subexpression pass took 2 of the 3 s an F(4x4) kernel needed to build;
separably it builds in 0.3 s.)

Every stage runs its parallel loop over tiles (rows of tiles before channels: see conv.py's
"Tasks by rows"), so each core transforms, multiplies and writes back its own band of rows.

Measured (benchmarks/winograd.py, 2 Zen 4 cores, bias + relu): 3.1x, 3.4x, 2.1x and 1.5x the
direct kernel in a hot loop on ResNet-18's 64x56x56, 128x28x28, 256x14x14 and 512x7x7 layers;
the GEMM runs at the FMA peak and takes about 3/4 of the time, the transforms the rest.  The
output tile is chosen by a cost model (`WinogradPlan.cost`); `estimated_speedup` tells a
caller whether routing a conv here pays.

Numerics: F(4x4) (points 0, +-1, +-2) loses about one more digit than F(2x2); on unit-scale
inputs with weights ~N(0, 1/(9C)) both stay within rtol 1e-3 / atol 1e-4 of the direct kernel
(tests/test_winograd.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction as Fr

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import (
    CpuSpec,
    Epilogue,
    Kernel,
    KernelError,
    Param,
    apply_nchwc_epilogue,
    batch_dims,
    planned,
    as_pads,
    blocked_shape,
    ceil_div,
    epilogue_inputs,
    finish,
    window_tag,
)
from .matmul import gemm_tile

__all__ = ["WinogradPlan", "pack_winograd_weight", "plan_winograd", "winograd_conv2d", "winograd_matrices",
           "winograd_tiles"]


# --------------------------------------------------------------------------------------------
# The transform matrices
# --------------------------------------------------------------------------------------------

# (B^T, G, A^T) of F(m, 3) for the interpolation points 0, +-1, (+-2), infinity (Lavin & Gray)
_MATRICES = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [Fr(1, 2), Fr(1, 2), Fr(1, 2)], [Fr(1, 2), Fr(-1, 2), Fr(1, 2)], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[Fr(1, 4), 0, 0], [Fr(-1, 6), Fr(-1, 6), Fr(-1, 6)], [Fr(-1, 6), Fr(1, 6), Fr(-1, 6)],
         [Fr(1, 24), Fr(1, 12), Fr(1, 6)], [Fr(1, 24), Fr(-1, 12), Fr(1, 6)], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}
OUTPUT_TILES = tuple(_MATRICES)


def winograd_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T [alpha, alpha], G [alpha, 3], A^T [m, alpha]) of F(m, 3) in float64."""
    if m not in _MATRICES:
        raise KernelError(f"winograd_conv2d: output tile m={m} is not one of {', '.join(map(str, OUTPUT_TILES))}")
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in _MATRICES[m])


def _lincomb(coeffs, terms):
    """sum(c * t) over the nonzero coefficients, with +-1 as add / subtract (a PrimExpr)."""
    acc = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        if acc is None:
            acc = t if c == 1 else -t if c == -1 else t * tirx.const(float(c), "float32")
        else:
            acc = acc + t if c == 1 else acc - t if c == -1 else acc + t * tirx.const(float(c), "float32")
    return acc if acc is not None else tirx.const(0.0, "float32")


def _rows(mat: np.ndarray, read, row):
    """(mat @ x)[row] for x[k] = read(k) and `row` a loop variable: a Select over the rows, each a
    sum over that row's nonzero coefficients, which folds to one sum once `row` is unrolled."""
    result = None
    for r in reversed(range(mat.shape[0])):
        val = _lincomb(mat[r], [read(k) for k in range(mat.shape[1])])
        result = val if result is None else tirx.Select(row == r, val, result)
    return result


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinogradPlan:
    """Shapes and tiling of one Winograd conv (data_shape NCHW; activations are NCHWc)."""

    data_shape: tuple[int, int, int, int]
    oc: int
    pads: tuple[int, int, int, int]
    lanes: int
    m: int  # output tile (F(m x m, 3 x 3))
    mr: int  # GEMM register tile: tiles (rows) ...
    nv: int  # ... x output-channel vectors

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.data_shape
        pt, pl, pb, pr = self.pads
        return (n, self.oc, h + pt + pb - 2, w + pl + pr - 2)

    @property
    def tile_grid(self) -> tuple[int, int]:
        _, _, oh, ow = self.out_shape
        return ceil_div(oh, self.m), ceil_div(ow, self.m)

    @property
    def tiles(self) -> int:
        th, tw = self.tile_grid
        return self.data_shape[0] * th * tw

    @property
    def tiles_padded(self) -> int:  # GEMM rows: whole register tiles
        return ceil_div(self.tiles, self.mr) * self.mr

    @property
    def packed_weight_shape(self) -> tuple[int, ...]:
        c, lanes = self.data_shape[1], self.lanes
        return (self.alpha ** 2, self.oc // lanes, c // lanes, lanes, lanes)

    @property
    def cost(self) -> int:
        """GEMM rows (tiles) x transform points, plus the weight stream counted as
        `_WEIGHT_STREAM_TILES` rows: the model that picks m, in units of C x OC multiply-adds."""
        th, tw = self.tile_grid
        tiles = planned(self.data_shape[0]) * th * tw
        return self.alpha ** 2 * (ceil_div(tiles, self.mr) * self.mr + _WEIGHT_STREAM_TILES)

    @property
    def estimated_speedup(self) -> float:
        """The direct conv's multiply-adds (9 per output pixel and channel pair) over `cost`.

        Measured on ResNet-18 (benchmarks/winograd.py, 2 Zen 4 cores, hot loop): estimates 3.9,
        3.7, 2.1 and 1.5 for 64x56x56, 128x28x28, 256x14x14 and 512x7x7 against speedups over the
        direct NCHWc kernel of 3.1, 3.4, 2.1 and 1.5.  With the caches flushed the 512x7x7 layer
        gains only 5-10% (its U is 38 MB, streamed from memory), so a caller routing convs here
        should ask for an estimate comfortably above 1 (2, say).
        """
        n, _, oh, ow = self.out_shape
        return 9 * planned(n) * oh * ow / self.cost

    @property
    def flops(self) -> int:
        """FLOPs of the direct conv (so GFLOP/s compare with it)."""
        n, oc, oh, ow = self.out_shape
        return 2 * n * oc * oh * ow * self.data_shape[1] * 9


def plan_winograd(data_shape, weight_shape, padding=1, spec: CpuSpec | None = None,
                  tile: tuple[int, ...] | None = None) -> WinogradPlan:
    """Check the conv is one Winograd handles and choose (m, mr, nv); tile=(m,) or (m, mr, nv) overrides.

    The output tile m is the one with the fewest GEMM rows times transform points, counting the
    weight stream as `_WEIGHT_STREAM_TILES` more rows.
    """
    spec = spec or CpuSpec.host()
    op = "winograd_conv2d"
    data_shape = batch_dims("winograd_conv2d", data_shape)
    weight_shape = tuple(int(d) for d in weight_shape)
    if len(data_shape) != 4 or len(weight_shape) != 4:
        raise KernelError(f"{op}: expects NCHW data and OIHW weight shapes, got data {data_shape} and weight {weight_shape}")
    n, c, h, w = data_shape
    oc, cg, kh, kw = weight_shape
    lanes = spec.lanes
    if (kh, kw) != (3, 3):
        raise KernelError(f"{op}: only 3x3 kernels, weight {weight_shape} is {kh}x{kw}")
    if cg != c:
        raise KernelError(f"{op}: one group only; data has {c} channels, weight {weight_shape} takes {cg} per output")
    if c % lanes or oc % lanes:
        raise KernelError(f"{op}: channels must be whole {lanes}-lane vectors; got {c} -> {oc}")
    pads = as_pads(padding, op)
    if min(pads) < 0:
        raise KernelError(f"{op}: pads {pads} must be >= 0")
    if h + pads[0] + pads[2] < 3 or w + pads[1] + pads[3] < 3:
        raise KernelError(f"{op}: output would be empty for input {h}x{w} with pads {pads}")
    nvec = oc // lanes
    if tile is not None and len(tile) not in (1, 3):
        raise KernelError(f"{op}: tile is (m,) or (m, mr, nv), got {tuple(tile)}")
    if tile is not None and len(tile) == 3:
        m, mr, nv = (int(t) for t in tile)
        winograd_matrices(m)
        if mr < 1 or nv < 1 or nvec % nv:
            raise KernelError(f"{op}: tile {tuple(tile)}: need mr >= 1 and nv dividing the {nvec} output-channel vectors")
        return WinogradPlan(data_shape, oc, pads, lanes, m, mr, nv)
    if tile is not None:
        winograd_matrices(int(tile[0]))
    plans = [_default_tiles(WinogradPlan(data_shape, oc, pads, lanes, m, 1, 1), spec)
             for m in ((int(tile[0]),) if tile is not None else OUTPUT_TILES)]
    return min(plans, key=lambda p: p.cost)


# What streaming the transformed weight U (alpha^2 * C * OC) once per call costs, in GEMM rows
# (tiles): with few tiles the kernel reads more weight than it multiplies.  4 makes the choice
# measured on ResNet-18 (benchmarks/winograd.py, 2 Zen 4 cores): F(4x4) at 56x56, 28x28 and
# 512x7x7 (1.5x direct in a hot loop, F(2x2) 1.2x), F(2x2) at 14x14 (as fast hot, 20% faster
# cold: F(4x4) pads the 14x14 output to 16x16).
_WEIGHT_STREAM_TILES = 4


def _default_tiles(plan: WinogradPlan, spec: CpuSpec) -> WinogradPlan:
    """`plan` with matmul.gemm_tile's register tile, nv shrunk to divide the channel vectors."""
    mr, nv = gemm_tile(plan.tiles, plan.oc, spec)
    while (plan.oc // plan.lanes) % nv:
        nv -= 1
    return replace(plan, mr=mr, nv=nv)


def winograd_tiles(plan: WinogradPlan, spec: CpuSpec, limit: int = 12) -> list[tuple[int, int, int]]:
    """(m, mr, nv) tiles worth measuring for `plan` (for `mdoc tune`), the plan's own excluded:
    both output tiles x register tiles of 4 to 14 tiles by 1, 2 or 4 channel vectors whose
    accumulators stay under 1 KB (see matmul.gemm_tile)."""
    nvec = plan.oc // plan.lanes
    max_acc = min(spec.accumulators, 1024 // (plan.lanes * 4) - 1)
    own = (plan.m, plan.mr, plan.nv)
    tiles = [(m, mr, nv) for m in OUTPUT_TILES for nv in (1, 2, 4) if nvec % nv == 0
             for mr in (4, 6, 7, 8, 12, 14) if mr * nv <= max_acc and (m, mr, nv) != own]
    # the plan's output tile first, then the fuller register tiles
    tiles.sort(key=lambda t: (t[0] != plan.m, -t[1] * t[2], t[1]))
    return tiles[:limit]


def pack_winograd_weight(weight: np.ndarray, plan: WinogradPlan) -> np.ndarray:
    """OIHW weight -> U = G g G^T packed [E, OC/L, C, L] (as [E, OC/L, C/L, L, L]), in float64 then float32."""
    weight = np.asarray(weight)
    c = plan.data_shape[1]
    if weight.shape != (plan.oc, c, 3, 3):
        raise KernelError(f"pack_winograd_weight: weight has shape {weight.shape}, plan expects {(plan.oc, c, 3, 3)}")
    _, g, _ = winograd_matrices(plan.m)
    u = np.einsum("ak,ockl,bl->aboc", g, weight.astype(np.float64), g)  # [alpha, alpha, OC, C]
    lanes, e = plan.lanes, plan.alpha ** 2
    u = u.reshape(e, plan.oc // lanes, lanes, c).transpose(0, 1, 3, 2)  # [E, OC/L, C, L]
    return np.ascontiguousarray(u.reshape(plan.packed_weight_shape).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def winograd_conv2d(data_shape: Sequence[int], weight, *, padding=1, epilogue: Epilogue = Epilogue(),
                    spec: CpuSpec | None = None, name: str | None = None, tile: tuple[int, ...] | None = None,
                    data_layout: str = "NCHWc") -> Kernel:
    """A 3x3 stride-1 conv by Winograd F(m x m, 3 x 3), NCHWc in and out.

    data_shape: (N, C, H, W) in NCHW terms; the kernel takes `blocked_shape(data_shape)`.
    weight: the OIHW weight (transformed and packed now) or its shape (then the kernel takes
        the packed U at run time: `kernel.packers["weight"]`).
    padding: int, (h, w) or ONNX (top, left, bottom, right).
    epilogue: bias [OC], residual (NCHWc, like the output) and activation, fused into the
        output transform.
    tile: (m,) or (m, mr, nv): output tile 2 or 4, GEMM register tile mr tiles x nv channel vectors.
    Returns a Kernel `f(data, weight, [bias], [residual], out)`.
    """
    spec = spec or CpuSpec.host()
    op = "winograd_conv2d"
    if data_layout != "NCHWc":
        raise KernelError(f"{op}: data_layout {data_layout!r}: only NCHWc activations are supported")
    if epilogue.scale is not None:
        raise KernelError(f"{op}: Epilogue.scale is not supported for convolutions; fold it into the weight")
    wshape = tuple(int(d) for d in (weight.shape if isinstance(weight, np.ndarray) else weight))
    plan = plan_winograd(data_shape, wshape, padding, spec, tile)
    return _build(plan, weight if isinstance(weight, np.ndarray) else None, epilogue, name)


def _build(plan: WinogradPlan, weight: np.ndarray | None, epi: Epilogue, name: str | None) -> Kernel:
    n, c, h, w = plan.data_shape
    lanes, m, alpha, oc = plan.lanes, plan.m, plan.alpha, plan.oc
    e_count, cb_count, ob_count = alpha ** 2, c // lanes, oc // lanes
    th, tw = plan.tile_grid
    tiles, tiles_p = plan.tiles, plan.tiles_padded
    pt, pl, _, _ = plan.pads
    bt, _, at = winograd_matrices(m)
    zero = tirx.const(0.0, "float32")

    data_shape = blocked_shape(plan.data_shape, lanes)
    data = te.placeholder(data_shape, "float32", name="data")
    ph, pw = th * m + 2, tw * m + 2
    pad = te.compute(
        (n, cb_count, ph, pw, lanes),
        lambda i, cb, y, x, v: tirx.if_then_else(tirx.all(y >= pt, y < pt + h, x >= pl, x < pl + w),
                                                 data[i, cb, y - pt, x - pl, v], zero),
        name="pad")

    def tile_origin(p):
        """(image, first padded row, first padded column) of tile p (clamped: rows past the last tile repeat it)."""
        p = tirx.min(p, tiles - 1) if tiles_p != tiles else p
        return p // (th * tw), (p // tw) % th * m, p % tw * m

    def r_body(i, p, cb, l, v):  # (B^T d)[i, l]: the tile's rows combined
        img, y0, x0 = tile_origin(p)
        return _rows(bt, lambda k: pad[img, cb, y0 + k, x0 + l, v], i)

    rows = te.compute((alpha, tiles_p, cb_count, alpha, lanes), r_body, name="R")
    vt = te.compute((alpha, alpha, tiles_p, cb_count, lanes),  # (B^T d B)[i, j]
                    lambda i, j, p, cb, v: _rows(bt, lambda l: rows[i, p, cb, l, v], j), name="V")

    u = te.placeholder(plan.packed_weight_shape, "float32", name="weight")
    kb = te.reduce_axis((0, cb_count), "kb")
    kv = te.reduce_axis((0, lanes), "kv")
    macc = te.compute((e_count, tiles_p, ob_count, lanes),
                      lambda e, p, ob, v: te.sum(vt[e // alpha, e % alpha, p, kb, kv] * u[e, ob, kb, kv, v],
                                                 axis=[kb, kv]),
                      name="Macc")
    mt = te.compute((e_count, tiles_p, ob_count, lanes), lambda e, p, ob, v: macc[e, p, ob, v], name="M")

    out_shape = blocked_shape(plan.out_shape, lanes)
    extra, extra_params, bias, residual = epilogue_inputs(epi, (oc,), out_shape)

    def s_body(i, ob, y, tx, l, v):  # (A^T M)[y % m, l] of tile (y // m, tx)
        p = (i * th + y // m) * tw + tx
        return _rows(at, lambda k: mt[k * alpha + l, p, ob, v], y % m)

    srows = te.compute((n, ob_count, th * m, tw, alpha, lanes), s_body, name="S")

    def out_body(i, ob, y, x, v):  # (A^T M A)[y % m, x % m], then the epilogue
        val = _rows(at, lambda l: srows[i, ob, y, x // m, l, v], x % m)
        return apply_nchwc_epilogue(epi, val, bias, residual, lanes, i, ob, y, x, v)

    out = te.compute(out_shape, out_body, name="out")
    sch = Schedule(te.create_prim_func([data, u, *extra, out]))
    _schedule_pad(sch, "pad")
    _schedule_input_transform(sch, "V", "R")
    _schedule_batched_gemm(sch, "M", "Macc", mr=plan.mr, nv=plan.nv)
    _schedule_output_transform(sch, "out", "S", m)

    kname = name or (f"conv2d_wino{m}_{window_tag((3, 3), (1, 1), plan.pads, (1, 1))}_{c}x{h}x{w}_{oc}_nchwc"
                     + (f"_{epi.tag()}" if epi.tag() else ""))
    wvalue = pack_winograd_weight(weight, plan) if weight is not None else None
    params = (Param("data", data_shape), Param("weight", plan.packed_weight_shape, value=wvalue),
              *extra_params, Param("out", out_shape))
    notes = f"winograd F({m}x{m},3x3) tiles={tiles} mr={plan.mr} nv={plan.nv}"
    return Kernel(kname, finish(sch.mod["main"], kname), params, plan.flops, notes,
                  packers={"weight": lambda a, _p=plan: pack_winograd_weight(a, _p)})


def _schedule_pad(sch: Schedule, block: str) -> None:
    """pad[n, cb, y, x, v]: parallel over rows (tile_schedules.schedule_copy would make each 16-lane vector a
    task of its own, decoding its index with divisions: 13% of an F(4x4) kernel), lanes vectorized."""
    b = sch.get_sblock(block)
    i, cb, y, x, v = sch.get_loops(b)
    sch.reorder(i, y, cb, x, v)
    sch.parallel(sch.fuse(i, y))
    sch.vectorize(v)


def _schedule_input_transform(sch: Schedule, block: str, rows: str) -> None:
    """V[i, j, p, cb, v]: parallel over (tile, channel block); for each unrolled i the row
    combinations R[i, l] (alpha vectors, registers) then the alpha columns; lanes vectorized."""
    b = sch.get_sblock(block)
    i, j, p, cb, v = sch.get_loops(b)
    sch.reorder(p, cb, i, j, v)
    sch.parallel(sch.fuse(p, cb))
    _unrolled_rows(sch, rows, i)
    sch.unroll(i)
    sch.unroll(j)
    sch.vectorize(v)


def _unrolled_rows(sch: Schedule, rows: str, loop) -> None:
    """Compute the row-combination block `rows` under `loop`: its alpha vectors unrolled, lanes vectorized."""
    r = sch.get_sblock(rows)
    sch.compute_at(r, loop)
    loops = sch.get_loops(r)
    sch.unroll(loops[-2])
    sch.vectorize(loops[-1])


def _schedule_batched_gemm(sch: Schedule, out: str, acc: str, *, mr: int, nv: int) -> None:
    """M[e, p, ob, v] = sum_k V[e, p, k] U[e, ob, k, v]: matmul.schedule_gemm's register tile
    (mr tiles x nv vectors, accumulators in a small "global" buffer that LLVM keeps in registers),
    with the tasks ordered (tile block, point, channel block) so the tiles stay with their core."""
    ob_, cb_ = sch.get_sblock(out), sch.get_sblock(acc)
    e, p, ob, v = sch.get_loops(ob_)
    po, pi = sch.split(p, [None, mr])
    obo, obi = sch.split(ob, [None, nv])
    sch.reorder(po, e, obo, pi, obi, v)
    task = sch.fuse(po, e, obo)
    sch.compute_at(cb_, task, preserve_unit_loops=True)
    ce, cp, cob, cv, ckb, ckv = sch.get_loops(cb_)[1:]
    sch.reorder(ckb, ckv, ce, cp, cob, cv)
    sch.unroll(cp)
    sch.unroll(cob)
    sch.vectorize(cv)
    sch.parallel(task)
    sch.unroll(pi)
    sch.unroll(obi)
    sch.vectorize(v)
    init = sch.decompose_reduction(cb_, ckb)
    sch.vectorize(sch.get_loops(init)[-1])


def _schedule_output_transform(sch: Schedule, block: str, rows: str, m: int) -> None:
    """out[n, ob, y, x, v]: parallel over (image, tile row, channel block); per tile and unrolled
    output row the row combinations S (alpha vectors) then the m columns with the epilogue; lanes
    vectorized.  Ragged tiles at the bottom and right edge are predicated."""
    b = sch.get_sblock(block)
    i, ob, y, x, v = sch.get_loops(b)
    ty, yi = sch.split(y, [None, m])
    tx, xi = sch.split(x, [None, m])
    sch.reorder(i, ty, ob, tx, yi, xi, v)
    sch.parallel(sch.fuse(i, ty, ob))
    _unrolled_rows(sch, rows, yi)
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(v)
