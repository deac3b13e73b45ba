"""The generic CPU schedule: every PrimFunc gets parallel outer loops and vectorized inner loops.

TVM's legalized PrimFuncs are plain loop nests: single-threaded scalar code,
about 100x slower than a scheduled kernel. This pass gives each of them a
schedule that needs no search and works for any op:

1. **Inline.** Elementwise stages are inlined into their elementwise
   consumers (or, as epilogues, into their producers). A stage that feeds a
   reduction (padding before a conv, a transpose before a matmul) stays
   materialized, so the reduction's hot loop reads a plain buffer.
2. **Spatial blocks** (elementwise, injective): the innermost loop is split by
   the vector width (the target's `CpuSpec.lanes`) and vectorized when it indexes the output's last dim and
   its extent is divisible; all outer loops are fused into one parallel loop.
3. **Reduction blocks** (conv, matmul, pooling, reductions): spatial loops
   outside, reduction loops inside. When the innermost spatial axis can be
   vectorized (it indexes the output's last dim, and every input either does
   not depend on it or has it in its last index), the block gets a register
   tile: [fused parallel spatial loops] > [reduction loops] > [unrolled rows of
   the second-innermost spatial axis] > [vector lanes], with the accumulator in
   a `local` cache written back under the parallel loop, and the reduction's
   init split off (`decompose_reduction`, after every other primitive, as TVM
   0.27 requires). Otherwise the fused spatial loops are just parallelized.

PrimFuncs that carry `mdoc.scheduled` or `tir.is_scheduled` (hand-written
kernels from `targets/cpu_kernels`) are left alone. A block whose schedule
fails falls back to the parallel-only form; a PrimFunc whose schedule fails
entirely is left as it was, so the build never breaks on a schedule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.sym import Analyzer

from ..cpu_description import CpuSpec

logger = logging.getLogger("mdoc.targets.relax.schedule")

_SKIP_ATTRS = ("mdoc.scheduled", "tir.is_scheduled", "tirx.is_scheduled")


@dataclass
class _BlockInfo:
    rv: object
    spatial: list  # loop RVs of data-parallel iters, outermost first
    reduce: list  # loop RVs of reduction iters
    spatial_vars: list  # the block iter vars bound to `spatial`
    is_reduction: bool


def _static(extent) -> int | None:
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _analyze(sch: s_tir.Schedule, block) -> _BlockInfo | None:
    """Loops of `block` classified as spatial or reduction, when they bind its iters one to one."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block)
    iter_vars = list(stmt.iter_vars)
    values = list(realize.iter_values)
    if len(loops) != len(iter_vars):
        return None
    spatial, reduce, spatial_vars = [], [], []
    for loop, iv, val in zip(loops, iter_vars, values):
        if not val.same_as(sch.get(loop).loop_var):
            return None
        if iv.iter_type == tirx.IterVar.DataPar:
            if reduce:
                return None  # a spatial loop inside the reduction loops: leave it to the fallback
            spatial.append(loop)
            spatial_vars.append(iv.var)
        elif iv.iter_type == tirx.IterVar.CommReduce:
            reduce.append(loop)
        else:
            return None
    return _BlockInfo(block, spatial, reduce, spatial_vars, bool(reduce))


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _stride(expr, var) -> int | None:
    """How much `expr` moves when `var` grows by one, when that is a constant."""
    if not _uses(expr, var):
        return 0
    t = tirx.Var("t", var.ty if hasattr(var, "ty") else "int64")
    at0, at1 = Analyzer(), Analyzer()
    at0.bind(var, t)
    at1.bind(var, t + 1)
    diff = Analyzer().simplify(at1.simplify(expr) - at0.simplify(expr))
    return int(diff.value) if isinstance(diff, tirx.IntImm) else None


def _writes_last_dim(sch, block, var) -> bool:
    """Whether `var` indexes the last dim of the block's output with stride 1 (a contiguous write)."""
    writes = sch.get(block).writes
    if len(writes) != 1 or not writes[0].region:
        return False
    region = writes[0].region
    if any(_uses(r.min, var) for r in region[:-1]):
        return False
    return _stride(region[-1].min, var) == 1


def _reads_vectorizable(sch, block, var) -> bool:
    """Every read either ignores `var` (a broadcast) or walks its last dim with stride 1."""
    for read in sch.get(block).reads:
        region = read.region
        if not region:
            continue
        if any(_uses(r.min, var) for r in region[:-1]):
            return False
        if _stride(region[-1].min, var) not in (0, 1):
            return False
    return True


def _pick_factor(extent: int | None, candidates) -> int | None:
    if extent is None:
        return None
    for f in candidates:
        if f > 1 and extent % f == 0 and extent >= f:
            return f
    return None


def _parallel(sch, loops) -> None:
    """Fuse the outer `loops` into one parallel loop, stopping before a second run-time extent and
    after a run-time extent that is an expression.

    TVM's iter-map analysis cannot split a fused loop whose extent is a product of two run-time
    extents: fusing the padded rows and columns of a conv's `pad_temp`, (h + 2) * (w + 2) * c,
    fails `tvm.compile` ("The padding factor ... is not divisible"); nor one of an expression and
    the loops inside it, (w + 2) * 3 (an NHWC pad over a run-time width). A plain run-time size
    followed by static ones fuses (a mask add's N x heads); what is left inside stays serial.
    """
    if not loops:
        return
    extents = [sch.get(loop).extent for loop in loops]
    symbolic = [k for k, e in enumerate(extents) if _static(e) is None]
    if len(symbolic) > 1:
        loops = loops[:symbolic[1]]
    expression = next((k for k in symbolic if not isinstance(extents[k], tirx.Var)), None)
    if expression is not None and expression + 1 < len(loops):
        loops = loops[:expression + 1]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)


def _schedule_spatial(sch, info: _BlockInfo, lanes: int) -> None:
    loops = info.spatial
    if not loops:
        return
    inner = loops[-1]
    factor = None
    if _writes_last_dim(sch, info.rv, info.spatial_vars[-1]):
        factor = _pick_factor(_static(sch.get(inner).extent), (lanes * 4, lanes * 2, lanes, lanes // 2, 4))
    if factor is not None:
        outer, vec = sch.split(inner, [None, factor])
        _parallel(sch, loops[:-1] + [outer])
        if factor > lanes:
            _, vec = sch.split(vec, [None, lanes])
        sch.vectorize(vec)
    elif len(loops) > 1 and _static(sch.get(inner).extent) is None:
        # a row of run-time length stays a plain inner loop, which LLVM vectorizes with a
        # remainder; fused into the parallel loop it would cost a div and mod per element
        # (a [N, 4, S, S] mask add at S=128: 227 us fused, against 14 us static)
        _parallel(sch, loops[:-1])
    else:
        _parallel(sch, loops)


_MAX_ACCUMULATORS = 24  # vector registers a tile may hold (AVX-512 has 32, AVX2 16: LLVM spills gently)


def _schedule_reduction(sch, info: _BlockInfo, lanes: int, parallel_tasks: int) -> None:
    block, spatial, reduce = info.rv, info.spatial, info.reduce
    if not spatial:
        return  # a full reduction to one value: leave it serial (it is a single pass over the data)
    vec_var = info.spatial_vars[-1]
    cols = _static(sch.get(spatial[-1]).extent)
    lane = None
    if _writes_last_dim(sch, block, vec_var) and _reads_vectorizable(sch, block, vec_var):
        lane = _pick_factor(cols, (lanes, lanes // 2, 4, 2))
    if lane is None:
        _parallel(sch, spatial)
        return
    # register tile: `rows` of the second-innermost spatial axis x `vecs` vectors of `lane` lanes
    rows = None
    if len(spatial) >= 2:
        rows = _pick_factor(_static(sch.get(spatial[-2]).extent), (8, 7, 6, 5, 4, 3, 2))
    budget = _MAX_ACCUMULATORS // (rows or 1)
    vecs = next((k for k in (4, 3, 2) if k <= budget and cols % (k * lane) == 0), 1)
    col_o, col_v, col_l = sch.split(spatial[-1], [None, vecs, lane])
    # The channel (column) blocks go outermost: each parallel task then keeps its slice of the
    # weights in cache while it walks the rows; enough outer loops are fused to feed every core.
    if rows is not None:
        row_o, row_i = sch.split(spatial[-2], [None, rows])
        outer = [col_o] + spatial[:-2] + [row_o]
        sch.reorder(*outer, *reduce, row_i, col_v, col_l)
    else:
        row_i = None
        outer = [col_o] + spatial[:-1]
        sch.reorder(*outer, *reduce, col_v, col_l)
    k, work = 0, 1
    while k < len(outer) and work < parallel_tasks:
        extent = _static(sch.get(outer[k]).extent)
        work = work * extent if extent is not None else parallel_tasks
        k += 1
    fused = sch.fuse(*outer[:k]) if k > 1 else outer[0]
    sch.parallel(fused)
    # accumulate in registers, write back once per tile
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, outer[-1] if k < len(outer) else fused)
    # the elementwise epilogue (bias, batch norm, activation) runs on the tile as it is written
    for consumer in sch.get_consumers(write_back):
        try:
            sch.reverse_compute_inline(consumer)
        except Exception:  # noqa: BLE001  (e.g. a slice of the tile: it stays a separate pass)
            pass
    wb_inner = sch.get_loops(write_back)[-1]
    _, wb_lanes = sch.split(wb_inner, [None, lane])
    sch.vectorize(wb_lanes)
    if row_i is not None:
        sch.unroll(row_i)
    if vecs > 1:
        sch.unroll(col_v)
    sch.vectorize(col_l)
    init = sch.decompose_reduction(block, reduce[0])
    init_inner = sch.get_loops(init)[-1]
    sch.vectorize(init_inner)


MATERIALIZE = "mdoc.materialize"
"""A TE stage's attr (block annotation) that keeps it out of `_inline`: a small table its consumer
reads many times (Resize's per-axis taps), whose math inlined would be repeated per element."""


def _is_identity_copy(stmt) -> bool:
    """`B[i, j, ...] = A[i, j, ...]`: a copy (such as padding by zero) that costs nothing to inline."""
    body = stmt.body
    # (TVM 0.27: a buffer load is a `tvm.ir.TensorLoad`; `tirx.BufferLoad` is only a constructor)
    if not isinstance(body, tirx.stmt.BufferStore) or not isinstance(body.value, tvm.ir.TensorLoad):
        return False
    store, load = list(body.indices), list(body.value.indices)
    return len(store) == len(load) and all(a.same_as(b) for a, b in zip(store, load))


def _inline(sch: s_tir.Schedule, root) -> None:
    """Inline elementwise stages that do not feed a reduction; repeat until nothing changes."""
    changed = True
    while changed:
        changed = False
        # buffers allocated inside the function are intermediates; the others are its parameters
        local = {b for b in sch.get(root).alloc_buffers}
        for block in sch.get_child_blocks(root):
            info = _analyze(sch, block)
            stmt = sch.get(block)
            if any(iv.iter_type != tirx.IterVar.DataPar for iv in stmt.iter_vars) or MATERIALIZE in stmt.annotations:
                continue
            writes_output = any(not any(w.source.same_as(b) for b in local) for w in stmt.writes)
            if not writes_output:
                consumers = sch.get_consumers(block)
                feeds_reduction = any(
                    any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(c).iter_vars) for c in consumers)
                if not feeds_reduction or _is_identity_copy(stmt):
                    try:
                        sch.compute_inline(block)
                        changed = True
                        break
                    except Exception:  # noqa: BLE001  (the primitive refuses: keep the stage)
                        pass
            elif info is not None:
                producers = sch.get_producers(block)
                if producers and all(
                        all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(p).iter_vars) for p in producers):
                    try:
                        sch.reverse_compute_inline(block)
                        changed = True
                        break
                    except Exception:  # noqa: BLE001
                        pass


def schedule_primfunc(func: tirx.PrimFunc, lanes: int, parallel_tasks: int = 32) -> tirx.PrimFunc:
    """The generic schedule of one PrimFunc (see the module docstring)."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    _inline(sch, root)
    for block in sch.get_child_blocks(root):
        try:
            info = _analyze(sch, block)
        except Exception:  # noqa: BLE001  (inlined into the write-back of an earlier reduction)
            continue
        if info is None:
            loops = sch.get_loops(block)
            if loops:
                try:
                    sch.parallel(loops[0])
                except Exception:  # noqa: BLE001
                    pass
            continue
        saved = sch.copy()
        try:
            if info.is_reduction:
                _schedule_reduction(sch, info, lanes, parallel_tasks)
            else:
                _schedule_spatial(sch, info, lanes)
        except Exception as e:  # noqa: BLE001  (fall back to parallel-only on this block)
            logger.debug("schedule of %s failed (%s); parallel only", sch.get(block).name_hint, e)
            sch = saved
            info = _analyze(sch, block)
            if info is not None:
                try:
                    _parallel(sch, info.spatial)
                except Exception:  # noqa: BLE001
                    pass
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="mdoc.ScheduleCPU")
class ScheduleCPU:
    """Apply `schedule_primfunc` to every PrimFunc of the module that is not already scheduled."""

    def __init__(self, cpu: CpuSpec):
        self.lanes = cpu.lanes
        # enough parallel tasks to balance the cores (4 per core), without splitting the
        # channel blocks of one output row across tasks needlessly
        self.parallel_tasks = 4 * cpu.cores

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            attrs = func.attrs or {}
            if any(k in attrs and bool(attrs[k]) for k in _SKIP_ATTRS):
                continue
            try:
                new = schedule_primfunc(func, self.lanes, self.parallel_tasks)
            except Exception as e:  # noqa: BLE001  (never break a build on a schedule)
                logger.warning("generic schedule of %s failed: %s", gv.name_hint, str(e).splitlines()[0])
                continue
            updates[gv] = new.with_attr("mdoc.scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod
