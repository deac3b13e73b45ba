"""fold-if: an If whose condition is a constant becomes the nodes of the branch it takes.

So does torch.onnx's export of `x.squeeze(d)` on a dim known only at run time: If(Shape(x)[d] == 1)
with Squeeze(x, [d]) in one branch and x itself in the other. The branches differ in rank, which
no backend with typed branches can take (Relax's If cannot), and the rest of the graph was traced
with the squeezed rank, so the squeeze branch is taken (silero-vad; a dim other than 1 at run time
is then the Squeeze's error instead of a result of another rank).

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
        if cond is not None and cond.size == 1:
            taken = bool(np.asarray(cond).reshape(-1)[0])
        elif _is_squeeze_idiom(node):
            taken = True
        else:
            continue
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


def _is_squeeze_idiom(node) -> bool:
    """If(Equal(Gather(Shape(x), d), 1)) { Squeeze(x, [d]) } else { x }, d a constant."""
    eq = node.input(0).producer()
    if eq is None or eq.op != "onnx.Equal":
        return False
    gather, one = eq.input(0).producer(), eq.input(1).const_value
    if gather is None or gather.op != "onnx.Gather" or one is None or one.size != 1 or int(one.reshape(-1)[0]) != 1:
        return False
    shape, d = gather.input(0).producer(), gather.input(1).const_value
    if shape is None or shape.op != "onnx.Shape" or d is None or d.size != 1 or shape.attrs.get("start") is not None:
        return False
    x, d = shape.input(0), int(d.reshape(-1)[0])
    then, other = node.attrs.get("then_branch"), node.attrs.get("else_branch")
    if not isinstance(then, Graph) or not isinstance(other, Graph) or len(then.outputs) != 1 or len(other.outputs) != 1:
        return False
    squeeze, kept = then.outputs[0].producer(), other.outputs[0]
    if kept.producer() is not None and kept.producer().op == "onnx.Identity":
        kept = kept.producer().input(0)
    if squeeze is None or squeeze.op != "onnx.Squeeze" or squeeze.input(0) is not x or kept is not x:
        return False
    axes = squeeze.input(1).const_value if squeeze.input(1) is not None else squeeze.attrs.get("axes")
    return axes is not None and [int(a) for a in np.asarray(axes).reshape(-1)] == [d]
