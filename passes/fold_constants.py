"""fold-constants: evaluate what is known before the model runs, within a byte budget.

A node folds when its operands are constants, or when it is `Shape`/`Size` of a
value whose type is static (so whole shape subgraphs — Shape, Gather, Concat,
Unsqueeze, Slice, Cast, Reshape — collapse), or a `Gather`/`Slice` that picks
only the known dims out of a partly symbolic `Shape`. Values are computed by
`mdoc.evaluator` (numpy kernels, onnx's reference evaluator as fallback), never
for random ops, ops of custom domains or ops with bodies.

Folding trades nodes for constant bytes. The pass first computes every foldable
value in a graph, then decides what to keep: the cost of a set of folds is the
bytes of the constants it must create (values still read by nodes that do not
fold, or returned) minus the bytes of the constants it frees (read only by
folded nodes). Connected folds are judged together, so a shape chain that
briefly makes a `Shape` constant but ends in one small Reshape target is cheap,
while a ConstantOfShape, Tile or Expand that turns eight bytes into megabytes is
expensive. Groups that shrink the model always fold; groups that grow it fold
smallest first while the total growth stays within `max-bytes`; a group over
budget first sheds its expanding nodes (which then stay as ops). So one run
never grows the model's constant bytes by more than `max-bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.evaluator import EXPANDING, can_fold, result_nbytes, shape_dims, try_fold
from mdoc.ir import CONSTANT, Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.types import TensorType

from ._util import output_refs, replace_value

# Values up to this size are computed even when the budget is smaller: a large
# intermediate may still reduce to a small constant that is worth keeping.
EVAL_FLOOR = 64 << 10


@register_pass("fold-constants")
@dataclass(frozen=True)
class FoldConstants(GraphPass):
    """Evaluate nodes whose operands are known (constants, static shapes); never grow the model by more than max-bytes."""

    max_bytes: int = 1 << 20

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        folder = _Folder(ctx.model.opset, max(self.max_bytes, 0), output_refs(graph))
        return folder.graph(graph)


class _Folder:
    def __init__(self, opset: int, budget: int, refs: set[int]):
        self.opset = opset
        self.budget = budget  # bytes of growth still allowed in this run
        self.refs = refs
        self.current: Graph | None = None

    def graph(self, g: Graph) -> bool:
        self.current = g
        computed = self.evaluate(g)
        chosen = self.choose(g, computed)
        changed = bool(chosen)
        if chosen:
            self.materialize(g, chosen, computed)
        for node in g:
            for sub in node.subgraphs():
                changed |= self.graph(sub)
        return changed

    # -- 1. compute every foldable value -----------------------------------------
    def evaluate(self, g: Graph) -> dict[Value, np.ndarray]:
        computed: dict[Value, np.ndarray] = {}
        for node in g:
            if node.op == CONSTANT or not can_fold(node):
                continue
            inputs = [None if v is None else computed.get(v, v.const_value) for v in node.inputs]
            partial = False
            if node.op_type in ("Shape", "Size"):
                if not _static(node.inputs[0]):
                    continue
            elif any(v is not None and a is None for v, a in zip(node.inputs, inputs)):
                partial = (node.op_type in ("Gather", "Slice") and inputs[0] is None
                           and shape_dims(node.inputs[0]) is not None
                           and all(a is not None for v, a in zip(node.inputs[1:], inputs[1:]) if v is not None))
                if not partial:
                    continue
            in_bytes = sum(int(a.nbytes) for a in inputs if a is not None)
            cap = max(self.budget, in_bytes, EVAL_FLOOR)
            predicted = None if partial else result_nbytes(node, inputs, self.opset)
            if predicted is None:
                predicted = _static_nbytes(node)
            if predicted is None and node.op_type in EXPANDING and not partial:
                continue
            if predicted is not None and predicted > cap:
                continue
            results = try_fold(node, self.opset, inputs)
            if results is None or sum(int(r.nbytes) for r in results) > cap:
                continue
            computed.update(zip(node.outputs, results))
        return computed

    # -- 2. decide which folds pay for themselves --------------------------------
    def choose(self, g: Graph, computed: dict[Value, np.ndarray]) -> set[Node]:
        folded = [n for n in g if n.outputs and all(o in computed for o in n.outputs)]
        if not folded:
            return set()
        groups = _groups(folded)
        chosen: set[Node] = set()
        costs = []
        for group in groups:
            costs.append((self.growth(group, computed), group))
        # Shrinking groups first, then growing ones smallest first while the budget lasts.
        costs.sort(key=lambda c: c[0])
        for cost, group in costs:
            if cost > self.budget:
                group = self.shed(group, computed)
                cost = self.growth(group, computed)
                if not group or cost > self.budget:
                    continue
            chosen |= group
            self.budget -= cost
        return chosen

    def growth(self, group: set[Node], computed) -> int:
        """Constant bytes the model gains if exactly `group` folds: created minus freed."""
        created = sum(int(computed[o].nbytes) for n in group for o in n.outputs if self.needed(o, group))
        freed = sum(int(c.const_value.nbytes) for c in _constant_operands(group) if self.frees(c, group))
        return created - freed

    def needed(self, v: Value, group: set[Node]) -> bool:
        """A folded value must become a constant: something outside `group` reads it."""
        return id(v) in self.refs or any(user not in group for user, _ in v.uses())

    def frees(self, c: Value, group: set[Node]) -> bool:
        """A constant dies with `group`: only its nodes read it."""
        return (id(c) not in self.refs and c.producer().graph is self.current
                and all(user in group for user, _ in c.uses()))

    def shed(self, group: set[Node], computed) -> set[Node]:
        """Drop the folds that grow the model most (typically ConstantOfShape, Tile, Expand) until none does."""
        group = set(group)
        order = [n for n in _ordered(group)]
        while True:
            best, best_gain = None, 0
            for node in reversed(order):
                if node in group:
                    gain = self.gain(node, group, computed)
                    if gain > best_gain:
                        best, best_gain = node, gain
            if best is None:
                return group
            group.discard(best)
            if self.growth(group, computed) <= self.budget:
                return group

    def gain(self, node: Node, group: set[Node], computed) -> int:
        """How much growth leaving `node` as an op saves (its operands may have to become constants instead)."""
        saved = sum(int(computed[o].nbytes) for o in node.outputs if self.needed(o, group))
        cost = 0
        for v in {id(v): v for v in node.inputs if v is not None}.values():
            p = v.producer()
            if p in group and not self.needed(v, group):
                cost += int(computed[v].nbytes)
            elif v.const_value is not None and p not in group and self.frees(v, group):
                cost += int(v.const_value.nbytes)
        return saved - cost

    # -- 3. rewrite ----------------------------------------------------------------
    def materialize(self, g: Graph, chosen: set[Node], computed) -> None:
        constants = _constant_operands(chosen)
        dying = [c for c in constants if self.frees(c, chosen)]
        order = [n for n in g if n in chosen]
        for node in order:
            for o in node.outputs:
                if self.needed(o, chosen):
                    new = g.constant(computed[o], name=o.name, before=node)
                    replace_value(g, o, new, self.refs)
        for node in reversed(order):
            g.erase(node)
        for c in dying:
            p = c.producer()
            if p is not None and p.graph is g and not c.has_uses():
                g.erase(p)


def _static(v: Value | None) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.is_static


def _static_nbytes(node: Node) -> int | None:
    total = 0
    for o in node.outputs:
        t = o.type
        if not isinstance(t, TensorType) or not t.is_static:
            return None
        total += int(t.numel() * t.dtype.itemsize)
    return total


def _constant_operands(group: set[Node]) -> list[Value]:
    seen: dict[int, Value] = {}
    for n in group:
        for v in n.inputs:
            if v is not None and v.const_value is not None and v.producer() not in group:
                seen.setdefault(id(v), v)
    return list(seen.values())


def _ordered(group: set[Node]) -> list[Node]:
    if not group:
        return []
    g = next(iter(group)).graph
    return [n for n in g if n in group]


def _groups(folded: list[Node]) -> list[set[Node]]:
    """Folds joined by a value (one reads the other's result) or by a constant operand they share."""
    parent: dict[Node, Node] = {n: n for n in folded}

    def find(n: Node) -> Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def union(a: Node, b: Node) -> None:
        ra, rb = find(a), find(b)
        if ra is not rb:
            parent[ra] = rb

    by_constant: dict[int, Node] = {}
    for n in folded:
        for v in n.inputs:
            if v is None:
                continue
            p = v.producer()
            if p in parent:
                union(n, p)
            elif v.const_value is not None:
                first = by_constant.setdefault(id(v), n)
                union(n, first)
    groups: dict[Node, set[Node]] = {}
    for n in folded:
        groups.setdefault(find(n), set()).add(n)
    return list(groups.values())
