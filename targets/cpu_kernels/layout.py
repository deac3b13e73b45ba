"""Copies between the NCHW and NCHWc activation layouts (`common.blocked_shape`).

Why: a chain of NCHWc kernels needs its input blocked once where it starts and its output
unblocked where an NCHW consumer reads it.  TVM's legalized reshape + transpose runs as a
scalar gather; these are one parallel loop over (image, channel block, row) with the
row copied as whole vectors: a blocked row is `lanes` NCHW rows interleaved, so one side
of the copy is always contiguous vectors and the other `lanes` contiguous rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import CpuSpec, Kernel, KernelError, Param, batch_dims, blocked_shape, finish

__all__ = ["from_nchwc", "to_nchwc"]


def to_nchwc(shape: Sequence[int], *, spec: CpuSpec | None = None, name: str | None = None) -> Kernel:
    """NCHW [N, C, H, W] -> NCHWc [N, C / lanes, H, W, lanes]: `f(data, out)`."""
    spec = spec or CpuSpec.host()
    nchw, lanes = _check(shape, spec), spec.lanes
    blocked = blocked_shape(nchw, lanes)
    data = te.placeholder(nchw, "float32", name="data")
    c = nchw[1]
    if c % lanes:  # the padded lanes of the last vector get zeros
        out = te.compute(blocked, lambda i, cb, y, x, v: tirx.if_then_else(
            cb * lanes + v < c, data[i, tirx.min(cb * lanes + v, c - 1), y, x], tirx.const(0.0, "float32")), name="out")
    else:
        out = te.compute(blocked, lambda i, cb, y, x, v: data[i, cb * lanes + v, y, x], name="out")
    sch = Schedule(te.create_prim_func([data, out]))
    i, cb, y, x, v = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(sch.fuse(i, cb, y))
    sch.vectorize(v)
    return _kernel(sch, name or f"to_nchwc_{'x'.join(map(str, nchw[1:]))}", nchw, blocked)


def from_nchwc(shape: Sequence[int], *, spec: CpuSpec | None = None, name: str | None = None) -> Kernel:
    """NCHWc [N, C / lanes, H, W, lanes] -> NCHW [N, C, H, W] (`shape` is the NCHW one): `f(data, out)`."""
    spec = spec or CpuSpec.host()
    nchw, lanes = _check(shape, spec), spec.lanes
    blocked = blocked_shape(nchw, lanes)
    data = te.placeholder(blocked, "float32", name="data")
    out = te.compute(nchw, lambda i, c, y, x: data[i, c // lanes, y, x, c % lanes], name="out")
    sch = Schedule(te.create_prim_func([data, out]))
    i, c, y, x = sch.get_loops(sch.get_sblock("out"))
    cb, v = sch.split(c, [None, lanes])
    sch.reorder(i, cb, y, v, x)
    sch.parallel(sch.fuse(i, cb, y))
    sch.unroll(v)
    sch.vectorize(x)
    return _kernel(sch, name or f"from_nchwc_{'x'.join(map(str, nchw[1:]))}", blocked, nchw)


def _check(shape, spec: CpuSpec) -> tuple[int, int, int, int]:
    shape = batch_dims("layout copy", shape)
    if len(shape) != 4:
        raise KernelError(f"NCHWc layout copies take 4-D NCHW shapes, got {shape}")
    return shape


def _kernel(sch: Schedule, name: str, in_shape, out_shape) -> Kernel:
    return Kernel(name, finish(sch.mod["main"], name), (Param("data", tuple(in_shape)), Param("out", tuple(out_shape))),
                  0, "layout copy")
