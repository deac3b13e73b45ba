"""CumProd (CumSum lives in `tensor.py`): the product along an axis, exclusive and reversed forms."""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from .tensor import along_axis_operand

R = relax.op


@converter("onnx.CumProd", since=26)
def cumprod(ctx: LowerCtx, node: Node):
    return [along_axis_operand(ctx, R.cumprod)]
