"""Schedule pieces that several CPU kernel builders apply: the register tile of a conv-like output
(NCHW or NCHWc) and the parallel, vectorized layout/padding copy.

Why a module of their own: conv, depthwise, matmul, Winograd and the inverted-residual kernel
all use them; kept in conv.py they made matmul and depthwise import conv, which imports them
back to route its depthwise and 1x1 cases.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule

__all__ = ["flatten_leading", "schedule_copy", "schedule_nchw_tile", "schedule_nchwc_tile"]


def schedule_nchw_tile(sch: Schedule, out: str, acc: str, *, n_reduce: int, lanes: int, wb: int, ocv: int) -> None:
    """Register-tile an NCHW output over an accumulator acc[n, block, row, col, lane].

    `out` is the epilogue block writing out[n, oc, oh, ow] from acc[.., oc // lanes, .., oc % lanes];
    `acc` is the reduction block with n_reduce reduction loops.  After this:

        parallel for (n, channel tile, row, column tile):            # fused
            acc tile [ocv blocks, wb columns, lanes] in registers:    # local, unrolled x vector
                init to zero
                for reductions: acc[b, x, :] += ...                   # wb * ocv FMAs per step
            for ocv*lanes channels: out[.., x0:x0+wb] = epilogue(acc tile)   # vector stores along width
    """
    ob, cb = sch.get_sblock(out), sch.get_sblock(acc)
    i, o, y, x = sch.get_loops(ob)
    bo, bi, v = sch.split(o, [None, ocv, lanes])
    xo, xi = sch.split(x, [None, wb])
    outer = [i, y, xo, bo]  # rows outermost: see "Tasks by rows" in conv.py's docstring
    sch.reorder(*outer, bi, v, xi)
    _register_tile(sch, cb, sch.fuse(*outer), n_reduce)
    sch.unroll(bi)
    sch.unroll(v)
    sch.vectorize(xi)


def schedule_nchwc_tile(sch: Schedule, out: str, acc: str, *, n_reduce: int, lanes: int, wb: int, ocv: int) -> None:
    """`schedule_nchw_tile` for an NCHWc output out[n, block, oh, ow, lane]: the same register tile
    (ocv channel vectors x wb columns, reductions outside), stored as whole vectors along the
    lanes, contiguous in memory, where NCHW needs a transposing store."""
    ob, cb = sch.get_sblock(out), sch.get_sblock(acc)
    i, b, y, x, v = sch.get_loops(ob)
    bo, bi = sch.split(b, [None, ocv])
    xo, xi = sch.split(x, [None, wb])
    sch.reorder(i, y, xo, bo, bi, xi, v)  # rows outermost, as in schedule_nchw_tile
    _register_tile(sch, cb, sch.fuse(i, y, xo, bo), n_reduce)
    sch.unroll(bi)
    sch.unroll(xi)
    sch.vectorize(v)


def _register_tile(sch: Schedule, cb, task, n_reduce: int) -> None:
    """The accumulator acc[n, block, row, col, lane] of both tile schedules, computed per parallel
    `task` into registers: reductions outside, the tile's blocks and columns unrolled, lanes
    vectorized, initialised by a vector store."""
    sch.compute_at(cb, task, preserve_unit_loops=True)
    sch.set_scope(cb, 0, "local")
    loops = sch.get_loops(cb)[1:]  # below the fused task loop: n, block, row, col, lane, reductions
    cn, cb_, cy, cx, cv = loops[:5]
    reds = loops[5:5 + n_reduce]
    sch.reorder(*reds, cn, cb_, cy, cx, cv)
    sch.unroll(cb_)
    sch.unroll(cx)
    sch.vectorize(cv)
    sch.parallel(task)
    init = sch.decompose_reduction(cb, reds[0])
    sch.vectorize(sch.get_loops(init)[-1])


def schedule_copy(sch: Schedule, block: str, lanes: int, vectorize_whole_row: bool = True) -> None:
    """A layout/padding copy: parallel over everything but the innermost axis, which is vectorized.

    The whole row is one vectorized loop (LLVM legalizes any width): splitting it into
    `lanes`-wide pieces adds a predicate when the row is ragged, and a predicate together with
    the padding's if_then_else makes TVM scalarize the loop into a branch per element.
    """
    b = sch.get_sblock(block)
    loops = sch.get_loops(b)
    if len(loops) >= 4:  # (n, channel, row, ...): rows before channels, as the kernels split their tasks
        sch.reorder(loops[0], loops[2], loops[1])
        loops = sch.get_loops(b)
    outer = sch.fuse(*loops[:-1]) if len(loops) > 1 else None
    inner = loops[-1]
    ext = sch.get(inner).extent
    if not isinstance(ext, tirx.IntImm):  # a run-time row (padded to whole vectors): vector by vector
        _, inner = sch.split(inner, [None, lanes])
        sch.vectorize(inner)
    elif vectorize_whole_row or int(ext) % lanes == 0:
        if int(ext) % lanes == 0 and int(ext) > 4 * lanes:
            _, inner = sch.split(inner, [None, 4 * lanes])
        sch.vectorize(inner)
    if outer is not None:
        sch.parallel(outer)


def flatten_leading(sch: Schedule, block: str, lead: tuple[int, ...]) -> Schedule:
    """Make `block` iterate its `lead` axes as one flattened axis, keeping the rest
    (see conv.flatten_output_spatial for why the StmtSimplify round trip)."""
    b = sch.get_sblock(block)
    ndim = len(sch.get(b).iter_vars)
    nlead = len(lead)

    def index_map(*idx):
        flat = 0
        for ax, ext in zip(idx[:nlead], lead):
            flat = flat * ext + ax
        return (flat, *idx[nlead:])

    sch.transform_block_layout(b, tirx.IndexMap.from_func(index_map, ndim=ndim))
    return Schedule(tirx.transform.StmtSimplify()(sch.mod))
