"""The mdoc IR: typed SSA values, nodes with flat ordered operands, graphs with nested bodies.

Identity is object identity: two values are the same value only if they are the
same object; names are hints used for printing and export. A value's use list is
edited only by the graph API (`Node.set_input`, `Graph.replace_all_uses`, node
creation and erasure), so it can never drift from the operands it mirrors.

Op names have one spelling, `<domain>.<OpType>`: the default ONNX domain is
`onnx` (`onnx.Conv`), `ai.onnx.ml` is `onnx.ml`, mdoc's own ops are `mdoc.*`, and
custom domains keep their name (`com.microsoft.FusedConv`).

Constants are `onnx.Constant` nodes whose `value` attribute is a numpy array (a
memory map when the model keeps its weights in external data). Bodies of If,
Loop and Scan are `Graph`s held in attributes; they may use values of enclosing
graphs directly (implicit capture), as ONNX subgraphs do by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .errors import MdocError
from .types import UNKNOWN, Type, tensor_type_of

ONNX_DOMAIN_ALIASES = {"": "onnx", "ai.onnx": "onnx", "ai.onnx.ml": "onnx.ml"}
_DOMAIN_TO_ONNX = {"onnx": "", "onnx.ml": "ai.onnx.ml"}

CONSTANT = "onnx.Constant"


def op_name(domain: str, op_type: str) -> str:
    """The one spelling of an op: `op_name("", "Conv") == "onnx.Conv"`."""
    return f"{ONNX_DOMAIN_ALIASES.get(domain, domain)}.{op_type}"


def split_op(op: str) -> tuple[str, str]:
    """The ONNX (domain, op_type) of an op name: `split_op("onnx.Conv") == ("", "Conv")`."""
    prefix, _, op_type = op.rpartition(".")
    return _DOMAIN_TO_ONNX.get(prefix, prefix), op_type


class Value:
    """An SSA value: defined once (by a node, or as a graph input), used by any number of operands."""

    __slots__ = ("type", "name", "_producer", "_index", "_uses", "_owner")

    def __init__(self, type: Type = UNKNOWN, name: str = ""):
        self.type = type
        self.name = name
        self._producer: Node | None = None
        self._index = 0
        self._uses: list[tuple[Node, int]] = []
        self._owner: Graph | None = None  # set for graph inputs

    def producer(self) -> Node | None:
        return self._producer

    @property
    def index(self) -> int:
        """Which output of its producer this value is."""
        return self._index

    def uses(self) -> list[tuple["Node", int]]:
        """A snapshot of (node, operand index) pairs, safe to iterate while editing the graph."""
        return list(self._uses)

    def has_uses(self) -> bool:
        return bool(self._uses)

    @property
    def const_value(self) -> np.ndarray | None:
        """The array when this value is a constant, else None."""
        p = self._producer
        if p is not None and p.op == CONSTANT:
            return p.attrs["value"]
        return None

    @property
    def is_graph_input(self) -> bool:
        return self._owner is not None

    def __repr__(self) -> str:
        return f"<Value %{self.name or '?'}: {self.type}>"


class Node:
    """One operation: op name, ordered operands (None for an omitted optional one), attributes, results."""

    __slots__ = ("op", "_inputs", "attrs", "outputs", "name", "graph", "_prev", "_next", "provenance")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None] = (),
        attrs: dict[str, Any] | None = None,
        outputs: int | Sequence[Type] = 1,
        name: str = "",
        output_names: Sequence[str] = (),
        provenance: str = "",
    ):
        self.op = op
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.name = name
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self.provenance = provenance
        self._inputs: list[Value | None] = []
        for i, v in enumerate(inputs):
            self._inputs.append(v)
            if v is not None:
                v._uses.append((self, i))
        types = [UNKNOWN] * outputs if isinstance(outputs, int) else list(outputs)
        names = list(output_names) + [""] * (len(types) - len(output_names))
        self.outputs: tuple[Value, ...] = tuple(Value(t, n) for t, n in zip(types, names))
        for i, out in enumerate(self.outputs):
            out._producer = self
            out._index = i

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def domain(self) -> str:
        return split_op(self.op)[0]

    @property
    def op_type(self) -> str:
        return split_op(self.op)[1]

    @property
    def output(self) -> Value:
        """The single result of a one-result node."""
        if len(self.outputs) != 1:
            raise MdocError(f"{self.op} node '{self.name}' has {len(self.outputs)} results, not one")
        return self.outputs[0]

    def input(self, i: int) -> Value | None:
        """Operand `i`, or None when it is omitted or past the end."""
        return self._inputs[i] if i < len(self._inputs) else None

    def set_input(self, i: int, value: Value | None) -> None:
        while len(self._inputs) <= i:
            self._inputs.append(None)
        old = self._inputs[i]
        if old is value:
            return
        if old is not None:
            old._uses.remove((self, i))
        self._inputs[i] = value
        if value is not None:
            value._uses.append((self, i))
        while self._inputs and self._inputs[-1] is None:
            self._inputs.pop()

    def drop_inputs(self) -> None:
        """Detach every operand (used when erasing the node)."""
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.remove((self, i))
        self._inputs = []

    def subgraphs(self) -> Iterator["Graph"]:
        for value in self.attrs.values():
            if isinstance(value, Graph):
                yield value
            elif isinstance(value, tuple) and value and isinstance(value[0], Graph):
                yield from value

    def __repr__(self) -> str:
        return f"<Node {self.op} '{self.name}'>"


class Graph:
    """An ordered set of nodes in a valid (topological) order, with typed inputs and outputs.

    Nodes form a doubly linked list, so inserting before an anchor and erasing are
    O(1); `nodes()` returns a snapshot that passes may iterate while editing.
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.parent: Node | None = None
        self._first: Node | None = None
        self._last: Node | None = None
        self._count = 0
        self._holders: dict[Node, None] = {}  # nodes with bodies, in insertion order (an ordered set)

    # -- reading -----------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        node = self._first
        while node is not None:
            nxt = node._next
            yield node
            node = nxt

    def __len__(self) -> int:
        return self._count

    def nodes(self) -> list[Node]:
        return list(self)

    def walk(self) -> Iterator[Node]:
        """Every node of this graph and, depth first, of the bodies nested in it."""
        for node in self:
            yield node
            for sub in node.subgraphs():
                yield from sub.walk()

    def enclosing(self) -> Iterator["Graph"]:
        """This graph, then the graphs that hold it, outermost last."""
        g: Graph | None = self
        while g is not None:
            yield g
            g = g.parent.graph if g.parent is not None else None

    # -- building ----------------------------------------------------------
    def add_input(self, type: Type, name: str = "") -> Value:
        v = Value(type, name)
        v._owner = self
        self.inputs.append(v)
        return v

    def remove_input(self, value: Value) -> None:
        if value._uses:
            raise MdocError(f"graph input %{value.name} still has {len(value._uses)} uses; cannot remove it")
        self.inputs.remove(value)
        value._owner = None

    def append(self, node: Node) -> Node:
        return self._link(node, self._last, None)

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._check_member(anchor)
        return self._link(node, anchor._prev, anchor)

    def insert_after(self, anchor: Node, node: Node) -> Node:
        self._check_member(anchor)
        return self._link(node, anchor, anchor._next)

    def add(self, op: str, inputs: Sequence[Value | None] = (), attrs: dict | None = None, *,
            outputs: int | Sequence[Type] = 1, name: str = "", before: Node | None = None,
            output_names: Sequence[str] = (), provenance: str = "") -> Node:
        """Create a node and place it at the end, or just before `before`."""
        node = Node(op, inputs, attrs, outputs, name, output_names, provenance)
        for sub in node.subgraphs():
            sub.parent = node
        return self.insert_before(before, node) if before is not None else self.append(node)

    def constant(self, array: Any, name: str = "", before: Node | None = None) -> Value:
        """A new constant value holding `array` (a numpy array or anything np.asarray takes)."""
        array = array if isinstance(array, np.ndarray) else np.asarray(array)
        node = self.add(CONSTANT, (), {"value": array}, outputs=[tensor_type_of(array)],
                        before=before, output_names=[name])
        return node.output

    def _link(self, node: Node, prev: Node | None, nxt: Node | None) -> Node:
        if node.graph is not None:
            raise MdocError(f"{node.op} node '{node.name}' is already in graph '{node.graph.name}'")
        node.graph = self
        for sub in node.subgraphs():
            sub.parent = node
            self._holders[node] = None
        node._prev, node._next = prev, nxt
        if prev is None:
            self._first = node
        else:
            prev._next = node
        if nxt is None:
            self._last = node
        else:
            nxt._prev = node
        self._count += 1
        return node

    def _check_member(self, node: Node) -> None:
        if node.graph is not self:
            raise MdocError(f"{node.op} node '{node.name}' is not in graph '{self.name}'")

    # -- editing -----------------------------------------------------------
    def erase(self, node: Node) -> None:
        """Remove a node whose results are unused; refuses, naming the users, otherwise."""
        self._check_member(node)
        for out in node.outputs:
            users = [u for u, _ in out._uses]
            if users or any(o is out for o in self.outputs):
                names = ", ".join(f"{u.op} '{u.name}'" for u in users) or "the graph's outputs"
                raise MdocError(f"cannot erase {node.op} node '{node.name}': result %{out.name} is used by {names}")
        node.drop_inputs()
        self._unlink(node)

    def _unlink(self, node: Node) -> None:
        prev, nxt = node._prev, node._next
        if prev is None:
            self._first = nxt
        else:
            prev._next = nxt
        if nxt is None:
            self._last = prev
        else:
            nxt._prev = prev
        node._prev = node._next = None
        node.graph = None
        self._holders.pop(node, None)
        self._count -= 1

    def move_before(self, anchor: Node, node: Node) -> None:
        self._check_member(node)
        self._unlink(node)
        self.insert_before(anchor, node)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every operand, this graph's outputs and nested bodies' outputs at `new` instead of `old`.

        When `old` is an output of this graph, `new` takes its slot and its name, so
        the exported model keeps the output names its users rely on. A body that
        returns an outer value directly (implicit capture) is not a use; bodies are
        reached through the nodes that hold them, which each graph tracks.
        """
        if old is new:
            return
        for node, i in old.uses():
            node.set_input(i, new)
        self._replace_in_bodies(old, new)
        for i, out in enumerate(self.outputs):
            if out is old:
                self.outputs[i] = new
                if not new.is_graph_input and not any(o is new for j, o in enumerate(self.outputs) if j != i):
                    new.name = old.name

    def _replace_in_bodies(self, old: Value, new: Value) -> None:
        for holder in self._holders:
            for body in holder.subgraphs():
                body.outputs = [new if o is old else o for o in body.outputs]
                body._replace_in_bodies(old, new)

    def replace_node(self, node: Node, new_values: Sequence[Value]) -> None:
        """Replace each result of `node` by the matching new value, then erase `node`."""
        if len(new_values) != len(node.outputs):
            raise MdocError(f"{node.op} node '{node.name}' has {len(node.outputs)} results, "
                            f"but {len(new_values)} replacements were given")
        for old, new in zip(node.outputs, new_values):
            self.replace_all_uses(old, new)
        self.erase(node)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self)} nodes>"


class Model:
    """A top-level graph with what ONNX keeps beside it: opsets, IR version, producer, metadata."""

    def __init__(self, graph: Graph, opset_imports: dict[str, int] | None = None, ir_version: int = 8,
                 producer_name: str = "mdoc", producer_version: str = "", metadata: dict[str, str] | None = None):
        self.graph = graph
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 17})
        self.ir_version = ir_version
        self.producer_name = producer_name
        self.producer_version = producer_version
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def opset(self) -> int:
        """The version of the default ONNX domain."""
        return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 1))

    def opset_of(self, op: str) -> int:
        domain = split_op(op)[0]
        return self.opset_imports.get(domain, self.opset_imports.get("ai.onnx", 1) if domain == "" else 1)

    def __repr__(self) -> str:
        return f"<Model opset {self.opset}: {self.graph!r}>"


def iter_values(graph: Graph) -> Iterable[Value]:
    """Every value defined in `graph` itself: its inputs, then node results in order."""
    yield from graph.inputs
    for node in graph:
        yield from node.outputs
