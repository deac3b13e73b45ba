"""Helpers shared by the converters: axes, broadcasting, and arithmetic on compile-time shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tvm import relax

from ..context import LowerCtx, SymTensor, is_float, is_static, prim, simplify


def norm_axis(ctx: LowerCtx, axis: int, rank: int) -> int:
    """`axis` in [0, rank), accepting negative axes; MdocError when out of range."""
    a = int(axis)
    if not -rank <= a < rank:
        raise ctx.error(f"axis {a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def norm_axes(ctx: LowerCtx, axes: Sequence[int], rank: int) -> list[int]:
    return [norm_axis(ctx, a, rank) for a in axes]


def static_int(ctx: LowerCtx, d: Any, what: str) -> int:
    if not is_static(d):
        raise ctx.error(f"{what} must be static for the Relax target, but it is {d}")
    return int(d)


def prod(dims: Sequence[Any]) -> Any:
    out: Any = 1
    for d in dims:
        out = out * d
    return out


def attr_ints(ctx: LowerCtx, name: str, default=None) -> list[int] | None:
    v = ctx.attr(name, default)
    return None if v is None else [int(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]


def attr_str(ctx: LowerCtx, name: str, default: str) -> str:
    v = ctx.attr(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def operand_ints(ctx: LowerCtx, i: int, what: str) -> list[int] | None:
    """Operand `i` as a list of ints when present (it must be constant); None when omitted."""
    if not ctx.has_input(i):
        return None
    array = ctx.require_const(i, what)
    return [int(x) for x in array.reshape(-1)]


# -- compile-time arithmetic on SymTensors -------------------------------------


def _broadcast(ctx: LowerCtx, syms: Sequence[SymTensor]) -> tuple[tuple[int, ...], list[list[Any]]]:
    shape: tuple[int, ...] = ()
    for s in syms:
        if len(s.shape) > len(shape) or (s.shape and shape and shape[0] == 1):
            shape = s.shape
    n = shape[0] if shape else 1
    rows = []
    for s in syms:
        if len(s.values) == n:
            rows.append(list(s.values))
        elif len(s.values) == 1:
            rows.append(list(s.values) * n)
        else:
            raise ctx.error(f"shapes {s.shape} and {shape} do not broadcast")
    return shape, rows


def sym_eval(ctx: LowerCtx, np_fn: Callable[..., np.ndarray], tir_fn: Callable[..., Any] | None,
             out_dtype: str | Callable[[list[str]], str] | None = None,
             operands: Sequence[int] | None = None) -> SymTensor | None:
    """Evaluate an elementwise op at compile time when every operand is a SymTensor.

    Static operands are computed with `np_fn` (exact ONNX semantics through numpy);
    symbolic ones element by element with `tir_fn` on TIR expressions. Returns
    None when some operand is a runtime tensor (or `tir_fn` is None and some
    operand is symbolic): the caller then emits Relax ops.
    """
    idx = list(range(ctx.num_inputs)) if operands is None else list(operands)
    syms = [ctx.sym(i) for i in idx]
    if any(s is None for s in syms):
        return None
    arrays = [s.numpy() for s in syms]
    if all(a is not None for a in arrays):
        out = np.asarray(np_fn(*arrays))
        if out.ndim > 1:
            return None
        return SymTensor.from_array(out)
    if tir_fn is None:
        return None
    dtypes = [s.dtype for s in syms]
    if callable(out_dtype):
        dtype = out_dtype(dtypes)
    else:
        dtype = out_dtype or dtypes[0]
    shape, rows = _broadcast(ctx, syms)
    values = [simplify(tir_fn(*[prim(v, dt) for v, dt in zip(col, dtypes)])) for col in zip(*rows)]
    return SymTensor(dtype, shape, values)


def relax_dims(dims: Sequence[Any]) -> list[Any]:
    """Dims as Relax accepts them in op attributes: python ints and int64 TIR expressions."""
    return [int(d) if is_static(d) else d for d in dims]


def cast_if_needed(x: relax.Expr, dtype: str) -> relax.Expr:
    return x if str(x.ty.dtype) == dtype else relax.op.astype(x, dtype)


def float_const(value: float, dtype: str) -> relax.Expr:
    return relax.const(value, dtype if is_float(dtype) else "float32")


