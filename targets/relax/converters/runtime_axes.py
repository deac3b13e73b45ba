"""Axes read at run time (a graph input or a computed tensor) as TIR expressions.

ONNX lets a Reduce's, Squeeze's or Unsqueeze's axes be any int tensor. When it
is not known while lowering but its length is, the rank of the result is known
and only which dims are reduced, dropped or inserted waits for the values:
`runtime_axes` binds each element to a TIR var (`LowerCtx.runtime_dims`),
`axis_mask` says for every dim whether it is among them, and the result's dims
are `Select`s over that mask. Kernels index with the same expressions, so one
artifact takes every value of the axes. An axes tensor of unknown length (it
decides the rank) stays a compile-time operand (`ctx.need_const`).
"""

from __future__ import annotations

from typing import Any

from tvm import tirx

from ..context import LowerCtx, is_static, prim


def runtime_axes(ctx: LowerCtx, i: int, rank: int, what: str = "axes") -> list[tirx.PrimExpr] | None:
    """Operand `i`'s values wrapped into [0, rank) as TIR expressions; None when it is known while lowering.

    Values outside [-rank, rank) are not refused here (they are data): a result
    computed from them fails the run-time shape checks or selects no dim.
    """
    if ctx.const(i) is not None or ctx.sym(i, max_size=1 << 12) is not None:
        return None
    shape = ctx.shape(i)
    if len(shape) != 1 or not is_static(shape[0]):
        raise ctx.need_const(i, f"{what}, of a length known only at run time")
    return [tirx.Select(a < 0, a + rank, a) for a in ctx.runtime_dims(ctx.input(i), "axis")]


def axis_mask(axes: list[tirx.PrimExpr], rank: int) -> list[tirx.PrimExpr]:
    """For each dim of a rank-`rank` tensor, whether it is one of `axes` (a TIR boolean)."""
    mask = []
    for d in range(rank):
        hit: Any = tirx.const(False, "bool")
        for a in axes:
            hit = tirx.Or(hit, a == d)
        mask.append(hit)
    return mask


def kept_dims(dims: list[Any], mask: list[tirx.PrimExpr], count: int) -> list[tirx.PrimExpr]:
    """The `count` dims of `dims` whose mask is false, in order: out[p] is the dim with p unmasked dims before it."""
    out = []
    for p in range(count):
        before: Any = prim(0)
        dim: Any = prim(0)
        for d, m in zip(dims, mask):
            dim = tirx.Select(tirx.And(tirx.Not(m), before == p), prim(d), dim)
            before = before + tirx.Select(m, prim(0), prim(1))
        out.append(dim)
    return out


def inserted_dims(dims: list[Any], mask: list[tirx.PrimExpr]) -> list[tirx.PrimExpr]:
    """Unsqueeze's result: 1 where the mask is true, else the next of `dims` in order."""
    out = []
    before: Any = prim(0)
    for m in mask:
        dim: Any = prim(1)
        for k, d in enumerate(dims):
            dim = tirx.Select(before == k, prim(d), dim)
        out.append(tirx.Select(m, prim(1), dim))
        before = before + tirx.Select(m, prim(0), prim(1))
    return out
