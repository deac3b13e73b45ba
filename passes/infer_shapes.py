"""infer-shapes: refresh value types from ONNX shape inference (with data propagation).

Types only gain information (see `mdoc.shape_inference`): where ONNX leaves a
dim unknown that mdoc already knew, mdoc's dim stays. Then the symbols that the
graph forces equal become one (`mdoc.symbolic_dims`: ONNX names every meeting of
two symbols afresh, and kernels need to see that a residual's [N, S, 256] is the
matmul's).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.ir import Graph
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.shape_inference import infer_types
from mdoc.symbolic_dims import unify_dims


@register_pass("infer-shapes")
@dataclass(frozen=True)
class InferShapes(GraphPass):
    """Refresh value types from ONNX shape inference; never forget a dim mdoc knew."""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if graph is not ctx.model.graph:  # inference needs the whole model (opsets, outer scopes)
            return False
        inferred = infer_types(ctx.model)
        return unify_dims(ctx.model) or inferred
