"""BitCast: the same bits read as another element type of the same width (TOPI's reinterpret).

TIR's bool is one bit wide, so bool <-> (u)int8 is a value conversion (0 / 1, the bytes
onnx stores) rather than a reinterpret.
"""

from __future__ import annotations

import tvm_ffi
from tvm import relax, topi

from mdoc.ir import Node

from ..context import LowerCtx, onnx_to_tvm_dtype
from ..registry import converter


@converter("onnx.BitCast", since=26)
def bitcast(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    src, dst = str(x.ty.dtype), onnx_to_tvm_dtype(int(ctx.attr("to")), "BitCast's to")
    width = [tvm_ffi.dtype(t).bits for t in (src, dst)]
    if width[0] != width[1]:
        raise ctx.error(f"{src} and {dst} differ in width ({width[0]} and {width[1]} bits)")
    if src == dst:
        return [x]
    if "bool" in (src, dst):
        if dst == "bool":
            return [relax.op.not_equal(x, relax.const(0, src))]
        return [relax.op.astype(x, dst)]
    return [ctx.bb.emit_te(topi.reinterpret, x, dst)]
