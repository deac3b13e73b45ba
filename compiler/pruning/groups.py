"""Which channels must be pruned together: the dependency analysis behind structured pruning.

Every output channel of a layer with constant weights (Conv, Gemm, MatMul: a *source*) is an
*atom*. The analysis follows each source's result through the ops that keep its channels
apart (BatchNormalization, activations, pools, depthwise convs, Concat, Split, Flatten or a
flattening Reshape into a Gemm, mdoc.attention) and records, for every value it reaches, which
atom each channel is (its `Layout`). An elementwise op that meets two such values (a residual
Add) makes their atoms equal position by position; those equalities are the edges of a
networkx graph whose connected components are the units that are kept or removed as one.

A *group* is a connected set of sources (their atoms linked by equalities or by belonging to
one source): it is pruned together or not at all. Any use the analysis does not understand
(an op it has no rule for, a graph output, a body that captures the value, a grouped conv)
freezes the atoms it reads, and a group with a frozen atom is kept whole, with the reason.
The model's inputs and outputs therefore keep their shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ..ir import Graph, Node, Value
from ..types import TensorType

UNARY = frozenset({
    "onnx.Relu", "onnx.Clip", "onnx.Sigmoid", "onnx.Tanh", "onnx.LeakyRelu", "onnx.HardSigmoid", "onnx.HardSwish",
    "onnx.Elu", "onnx.Selu", "onnx.Celu", "onnx.Gelu", "onnx.Erf", "onnx.Softplus", "onnx.Softsign", "onnx.Identity",
    "onnx.Neg", "onnx.Abs", "onnx.Exp", "onnx.Sqrt", "onnx.Reciprocal", "onnx.Mish", "onnx.Dropout", "onnx.Floor",
    "onnx.Ceil", "onnx.Round", "mdoc.gelu", "mdoc.silu",
})
"""Ops that act on each element alone: a channel in is the same channel out (only operand 0 carries it)."""
ELEMENTWISE = frozenset({"onnx.Add", "onnx.Sub", "onnx.Mul", "onnx.Div", "onnx.Max", "onnx.Min", "onnx.Pow",
                         "onnx.PRelu", "onnx.Sum", "onnx.Mean"})
"""Broadcasting ops of several operands: channels that meet there must be the same channels."""
POOLS = frozenset({"onnx.MaxPool", "onnx.AveragePool", "onnx.GlobalAveragePool", "onnx.GlobalMaxPool",
                   "onnx.LpPool", "onnx.GlobalLpPool"})


@dataclass
class Layout:
    """Where a value's channels are and which atom each one is.

    axis: the channel axis; ids: the atom of each channel along it; repeat: features per channel
    on that axis (a Flatten of [N, C, H, W] gives each channel H*W consecutive features).
    """

    axis: int
    ids: np.ndarray
    repeat: int = 1

    def features(self, kept: np.ndarray) -> np.ndarray:
        """Indices along the axis that survive when `kept[atom]` says which atoms stay."""
        channels = np.nonzero(kept[self.ids])[0]
        return (channels[:, None] * self.repeat + np.arange(self.repeat)).reshape(-1)


@dataclass
class Source:
    """A layer whose output channels are new atoms (`start` .. `start + count`)."""

    node: Node
    start: int
    count: int

    @property
    def atoms(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.count)


@dataclass
class Group:
    """Sources pruned together. `units` are the atom sets kept or removed as one (a channel, or a
    whole attention head when `heads`), in the order of the first source's channels."""

    key: str
    sources: list[Source]
    units: list[np.ndarray]
    heads: list[Node] = field(default_factory=list)
    frozen: str = ""


class ChannelAnalysis:
    """Layouts of the values of `graph`, the sources, the equalities and the frozen atoms."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.layouts: dict[Value, Layout] = {}
        self.sources: list[Source] = []
        self.equal = nx.Graph()
        self.frozen: dict[int, str] = {}
        self._handled: set[tuple[Node, int]] = set()
        self._count = 0
        for node in graph:
            _RULES.get(node.op, _unknown)(self, node)
        for value, layout in list(self.layouts.items()):
            if any(v is value for v in graph.outputs):
                self.freeze(layout, f"it reaches the graph output '{value.name}'")
            for user, i in value.uses():
                if (user, i) not in self._handled:
                    self.freeze(layout, f"it is read by {user.op} '{user.name}'")

    @property
    def atom_count(self) -> int:
        return self._count

    # -- building blocks of the rules ---------------------------------------------------
    def new_atoms(self, count: int) -> np.ndarray:
        ids = np.arange(self._count, self._count + count)
        self._count += count
        self.equal.add_nodes_from(ids.tolist())
        return ids

    def source(self, node: Node, value: Value, axis: int, count: int) -> None:
        ids = self.new_atoms(count)
        self.sources.append(Source(node, int(ids[0]) if count else self._count, count))
        self.layouts[value] = Layout(axis, ids)

    def freeze(self, layout: Layout, reason: str) -> None:
        for atom in layout.ids.tolist():
            self.frozen.setdefault(atom, reason)

    def handled(self, node: Node, *indices: int) -> None:
        self._handled.update((node, i) for i in indices)

    def layout(self, value: Value | None) -> Layout | None:
        return self.layouts.get(value) if value is not None else None

    def same(self, a: np.ndarray, b: np.ndarray) -> None:
        self.equal.add_edges_from(zip(a.tolist(), b.tolist()))

    # -- the groups ------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """Connected sources, their units (atoms equal to each other), and why a group stays whole."""
        linked = nx.Graph(self.equal)
        for s in self.sources:
            linked.add_edges_from(zip(s.atoms[:-1].tolist(), s.atoms[1:].tolist()))
        owner = {a: s for s in self.sources for a in s.atoms.tolist()}
        classes = {a: c for c in nx.connected_components(self.equal) for a in c}
        heads = {n: self.layouts[n.input(0)] for n in self.graph if n.op == "mdoc.attention"
                 and self.layout(n.input(0)) is not None}
        groups = []
        for component in nx.connected_components(linked):
            sources = sorted({id(owner[a]): owner[a] for a in component if a in owner}.values(),
                             key=lambda s: s.start)
            if not sources:
                continue
            first = sources[0]
            units = [np.array(sorted(classes[a]), dtype=np.int64) for a in first.atoms.tolist()]
            frozen = next((self.frozen[a] for a in sorted(component) if a in self.frozen), "")
            if not frozen and len({s.count for s in sources}) > 1:
                frozen = "its layers have different channel counts (a Concat of unequal parts)"
            group = Group(first.node.name or first.node.op, sources, units, frozen=frozen)
            group.heads = [n for n, lay in heads.items() if int(lay.ids[0]) in component]
            if group.heads:
                group.units = _head_units(group, units)
            groups.append(group)
        return groups


def _head_units(group: Group, channels: list[np.ndarray]) -> list[np.ndarray]:
    """Whole heads as units: every attention of the group must split the channels the same way."""
    counts = {int(n.attrs["num_heads"]) for n in group.heads}
    if len(counts) != 1 or len(channels) % next(iter(counts)):
        group.frozen = group.frozen or "its attentions split the channels into different heads"
        return channels
    dim = len(channels) // next(iter(counts))
    return [np.concatenate(channels[h:h + dim]) for h in range(0, len(channels), dim)]


# -- one rule per op: which operands carry channels, which results get them -----------------
def _static(value: Value | None) -> tuple | None:
    t = value.type if value is not None else None
    return t.shape if isinstance(t, TensorType) and t.shape is not None else None


def _unknown(a: ChannelAnalysis, node: Node) -> None:
    """No rule: every channel it reads is frozen by the final check (its uses are not handled)."""


def _conv(a: ChannelAnalysis, node: Node) -> None:
    x, w = node.input(0), node.input(1)
    weights = w.const_value if w is not None else None
    b = node.input(2)
    if weights is None or weights.ndim < 3 or (b is not None and b.const_value is None):
        return
    group = int(node.attrs.get("group", 1))
    cout, cin = weights.shape[0], weights.shape[1] * group
    lay = a.layout(x)
    a.handled(node, 1, 2)
    if group == 1:
        if lay is not None and lay.axis == 1 and lay.repeat == 1:
            a.handled(node, 0)
        a.source(node, node.output, 1, cout)
    elif group == cin == cout:
        if lay is not None and lay.axis == 1 and lay.repeat == 1:
            a.handled(node, 0)
            a.layouts[node.output] = Layout(1, lay.ids)
    else:
        if lay is not None:
            a.freeze(lay, f"it feeds the grouped conv '{node.name}' (group {group})")
        ids = a.new_atoms(cout)
        a.layouts[node.output] = Layout(1, ids)
        a.freeze(a.layouts[node.output], f"it is the result of the grouped conv '{node.name}' (group {group})")


def _dense(a: ChannelAnalysis, node: Node) -> None:
    """Gemm, and MatMul with a constant 2-D weight: a consumer on its input's last axis, a source on its result's."""
    x, w = node.input(0), node.input(1)
    weights = w.const_value if w is not None else None
    gemm = node.op == "onnx.Gemm"
    if weights is None or weights.ndim != 2 or (gemm and node.attrs.get("transA", 0)):
        return
    out = _static(node.output)
    rank = len(out) if out is not None else (2 if gemm else None)
    if rank is None:
        return
    lay = a.layout(x)
    if lay is not None and lay.axis == rank - 1:
        a.handled(node, 0)
    a.handled(node, 1)
    n = weights.shape[0] if gemm and node.attrs.get("transB", 0) else weights.shape[1]
    if gemm and node.input(2) is not None:
        c = node.input(2).const_value
        if c is None or (c.ndim and c.shape[-1] not in (1, n)) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            return
        a.handled(node, 2)
    a.source(node, node.output, rank - 1, n)


def _batch_norm(a: ChannelAnalysis, node: Node) -> None:
    lay = a.layout(node.input(0))
    if lay is None or lay.axis != 1 or any(node.input(i) is None or node.input(i).const_value is None
                                           for i in range(1, 5)):
        return
    a.handled(node, 0, 1, 2, 3, 4)
    a.layouts[node.outputs[0]] = lay


def _unary(a: ChannelAnalysis, node: Node) -> None:
    lay = a.layout(node.input(0))
    if lay is None or any(v is not None and v.const_value is None for v in node.inputs[1:]):
        return
    if any(v is not None and v.const_value.size > 1 for v in node.inputs[1:]):
        return
    a.handled(node, *range(len(node.inputs)))
    for out in node.outputs:
        a.layouts[out] = lay


def _pool(a: ChannelAnalysis, node: Node) -> None:
    lay = a.layout(node.input(0))
    if lay is not None and lay.axis == 1 and lay.repeat == 1:
        a.handled(node, 0)
        for out in node.outputs:
            a.layouts[out] = lay


def _elementwise(a: ChannelAnalysis, node: Node) -> None:
    out = _static(node.outputs[0])
    if out is None:
        return
    rank = len(out)
    carried = [(i, a.layout(v)) for i, v in enumerate(node.inputs) if a.layout(v) is not None]
    if not carried:
        return
    axes = {lay.axis + rank - len(_static(node.input(i)) or ()) for i, lay in carried}
    lays = [lay for _, lay in carried]
    if len(axes) != 1 or any(_static(node.input(i)) is None for i, _ in carried) \
            or len({(len(x.ids), x.repeat) for x in lays}) != 1:
        return
    axis = axes.pop()
    width = len(lays[0].ids) * lays[0].repeat
    for i, v in enumerate(node.inputs):
        if v is None or a.layout(v) is not None:
            continue
        shape = _static(v)
        k = axis - (rank - len(shape)) if shape is not None else -1
        if shape is not None and (k < 0 or shape[k] == 1):
            continue
        if v.const_value is None or shape[k] != width:
            return
    for lay in lays[1:]:
        a.same(lays[0].ids, lay.ids)
    a.handled(node, *range(len(node.inputs)))
    a.layouts[node.outputs[0]] = Layout(axis, lays[0].ids, lays[0].repeat)


def _flatten(a: ChannelAnalysis, node: Node) -> None:
    """Flatten (axis 1), or a Reshape to [N, C * H * W] with a constant shape: into a Gemm's features."""
    lay = a.layout(node.input(0))
    shape, out = _static(node.input(0)), _static(node.output)
    if lay is None or lay.axis != 1 or shape is None or out is None or len(out) != 2:
        return
    rest = shape[2:]
    if not all(isinstance(d, int) for d in rest) or not isinstance(shape[1], int):
        return
    inner = int(np.prod(rest, dtype=np.int64))
    if node.op == "onnx.Flatten":
        if node.attrs.get("axis", 1) != 1:
            return
    else:
        target = node.input(1).const_value if node.input(1) is not None else None
        if target is None or out[1] != shape[1] * inner or len(target) != 2 or target[1] not in (-1, shape[1] * inner):
            return
        a.handled(node, 1)
    a.handled(node, 0)
    a.layouts[node.output] = Layout(1, lay.ids, lay.repeat * inner)


def _concat(a: ChannelAnalysis, node: Node) -> None:
    out = _static(node.output)
    if out is None:
        return
    axis = int(node.attrs.get("axis", 0)) % len(out)
    parts = []
    for v in node.inputs:
        lay, shape = a.layout(v), _static(v)
        if lay is not None and (lay.axis != axis or lay.repeat != 1):
            return
        if lay is None:
            if shape is None or not isinstance(shape[axis], int):
                return
            lay = Layout(axis, a.new_atoms(shape[axis]))
            a.freeze(lay, f"it is concatenated by '{node.name}' with channels no layer here makes")
        parts.append(lay.ids)
    if not any(a.layout(v) is not None for v in node.inputs):
        return
    a.handled(node, *range(len(node.inputs)))
    a.layouts[node.output] = Layout(axis, np.concatenate(parts))


def _split(a: ChannelAnalysis, node: Node) -> None:
    lay = a.layout(node.input(0))
    if lay is None or lay.repeat != 1:
        return
    shape = _static(node.input(0))
    axis = int(node.attrs.get("axis", 0)) % len(shape) if shape is not None else None
    if axis != lay.axis:
        return
    sizes = node.input(1).const_value if node.input(1) is not None else node.attrs.get("split")
    if sizes is None:
        if len(lay.ids) % len(node.outputs):
            return
        sizes = [len(lay.ids) // len(node.outputs)] * len(node.outputs)
    offsets = np.cumsum([0, *[int(s) for s in sizes]])
    a.handled(node, 0, 1)
    for out, lo, hi in zip(node.outputs, offsets[:-1], offsets[1:]):
        a.layouts[out] = Layout(axis, lay.ids[lo:hi])


def _attention(a: ChannelAnalysis, node: Node) -> None:
    """mdoc.attention reads q, k and v channel by channel in heads: all three prune alike, its result as v."""
    lays = [a.layout(node.input(i)) for i in range(3)]
    if any(lay is None or lay.axis != 2 or lay.repeat != 1 for lay in lays):
        return
    a.same(lays[0].ids, lays[1].ids)
    a.same(lays[0].ids, lays[2].ids)
    a.handled(node, 0, 1, 2, 3)
    a.layouts[node.output] = Layout(2, lays[2].ids)


_RULES = {
    "onnx.Conv": _conv, "onnx.Gemm": _dense, "onnx.MatMul": _dense, "onnx.BatchNormalization": _batch_norm,
    "onnx.Flatten": _flatten, "onnx.Reshape": _flatten, "onnx.Concat": _concat, "onnx.Split": _split,
    "mdoc.attention": _attention,
    **{op: _unary for op in UNARY}, **{op: _pool for op in POOLS}, **{op: _elementwise for op in ELEMENTWISE},
}
