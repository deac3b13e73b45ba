"""fold-if: an If whose condition is a constant becomes the nodes of the branch it takes.

The taken branch is copied into the If's graph just before it (`mdoc.clone`), its
outputs replace the If's results, and the other branch goes with the If. Ifs
nested in bodies fold too, innermost first. An If whose condition is computed
at run time stays: the TVM lowering makes it a `relax.If` (targets/relax/control_flow.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.clone import clone_graph_into, erase_unused_constants, replace_results
from mdoc.ir import Graph
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.passes.decompose_util import describe


@register_pass("fold-if")
@dataclass(frozen=True)
class FoldIf(GraphPass):
    """Inline the taken branch of every If whose condition is a constant."""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return _fold(graph, ctx)


def _fold(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.nodes():
        for sub in node.subgraphs():
            changed |= _fold(sub, ctx)
        if node.op != "onnx.If" or node.input(0) is None:
            continue
        cond_value = node.input(0)
        cond = cond_value.const_value
        if cond is None or cond.size != 1:
            continue
        taken = bool(np.asarray(cond).reshape(-1)[0])
        branch = node.attrs.get("then_branch" if taken else "else_branch")
        if not isinstance(branch, Graph) or len(branch.outputs) != len(node.outputs):
            continue  # the verifier reports a malformed If; folding it would hide that
        prefix = f"{node.name}/" if node.name else ""
        values = clone_graph_into(branch, graph, node, {}, name_prefix=prefix, provenance="fold-if")
        replace_results(node, values, provenance="fold-if")
        erase_unused_constants([cond_value])
        ctx.log(f"fold-if: {describe(node)} takes its {'then' if taken else 'else'} branch")
        changed = True
    return changed
