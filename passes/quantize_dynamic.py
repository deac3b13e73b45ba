"""quantize-dynamic: MatMul / Gemm with constant weights ==> int8 products whose activation scale is found per call.

Transformers' activations change range from input to input (and a calibration set rarely
covers them), so their matrix products quantize the activation at run time: one uint8
scale and zero point from that call's min and max (DynamicQuantizeLinear), int8 weights
fixed now. The pass writes onnxruntime's own dynamic form, which onnxruntime runs as it is
and `fuse-quantized`'s `matmul-integer` rule turns into `mdoc.qmatmul`:

    x ─► DynamicQuantizeLinear ─► (xq, xs, xz)
    MatMulInteger(xq, wq, xz) ─► Cast(float) ─► Mul(·, Mul(xs, ws)) [─► Add(bias) for a Gemm's C]

Weights are symmetric int8, per output column by default (`per-channel`; onnxruntime's
quantize_dynamic defaults to one scale), from `quantize_static.quantize_weight`. A Gemm takes
part when alpha = beta = 1 and transA = 0 (transB is applied to the constant), with C a
vector over the columns or absent. One DynamicQuantizeLinear per activation, shared by the
products that read it (BERT's Q, K and V projections).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.types import DType, TensorType

from .quantize_static import quantize_weight


def _weight(node: Node) -> np.ndarray | None:
    """The [K, N] float weight of a MatMul / Gemm this pass takes, else None."""
    x, w = node.input(0), node.input(1) if len(node.inputs) > 1 else None
    if x is None or not isinstance(x.type, TensorType) or x.type.dtype is not DType.F32:
        return None
    if w is None or w.const_value is None or w.const_value.ndim != 2 or w.const_value.dtype != np.float32:
        return None
    if node.op == "onnx.MatMul":
        return w.const_value
    if node.op != "onnx.Gemm" or node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 \
            or node.attrs.get("beta", 1.0) != 1.0:
        return None
    c = node.input(2) if len(node.inputs) > 2 else None
    n = w.const_value.shape[0 if node.attrs.get("transB", 0) else 1]
    if c is not None and (c.const_value is None or c.const_value.size != n):
        return None
    return w.const_value.T if node.attrs.get("transB", 0) else w.const_value


@register_pass("quantize-dynamic")
@dataclass(frozen=True)
class QuantizeDynamic(GraphPass):
    """MatMul / Gemm with constant weights to DynamicQuantizeLinear + MatMulInteger (onnxruntime's dynamic int8)."""

    per_channel: bool = True
    exclude: str = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        skip = {n for n in self.exclude.split(";") if n}
        quantized: dict[Value, tuple[Value, Value, Value]] = {}
        changed = False
        for node in graph.nodes():
            w = _weight(node) if node.name not in skip else None
            if w is None:
                continue
            x = node.input(0)
            if x not in quantized:
                quantized[x] = self._activation(graph, x, node)
            self._product(graph, node, w, *quantized[x])
            changed = True
        return changed

    def _activation(self, graph: Graph, x: Value, before: Node) -> tuple[Value, Value, Value]:
        shape = x.type.shape
        dq = graph.add("onnx.DynamicQuantizeLinear", [x],
                       outputs=[TensorType(DType.U8, shape), TensorType(DType.F32, ()), TensorType(DType.U8, ())],
                       name=f"{x.name}/quantize", provenance=self.name, before=before)
        return tuple(dq.outputs)

    def _product(self, graph: Graph, node: Node, w: np.ndarray, xq: Value, xs: Value, xz: Value) -> None:
        q, scale = quantize_weight(w.astype(np.float32), 1 if self.per_channel else None)
        out = node.outputs[0]
        acc_type = TensorType(DType.I32, out.type.shape if isinstance(out.type, TensorType) else None)
        wq = graph.constant(q, name=f"{node.input(1).name}_quantized", before=node)
        ws = graph.constant(scale if self.per_channel else scale.reshape(()), before=node)
        scales = graph.add("onnx.Mul", [xs, ws], outputs=[TensorType(DType.F32, ws.type.shape)],
                           name=f"{node.name}/scales", provenance=self.name, before=node)
        acc = graph.add("onnx.MatMulInteger", [xq, wq, xz], outputs=[acc_type], name=f"{node.name}/integer",
                        provenance=self.name, before=node)
        cast = graph.add("onnx.Cast", [acc.output], {"to": 1}, outputs=[out.type], name=f"{node.name}/cast",
                         provenance=self.name, before=node)
        y = graph.add("onnx.Mul", [cast.output, scales.output], outputs=[out.type], name=f"{node.name}/scale",
                      provenance=self.name, before=node)
        result = y.output
        c = node.input(2) if node.op == "onnx.Gemm" and len(node.inputs) > 2 else None
        if c is not None:
            bias = graph.constant(np.asarray(c.const_value, np.float32).reshape(-1), before=node)
            result = graph.add("onnx.Add", [result, bias], outputs=[out.type], name=f"{node.name}/bias",
                               provenance=self.name, before=node).output
        graph.replace_node(node, [result])
