"""A search-free schedule for any elementwise / broadcast / reduction PrimFunc.

Why: whatever the dedicated builders do not cover (adds, activations, transposes, reshapes,
reductions, normalizations written as several stages) reaches TVM as a plain loop nest, and
an unscheduled loop nest is single-threaded scalar code, about 100x slower than it needs to
be.  This gives every block the two things that matter most on a CPU:

1. Elementwise stages are inlined into elementwise consumers (never into a reduction: a
   padded or transposed operand stays materialized so the reduction's loop reads memory,
   not a chain of conditionals).
2. Spatial blocks: all loops fused, the fused loop split into `lanes`-wide vectors when
   that divides it (half or a quarter of a vector otherwise), the rest parallel.
3. Reduction blocks: the spatial loops outside, fused and parallel.  When the innermost
   spatial axis is contiguous in the output and in every input that depends on it (a
   reduction over a non-last axis, e.g. a mean over the sequence of [B, L, H]), the
   reduction loops move outside it and it is vectorized.  A reduction over the last axis
   stays a scalar loop per output element (see `reductions.py` for softmax / layernorm
   kernels that vectorize it).  `decompose_reduction` comes after every other primitive,
   as TVM 0.27 requires.

Every block is tried on its own; a block whose schedule raises keeps the parallel-only form
or, failing that, its original loops, so this never breaks a build.
"""

from __future__ import annotations

import logging

from tvm import tirx
from tvm.s_tir import Schedule

from .common import CpuSpec

__all__ = ["schedule_generic"]

log = logging.getLogger("mdoc.targets.cpu_kernels.generic")

_DATA_PAR, _REDUCE = 0, 2


def _iter_kinds(sch: Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_spatial(sch: Schedule, block) -> bool:
    return all(k == _DATA_PAR for k in _iter_kinds(sch, block))


def _vectorize_inner(sch: Schedule, loop, lanes: int):
    """Vectorize the innermost loop alone (never fused with outer ones: a vector over a fused
    index needs `(f * 16 + l) % 3136 // 56` style indices, which TVM scalarizes into
    extract/insert sequences, 5x slower than LLVM's own loop vectorizer on the plain loop).

    Returns (outer part or None, vectorized) : the loop is split by `lanes` when that divides
    it; a shorter power-of-two loop is vectorized whole; anything else stays a plain loop that
    LLVM's loop vectorizer handles (with its own remainder).
    """
    ext = sch.get(loop).extent
    if not isinstance(ext, tirx.IntImm):
        return loop, False
    ext = int(ext)
    if ext % lanes == 0:
        outer, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)
        return outer, True
    if ext in (2, 4, 8, 16) and ext < lanes:
        sch.vectorize(loop)
        return None, True
    return loop, False


def _parallel(sch: Schedule, outer: list, inner_outer, cores: int) -> None:
    """Fuse the outer loops into one parallel loop; pull the inner loop's outer part in too
    when the outer loops alone give too few tasks."""
    loops = list(outer)
    extent = 1
    for lp in loops:
        ext = sch.get(lp).extent
        extent *= int(ext) if isinstance(ext, tirx.IntImm) else 1 << 20
    if inner_outer is not None and extent < 4 * cores:
        loops.append(inner_outer)
    if not loops:
        return
    par = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(par)


def _last_index_uses(sch: Schedule, block, var) -> bool:
    """Does every buffer access of `block` that depends on `var` have it only in its last index?"""
    stmt = sch.get(block)
    used = lambda e: any(v.same_as(var) for v in tirx.analysis.undefined_vars(e, []))  # noqa: E731
    for region in list(stmt.reads) + list(stmt.writes):
        idx = [r.min for r in region.region]
        if not idx:
            continue
        if any(used(i) for i in idx[:-1]):
            return False
    return True


def _schedule_block(sch: Schedule, block, lanes: int, cores: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    kinds = _iter_kinds(sch, block)
    if len(kinds) != len(loops):  # loops do not map one-to-one to iters: parallelize only
        sch.parallel(loops[0])
        return
    spatial = [lp for lp, k in zip(loops, kinds) if k == _DATA_PAR]
    reduce = [lp for lp, k in zip(loops, kinds) if k == _REDUCE]
    if len(spatial) + len(reduce) != len(loops):
        sch.parallel(loops[0])
        return
    if not reduce:
        io, _ = _vectorize_inner(sch, spatial[-1], lanes)
        _parallel(sch, spatial[:-1], io, cores)
        return
    iters = sch.get(block).iter_vars
    spatial_vars = [iv.var for iv, k in zip(iters, kinds) if k == _DATA_PAR]
    vec_inner = bool(spatial_vars) and _last_index_uses(sch, block, spatial_vars[-1])
    if vec_inner:
        # reduction over a non-last axis: reductions outside, the contiguous axis vectorized
        sch.reorder(*spatial[:-1], *reduce, spatial[-1])
        _vectorize_inner(sch, spatial[-1], lanes)
        _parallel(sch, spatial[:-1], None, cores)
    else:
        if spatial:
            sch.reorder(*spatial, *reduce)
            _parallel(sch, spatial, None, cores)
    sch.decompose_reduction(block, reduce[0])


def _try_inline(sch: Schedule) -> None:
    changed = True
    while changed:
        changed = False
        root = sch.get_sblock("root") if _has_root(sch) else None
        blocks = sch.get_child_blocks(root) if root is not None else []
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)} if root is not None else set()
        for b in blocks:
            name = sch.get(b).name_hint
            if name in outputs or not _is_spatial(sch, b):
                continue
            consumers = sch.get_consumers(b)
            if not consumers or not all(_is_spatial(sch, c) for c in consumers):
                continue
            try:
                sch.compute_inline(b)
                changed = True
                break
            except Exception:  # noqa: BLE001 - not inlinable (e.g. reads its own output): keep it
                continue


def _has_root(sch: Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def schedule_generic(func: tirx.PrimFunc, spec: CpuSpec = CpuSpec()) -> tirx.PrimFunc:
    """Return `func` scheduled as described in the module docstring (marked `mdoc.scheduled`).

    `func` is a PrimFunc straight out of `te.create_prim_func` or Relax legalization (blocks
    with one loop per iterator).  Functions already marked scheduled are returned unchanged.
    """
    attrs = func.attrs or {}
    if any(k in attrs and bool(attrs[k]) for k in ("mdoc.scheduled", "tir.is_scheduled")):
        return func
    sch = Schedule(func)
    try:
        _try_inline(sch)
    except Exception as e:  # noqa: BLE001
        log.debug("inlining failed: %s", e)
        sch = Schedule(func)
    root = sch.get_sblock("root") if _has_root(sch) else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    for b in blocks:
        name = sch.get(b).name_hint
        snapshot = sch.copy()
        try:
            _schedule_block(sch, sch.get_sblock(name), spec.lanes, spec.cores)
        except Exception as e:  # noqa: BLE001 - fall back to parallel-only, then to nothing
            log.debug("block %s: full schedule failed (%s); trying parallel only", name, e)
            sch = snapshot
            snapshot = sch.copy()
            try:
                loops = sch.get_loops(sch.get_sblock(name))
                if loops:
                    sch.parallel(loops[0])
            except Exception:  # noqa: BLE001
                sch = snapshot
    out = sch.mod["main"]
    return out.with_attr("mdoc.scheduled", True)
