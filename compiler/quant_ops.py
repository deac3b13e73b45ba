"""mdoc.observe: the point where quantization measures a tensor's range, visible in the IR.

    %a = mdoc.observe(%x) {min = -1.7, max = 5.2}

`insert-observers` places one on every activation that a quantizable op (Conv,
MatMul, Gemm) reads; calibration (`mdoc.calibration`) runs the model on sample
inputs and writes the range it chose for each observer into its `min` and `max`;
`quantize-static` turns each calibrated observer into a QuantizeLinear /
DequantizeLinear pair. Until then it is the identity (its evaluator, and its export
as ONNX Identity), so a model with observers still runs anywhere.
"""

from __future__ import annotations

from .ops import OpDef, define_op
from .types import TensorType


def _check(node) -> str | None:
    t = node.inputs[0].type if node.inputs and node.inputs[0] is not None else None
    if isinstance(t, TensorType) and not t.dtype.is_float:
        return f"operand 0 has type {t.dtype.text}; only float activations are observed"
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if (lo is None) != (hi is None):
        return "min and max are set together (by calibration)"
    if lo is not None and lo > hi:
        return f"min {lo} is above max {hi}"
    return None


def _export(node, e) -> None:
    e.emit("Identity", [e.inputs[0]], e.outputs)


OBSERVE = define_op(OpDef(
    "mdoc.observe", "identity that marks a tensor whose range calibration measures", inputs=(1, 1), outputs=(1, 1),
    attrs={"min": (float, int), "max": (float, int)}, check=_check,
    evaluate=lambda node, arrays: [arrays[0]], export=_export))
