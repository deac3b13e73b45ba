"""dce: remove what nothing reads.

Dead nodes go (in nested bodies too, and constants — the initializers — among
them); a multi-result node drops unused trailing results where its ONNX schema
marks them optional (MaxPool's Indices, Dropout's mask, LSTM's Y_c, ...); with
`remove-unused-inputs=true`, graph inputs nothing reads go as well (this changes
the model's signature, hence off by default). Bodies keep their inputs and
outputs: those are fixed by the op that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import defs

from mdoc.ir import Graph, Node
from mdoc.ops import schema_of
from mdoc.pass_manager import GraphPass, PassContext, register_pass

from ._util import is_live, output_refs, replace_value

# Ops whose number of results changes their meaning in some opsets, so results are never dropped:
# BatchNormalization before opset 14 runs in training mode exactly when it has five results.
_KEEP_ARITY_BEFORE = {"BatchNormalization": 14}


@register_pass("dce")
@dataclass(frozen=True)
class DeadCodeElimination(GraphPass):
    """Remove dead nodes and constants (bodies too), unused optional trailing results, and optionally unused inputs."""

    remove_unused_inputs: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        refs = output_refs(graph)
        changed = self.sweep(graph, ctx, refs)
        if self.remove_unused_inputs:
            for v in list(graph.inputs):
                if not is_live(v, refs):
                    graph.remove_input(v)
                    changed = True
        return changed

    def sweep(self, g: Graph, ctx: PassContext, refs: set[int]) -> bool:
        """Walk backwards, so a node's users are judged before the node itself."""
        changed = False
        for node in reversed(g.nodes()):
            for sub in node.subgraphs():
                changed |= self.sweep(sub, ctx, refs)
            live = [is_live(o, refs) for o in node.outputs]
            if not any(live):
                g.erase(node)
                changed = True
                continue
            keep = _kept_results(node, live, ctx)
            if keep < len(node.outputs):
                _drop_results(g, node, keep, refs)
                changed = True
        return changed


def _kept_results(node: Node, live: list[bool], ctx: PassContext) -> int:
    """How many leading results `node` must keep: up to its last used one, or its schema's required ones."""
    n = len(node.outputs)
    last = max(i for i, used in enumerate(live) if used) + 1
    if last == n:
        return n
    opset = ctx.model.opset_of(node.op)
    if node.op_type in _KEEP_ARITY_BEFORE and node.domain == "" and opset < _KEEP_ARITY_BEFORE[node.op_type]:
        return n
    schema = schema_of(node.op, ctx.model.opset_imports)
    if schema is None:
        return n  # custom ops: their arity is theirs to define
    formals = list(schema.outputs)
    keep = last
    for i in range(last, n):
        formal = formals[min(i, len(formals) - 1)] if formals else None
        if formal is None or formal.option != defs.OpSchema.FormalParameterOption.Optional:
            keep = i + 1  # a required or variadic result after the last used one: keep up to it
    return max(keep, schema.min_output)


def _drop_results(g: Graph, node: Node, keep: int, refs: set[int]) -> None:
    """Rebuild `node` with only its first `keep` results (the IR fixes a node's results at creation)."""
    new = g.add(node.op, node.inputs, node.attrs, outputs=[o.type for o in node.outputs[:keep]],
                name=node.name, before=node, output_names=[o.name for o in node.outputs[:keep]],
                provenance=node.provenance)
    for old, repl in zip(node.outputs, new.outputs):
        replace_value(g, old, repl, refs)
    g.erase(node)
