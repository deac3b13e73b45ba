"""decompose-loop: a Loop that runs a known number of times becomes one copy of its body per iteration.

TVM has no Loop. A Loop unrolls when its trip count M is a constant and its
condition cannot stop it early: the condition input is absent or constant true,
and the body's condition output is constant true or passes the condition input
through (an Identity chain counts), or the loop runs at most once. Iteration i
binds the body's iteration number to the constant i, its condition to true and
its loop-carried inputs to what the previous copy returned; each scan output is
the per-iteration values Unsqueezed and Concatenated on axis 0. The body's
constants are copied once and shared by all iterations.

Anything else is data dependent (a while loop, a trip count or condition
computed at run time) and stays as it is, with a note in the pass log; the TVM
lowering then turns the Loop into a recursive Relax function
(`targets/relax/control_flow.py`). So do loops of more than `max-iterations`
iterations, and loops of 0 iterations with scan outputs (their empty results
have shapes the IR cannot know).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.clone import clone_constants, clone_graph_into, erase_unused_constants, replace_results
from mdoc.errors import MdocError
from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.passes.decompose_util import Builder, describe, unroll_all
from mdoc.shape_inference import merge


@register_pass("decompose-loop")
@dataclass(frozen=True)
class DecomposeLoop(GraphPass):
    """Unroll every Loop with a constant trip count and a condition that is always true."""

    max_iterations: int = 1024

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return unroll_all(graph, ctx, "onnx.Loop", _unroll, "decompose-loop", self.max_iterations)


def _unroll(node: Node, ctx: PassContext, limit: int) -> str:
    """Unroll `node`; return why not instead when it cannot."""
    body: Graph = node.attrs["body"]
    trip, cond = node.input(0), node.input(1)
    carried = list(node.inputs[2:])
    n = len(carried)
    k = len(body.outputs) - 1 - n
    if k < 0 or len(body.inputs) != 2 + n:
        raise MdocError(f"decompose-loop: {describe(node)}: {n} loop-carried inputs do not fit a body with "
                        f"{len(body.inputs)} inputs and {len(body.outputs)} outputs (it needs {2 + n} inputs "
                        f"and at least {1 + n} outputs)")
    if trip is None:
        return "it has no trip count (a while loop)"
    m = trip.const_value
    if m is None:
        return "its trip count is computed at run time"
    count = max(int(np.asarray(m).reshape(-1)[0]), 0)
    if cond is not None:
        c = cond.const_value
        if c is None:
            return "its condition is computed at run time"
        if not bool(np.asarray(c).reshape(-1)[0]):
            count = 0
    if count > 1 and not _always_true(body.outputs[0], body):
        return "the body computes its condition output (the loop may stop early)"
    if count > limit:
        return f"it runs {count} iterations, more than max-iterations={limit}"
    if count == 0 and k:
        return "it runs 0 iterations and has scan outputs (empty tensors of unknown shape)"

    graph = node.graph
    b = Builder(graph, node, ctx.model.opset, "decompose-loop", node.name)
    shared = clone_constants(body, graph, node) if count else {}
    true = b.value(np.array(True)) if count else None
    states = carried
    per_iteration: list[list[Value]] = [[] for _ in range(k)]
    for i in range(count):
        vm = dict(shared)
        vm[body.inputs[0]] = b.value(np.array(i, np.int64))
        vm[body.inputs[1]] = true
        for j, s in enumerate(states):
            vm[body.inputs[2 + j]] = s
        results = clone_graph_into(body, graph, node, vm, name_prefix=f"{node.name}/{i}/" if node.name else "",
                                   provenance="decompose-loop")
        states = results[1:1 + n]
        for j in range(k):
            per_iteration[j].append(results[1 + n + j])
    outs = []
    for j in range(k):
        out = b.concat([b.unsqueeze(v, 0) for v in per_iteration[j]], 0)
        if isinstance(out, Value):
            out.type = merge(node.outputs[n + j].type, out.type)
        outs.append(b.value(out))
    operands = node.inputs
    replace_results(node, states + outs, provenance="decompose-loop")
    erase_unused_constants(operands)
    return ""


def _always_true(v: Value, body: Graph) -> bool:
    """Whether the body's condition output is true whenever its condition input is."""
    while True:
        if v is body.inputs[1]:
            return True
        c = v.const_value
        if c is not None:
            return c.size == 1 and bool(np.asarray(c).reshape(-1)[0])
        p = v.producer()
        if p is None or p.op != "onnx.Identity":
            return False
        v = p.input(0)
