"""sparsify: zero the smallest weights of every Conv, Gemm and MatMul (magnitude sparsity).

`ratio` of each layer's weights, or with `pattern=2:4` two of every four along the reduction
axis (`mdoc.pruning.sparsity`). Shapes do not change; dense kernels run no faster.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.ir import Graph
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.pruning.sparsity import sparsify


@register_pass("sparsify")
@dataclass(frozen=True)
class Sparsify(GraphPass):
    """Magnitude sparsity: zero `ratio` of each layer's weights, or N of every M (`pattern=2:4`)."""

    ratio: float = 0.5
    pattern: str = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return sparsify(graph, self.ratio, self.pattern) > 0
