"""prune-heads: remove a share of the heads of every mdoc.attention (run fuse-attention first).

A head is removed from the q, k and v projections (its columns), from the output projection
(its rows) and from the attention's `num_heads`, all at once; heads are ranked by the norm of
their weights in all four (`mdoc.pruning.importance`). Attentions whose channels reach a graph
output or an op the analysis does not know keep every head.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.ir import Graph
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.pruning import prune_graph, record_kept_channels


@register_pass("prune-heads")
@dataclass(frozen=True)
class PruneHeads(GraphPass):
    """Structured pruning of attention heads: remove `ratio` of each mdoc.attention's heads."""

    ratio: float = 0.25
    criterion: str = "l1"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if graph is not ctx.model.graph:
            return False
        decisions = prune_graph(graph, heads=self.ratio, criterion=self.criterion, opset=ctx.model.opset)
        record_kept_channels(ctx.model, decisions)
        return any(d.kept < d.units for d in decisions if d.heads)
