"""Lowering of one node into the current Relax block: its converter (or a kernel) emits it, and its
results are bound, match-cast to the importer's shapes where Relax lost them.

Why a module of its own: `lower` walks the graph and `control_flow` walks the bodies of If and
Loop with the same per-node step; kept in lower.py, it made control_flow import lower, which
imports control_flow to register its converters.
"""

from __future__ import annotations

import re
from typing import Any

import tvm
from tvm import relax

from mdoc.errors import InternalError, MdocError, first_line
from mdoc.ir import Node, Value
from mdoc.types import TensorType

from ..storage import to_storage
from .context import LowerCtx, SymTensor, contiguous, dim_var, tvm_dtype
from .registry import lookup

__all__ = ["convert_node", "output_expr", "sanitize"]

# Exceptions that only a converter's own bug raises (TVM reports what it refuses as
# RuntimeError or ValueError): they are InternalErrors, the others bad input.
_BUGS = (AssertionError, AttributeError, IndexError, KeyError, NameError, TypeError, ZeroDivisionError)


def sanitize(name: str, fallback: str = "v") -> str:
    """A name that Relax and TIR print and parse back: letters, digits and `_`."""
    s = re.sub(r"\W", "_", name or "")
    if not s or s[0].isdigit():
        s = f"{fallback}_{s}" if s else fallback
    return s


# TVM opens its inference errors with the op's whole repr: "In ir.Op(span=None, ..., name="relax.add",
# ..., support_level=10), the first input shape at dim 0 is ..."
_OP_REPR = re.compile(r'In ir\.Op\(.*?name="(?P<op>[\w.]+)".*?support_level=\d+\), ')


def _reason(e: Exception) -> str:
    """TVM's error in one line, its op named by name rather than by repr."""
    return first_line(e, message=_OP_REPR.sub(lambda m: f"{m['op']}: ", str(e), count=1))


def convert_node(ctx: LowerCtx, node: Node) -> None:
    """Lower one node into the current block and bind its results (also used for If/Loop bodies)."""
    ctx.node = node
    try:
        _convert(ctx, node)
    except MdocError:
        raise
    except _BUGS as e:  # the converter's own mistake: exit 3, naming where
        raise InternalError(f"{node.op} (node '{node.name}'): its Relax converter failed: {first_line(e)}") from e
    except Exception as e:  # TVM refusing what the model asks for (shapes that do not fit, ...)
        raise MdocError(f"{node.op} (node '{node.name}'): Relax rejected the conversion: {_reason(e)}") from e


def _convert(ctx: LowerCtx, node: Node) -> None:
    """The converter's (or a kernel's) results for `node`, emitted (Relax infers their types here) and bound."""
    results = ctx.kernels.lower_node(ctx, node)
    if results is None:
        results = lookup(node.op, ctx.opset)(ctx, node)
    if len(results) < len(node.outputs):
        results = list(results) + [None] * (len(node.outputs) - len(results))
    for value, expr in zip(node.outputs, results):
        if expr is None:
            continue  # an optional result the converter does not compute; refused below if used
        if isinstance(expr, SymTensor):
            ctx.bind(value, expr)
            continue
        if not isinstance(expr, (relax.Var, tvm.ir.GenericConst)):
            expr = ctx.bb.emit(expr, sanitize(value.name, "v"))
        ctx.bind(value, _with_shape(ctx, value, expr))


def _with_shape(ctx: LowerCtx, value: Value, expr: relax.Expr) -> relax.Expr:
    """`expr`, match-cast to a known shape when Relax's inference lost it.

    Relax gives up on shapes it cannot prove (broadcasting two different symbolic
    dims, reshapes to computed dims), and later ops then fail to legalize. The
    importer's ONNX shape inference usually knows better: its symbols map to the
    same `tirx.Var`s as the graph inputs' dims, and its unknown dims become fresh
    vars. The match is checked at run time, so a wrong guess fails loudly.
    """
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.ndim < 0 or isinstance(ty.shape, relax.ShapeExpr):
        return expr
    mdoc_type = value.type
    dims: list[Any] = []
    known = isinstance(mdoc_type, TensorType) and mdoc_type.shape is not None and len(mdoc_type.shape) == ty.ndim
    for k in range(ty.ndim):
        d = mdoc_type.shape[k] if known else None
        if isinstance(d, int):
            dims.append(d)
        elif isinstance(d, str) and d in ctx.symbols:
            dims.append(ctx.symbols[d])  # a symbol of the graph inputs (not an inferred unk__N)
        else:
            dims.append(dim_var(f"{sanitize(value.name, 'v')}_d{k}"))
    return ctx.bb.match_cast(expr, relax.TensorType(dims, ty.dtype), sanitize(value.name, "v"))


def output_expr(ctx: LowerCtx, value: Value) -> relax.Expr:
    """The Relax expression of a graph (or body) output."""
    bound = ctx.lookup(value)
    if bound is None:
        array = value.const_value
        if array is None:
            producer = value.producer()
            where = f"{producer.op} (node '{producer.name}')" if producer is not None else "the graph"
            raise MdocError(f"{where}: result %{value.name} is a graph output but the Relax converter "
                            f"does not compute it")
        return relax.const(contiguous(to_storage(array)), tvm_dtype(value.type.dtype))
    if isinstance(bound, SymTensor):
        return ctx.materialize(bound)
    return bound
