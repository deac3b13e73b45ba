"""prune-channels: remove a share of the output channels of every Conv, Gemm and MatMul group.

Channels that must stay aligned (both sides of a residual Add, a Concat, a depthwise chain)
are pruned together or not at all (`mdoc.pruning.groups`); what reaches a graph output is kept,
so the model's signature does not change. `round-to` rounds each group's kept count to a
multiple (the target's vector width; `mdoc prune --target` fills it in). Criteria that read
weights only run here; `activation` needs calibration samples and runs from `mdoc prune`.
Nodes named in `exclude` (separated by ';') keep their groups whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.ir import Graph
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.pruning import prune_graph, record_kept_channels


@register_pass("prune-channels")
@dataclass(frozen=True)
class PruneChannels(GraphPass):
    """Structured pruning: remove `ratio` of each channel group's channels (l1, l2 or bn-scale)."""

    ratio: float = 0.3
    criterion: str = "l1"
    round_to: int = 1
    exclude: str = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if graph is not ctx.model.graph:
            return False
        decisions = prune_graph(graph, channels=self.ratio, criterion=self.criterion, round_to=self.round_to,
                                exclude=tuple(n for n in self.exclude.split(";") if n), opset=ctx.model.opset)
        record_kept_channels(ctx.model, decisions)
        return any(d.kept < d.units for d in decisions)
