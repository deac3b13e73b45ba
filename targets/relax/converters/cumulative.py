"""CumProd (CumSum lives in `tensor.py`): the product along an axis, exclusive and reversed forms."""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import norm_axis

R = relax.op


@converter("onnx.CumProd", since=26)
def cumprod(ctx: LowerCtx, node: Node):
    axis = norm_axis(ctx, int(ctx.require_const(1, "axis").reshape(-1)[0]), ctx.rank(0))
    x = ctx.input(0)
    reverse = bool(ctx.attr("reverse", 0))
    if reverse:
        x = ctx.emit(R.flip(x, axis))
    y = R.cumprod(x, axis=axis, exclusive=bool(ctx.attr("exclusive", 0)))
    return [R.flip(ctx.emit(y), axis) if reverse else y]
