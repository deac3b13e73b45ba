"""insert-observers: an mdoc.observe on every activation that a quantizable op reads.

Static quantization needs each such activation's range; the observers say where it
is measured (`mdoc print` shows them) and hold what calibration measured. The ops
quantized are the ones whose integer kernels pay: Conv, and MatMul / Gemm with a
constant weight (a MatMul of two activations, attention's, stays float for now).
Only operand 0, the activation, is observed; weights are quantized from their
values by quantize-static. One observer per value: two convs that read one tensor
share it, so they share its scale. Nodes named in `exclude` (separated by ';') stay
float, as do those inside If / Loop bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.quant_ops import OBSERVE
from mdoc.types import TensorType


def quantizable(node: Node) -> bool:
    """Whether `node` is an op quantize-static gives int8 operands: a float Conv, or a MatMul / Gemm
    whose weight (operand 1) is a constant."""
    x = node.input(0) if node.inputs else None
    if x is None or not isinstance(x.type, TensorType) or not x.type.dtype.is_float:
        return False
    if node.op == "onnx.Conv":
        return node.input(1) is not None and node.input(1).const_value is not None
    if node.op in ("onnx.MatMul", "onnx.Gemm"):
        w = node.input(1)
        return w is not None and w.const_value is not None and w.const_value.ndim == 2
    return False


@register_pass("insert-observers")
@dataclass(frozen=True)
class InsertObservers(GraphPass):
    """Put an mdoc.observe on the activation of every Conv / MatMul / Gemm that static quantization takes."""

    exclude: str = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        skip = {n for n in self.exclude.split(";") if n}
        observed: dict[Value, Value] = {}
        changed = False
        for node in graph.nodes():
            if node.name in skip or not quantizable(node):
                continue
            x = node.input(0)
            producer = x.producer()
            if producer is not None and producer.op == OBSERVE.name:
                continue
            if x not in observed:
                obs = graph.add(OBSERVE.name, [x], outputs=[x.type], name=f"{node.name}/observe",
                                output_names=[f"{x.name}_observed"], provenance=self.name,
                                before=node)
                observed[x] = obs.output
            node.set_input(0, observed[x])
            changed = True
        return changed
