"""Matching a compiled pattern at a graph node, and `Match`, what `check` and `rewrite` read.

The matcher walks the pattern from its root through operands, top down, with
backtracking (for commutative operand orders and variables bound twice). When
it fails it keeps the failure that got furthest (most pattern nodes matched),
worded for a person: that is what `explain` and `--trace-rewrites` show.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .errors import MdocError
from .ir import Graph, Model, Node, Value
from .ops import is_onnx_domain, onnx_schema
from .rewrite_pattern import ConstPattern, OptionalOperand, Pattern, PatternNode, PatternValue, Var, short_text

_MISSING = object()


def describe(node: Node) -> str:
    """A node as messages name it: `'conv1' (onnx.Conv)`, or by its first result when unnamed."""
    if node.name:
        return f"'{node.name}' ({node.op})"
    if node.outputs and node.outputs[0].name:
        return f"%{node.outputs[0].name} ({node.op})"
    return f"an unnamed {node.op}"


def value_text(v: Value) -> str:
    return f"%{v.name}" if v.name else "an unnamed value"


# -- attributes ----------------------------------------------------------------------
def attr_default(node: Node, key: str, model: Model | None) -> Any:
    """The ONNX default of attribute `key` of `node` (at the model's opset), or _MISSING."""
    domain, op_type = node.domain, node.op_type
    if not is_onnx_domain(domain):
        return _MISSING
    opset = model.opset_of(node.op) if model is not None else onnx.defs.onnx_opset_version()
    schema = onnx_schema(op_type, domain, opset)
    spec = schema.attributes.get(key) if schema is not None else None
    if spec is None or spec.default_value.type == onnx.AttributeProto.UNDEFINED:
        return _MISSING
    return normalize_attr(helper.get_attribute_value(spec.default_value))


def normalize_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list | tuple):
        return tuple(normalize_attr(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def attr_equal(have: Any, want: Any) -> bool:
    have, want = normalize_attr(have), normalize_attr(want)
    if isinstance(have, np.ndarray) or isinstance(want, np.ndarray):
        return bool(np.array_equal(np.asarray(have), np.asarray(want)))
    return have == want


# -- the match -----------------------------------------------------------------------
class Match:
    """One place where a rule's pattern matched; `check` and `rewrite` receive it as `m`.

    - `m["x"]`: the Value bound to pattern variable `x` (or to a named constant
      pattern); None for an omitted `op.optional(x)`.
    - `m.node("conv")`: the graph node matched by the pattern op named `_name="conv"`.
    - `m.attr("bn", "epsilon")`: an attribute of a named node, falling back to its
      ONNX default, then to `default` when given.
    - `m.attrs("conv")`: a copy of a named node's attributes, to pass on: `**m.attrs("conv")`.
    - `m.const("w")`: the numpy array of a bound value when it is a constant, else None.
    - `m.all_constant("w", "b")`: None when all are constants, else a reason (for `check`).
    - `m.has_single_use("conv")`: the node's (or variable's) results have exactly one use.
    - `m.root`, `m.graph`, `m.nodes`, `m.model`, `m.rule`.
    """

    def __init__(self, rule: str, pattern: Pattern, root: Node, bindings: dict[str, Value | None],
                 nodes: dict[int, Node], model: Model | None, outputs: OutputIndex | None = None):
        self.rule = rule
        self.pattern = pattern
        self.root = root
        self.model = model
        self._bindings = bindings
        self._nodes = nodes
        self._outputs = outputs

    @property
    def graph(self) -> Graph:
        return self.root.graph

    @cached_property
    def nodes(self) -> list[Node]:
        """The matched graph nodes, operands before users (the root last)."""
        seen: dict[int, Node] = {}
        for pn in self.pattern.nodes:
            node = self._nodes[pn.index]
            seen.setdefault(id(node), node)
        return list(seen.values())

    @property
    def outputs(self) -> list[Value]:
        """The matched values of what the pattern returns, which the rewrite replaces."""
        return [self._nodes[pv.node.index].outputs[pv.index] for pv in self.pattern.outputs]

    def is_kept(self, node: Node, keep_shared: bool) -> bool:
        return keep_shared or any(pn.keep for pn in self.pattern.nodes if self._nodes[pn.index] is node)

    def __getitem__(self, name: str) -> Value | None:
        if name in self._bindings:
            return self._bindings[name]
        if name in self.pattern.node_names:
            raise MdocError(f"rule '{self.rule}': '{name}' names a node; use m.node('{name}') "
                            f"(or m.node('{name}').output for its result)")
        raise MdocError(f"rule '{self.rule}': the pattern has no variable '{name}' "
                        f"(variables: {', '.join(self._bindings) or 'none'})")

    def __contains__(self, name: str) -> bool:
        return name in self._bindings or name in self.pattern.node_names

    def node(self, name: str) -> Node:
        pn = self.pattern.node_names.get(name)
        if pn is None:
            raise MdocError(f"rule '{self.rule}': the pattern names no node '{name}' "
                            f"(named nodes: {', '.join(self.pattern.node_names) or 'none'}; name one with _name=)")
        return self._nodes[pn.index]

    def attr(self, name: str, key: str, default: Any = _MISSING) -> Any:
        node = self.node(name)
        if key in node.attrs:
            return node.attrs[key]
        value = attr_default(node, key, self.model)
        if value is not _MISSING:
            return value
        if default is not _MISSING:
            return default
        raise MdocError(f"rule '{self.rule}': {describe(node)} has no attribute '{key}' and ONNX gives it "
                        "no default; pass one: m.attr(name, key, default)")

    def attrs(self, name: str) -> dict[str, Any]:
        return dict(self.node(name).attrs)

    def const(self, name: str) -> np.ndarray | None:
        v = self[name]
        return None if v is None else v.const_value

    def all_constant(self, *names: str) -> str | None:
        missing = [n for n in names if self.const(n) is None]
        if not missing:
            return None
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not constant"

    def has_single_use(self, name: str) -> bool:
        values = self.node(name).outputs if name in self.pattern.node_names else (self[name],)
        uses = sum(len(v.uses()) for v in values if v is not None)
        index = self._outputs or OutputIndex(self.root.graph)
        return uses == 1 and not any(v is not None and v in index for v in values)

    def __repr__(self) -> str:
        return f"<Match of rule '{self.rule}' at {describe(self.root)}>"


class OutputIndex:
    """Which values are graph outputs, of any graph from `top` down (bodies may output outer values).

    Graph outputs hold values without a use record, so "has no uses" is not "is
    dead". Built once per driver run and kept current by the driver, which is the
    only editor of the graph while it runs.
    """

    def __init__(self, top: Graph):
        self.values: set[Value] = set()
        self.add_graph(top)

    def add_graph(self, graph: Graph) -> None:
        self.values.update(graph.outputs)
        for node in graph.walk():
            for sub in node.subgraphs():
                self.values.update(sub.outputs)

    def replace(self, old: Value, new: Value) -> None:
        """After `graph.replace_all_uses(old, new)` (which also redirects nested bodies' outputs)."""
        if old in self.values:
            self.values.discard(old)
            self.values.add(new)

    def __contains__(self, v: Value) -> bool:
        return v in self.values


# -- the matcher ---------------------------------------------------------------------
@dataclass
class Failure:
    """Why a rule did not apply at `root`. Near misses sort by `key`: a complete structural match
    refused later (external use, check, cycle) first, then by how many pattern ops matched."""

    root: Node
    matched: int  # pattern ops matched before the failure
    total: int  # pattern ops in all
    steps: int  # finer progress: operands and bindings matched
    reason: str
    complete: bool = False  # the whole pattern matched; something after matching refused
    close: int = 0  # the failing step itself was nearly right (a constant of another value)

    @property
    def key(self) -> tuple[bool, int, int, int]:
        return (self.complete, self.matched, self.steps, self.close)

    def text(self) -> str:
        got = "pattern matched" if self.complete else f"{self.matched}/{self.total} pattern ops matched"
        return f"at {describe(self.root)}: {got}; {self.reason}"


class _State:
    __slots__ = ("binds", "nodes", "steps")

    def __init__(self, binds: dict, nodes: dict, steps: int):
        self.binds = binds
        self.nodes = nodes
        self.steps = steps

    def bind(self, name: str, value: Value | None) -> "_State":
        return _State({**self.binds, name: value}, self.nodes, self.steps + 1)

    def with_node(self, pn: PatternNode, node: Node) -> "_State":
        return _State(self.binds, {**self.nodes, pn.index: node}, self.steps + 1)


class Matcher:
    """Structural matching of one pattern at one root; records the furthest failure."""

    def __init__(self, pattern: Pattern, commute: bool, model: Model | None):
        self.pattern = pattern
        self.commute = commute
        self.model = model
        self.best: Failure | None = None
        self.root: Node | None = None

    def fail(self, st: _State, reason: str, stage: int = 0, close: int = 0) -> None:
        """Record a failure; `stage` > 0 means after a complete structural match (higher is later)."""
        f = Failure(self.root, len(st.nodes), len(self.pattern.nodes), st.steps + stage, reason, stage > 0, close)
        if self.best is None or f.key > self.best.key:
            self.best = f

    def matches(self, root: Node) -> Iterator[_State]:
        """Every structural match rooted at `root` (bindings and matched nodes), lazily."""
        self.root = root
        self.best = None
        yield from self._node(self.pattern.root, root, _State({}, {}, 0), None)

    # A `where` is (user node, operand index) for messages; None at the root.
    def _node(self, pn: PatternNode, node: Node, st: _State, where) -> Iterator[_State]:
        if pn.index in st.nodes:
            if st.nodes[pn.index] is node:
                yield st
            else:
                self.fail(st, f"{_where(where)} is {describe(node)}, but the pattern's {pn.label} "
                              f"already matched {describe(st.nodes[pn.index])}")
            return
        if node.op not in pn.ops:
            self.fail(st, f"{_where(where)} is {describe(node)}, the pattern wants {pn.label}")
            return
        if node.graph is not self.root.graph:
            self.fail(st, f"{_where(where)} is defined in an enclosing graph; patterns do not cross graph boundaries")
            return
        if len(node.outputs) < pn.n_outputs:
            self.fail(st, f"{describe(node)} has {len(node.outputs)} results, the pattern wants {pn.n_outputs}")
            return
        n, k = len(node.inputs), len(pn.inputs)
        least = k
        while least and isinstance(pn.inputs[least - 1], OptionalOperand):
            least -= 1
        if n < least or (n > k and not pn.allow_other_inputs):
            wants = f"{least} to {k}" if least != k else str(k)
            more = " or more" if pn.allow_other_inputs else ""
            self.fail(st, f"{describe(node)} has {n} operands, the pattern wants {wants}{more}")
            return
        for key, want in pn.attrs.items():
            have = node.attrs.get(key, _MISSING)
            if have is _MISSING:
                have = attr_default(node, key, self.model)
            if callable(want) and not isinstance(want, np.ndarray):
                ok = have is not _MISSING and bool(want(have))
                wanted = f"{key} to satisfy the pattern's predicate"
            else:
                ok = have is not _MISSING and attr_equal(have, want)
                wanted = f"{key}={short_text(normalize_attr(want))}"
            if not ok:
                has = f"no attribute {key}" if have is _MISSING else f"{key}={short_text(normalize_attr(have))}"
                self.fail(st, f"{describe(node)} has {has}, the pattern wants {wanted}")
                return
        st = st.with_node(pn, node)
        for order in pn.operand_orders(self.commute, n):
            yield from self._operands(pn, node, order, 0, st)

    def _operands(self, pn: PatternNode, node: Node, order, k: int, st: _State) -> Iterator[_State]:
        if k == len(pn.inputs):
            yield st
            return
        i = order[k]
        for st2 in self._value(pn.inputs[k], node.input(i), st, (node, i)):
            yield from self._operands(pn, node, order, k + 1, st2)

    def _value(self, item, value: Value | None, st: _State, where) -> Iterator[_State]:
        if item is None:
            if value is None:
                yield st
            else:
                self.fail(st, f"{_where(where)} is {value_text(value)}, the pattern wants it omitted")
            return
        if isinstance(item, OptionalOperand):
            yield from self._var(item.var.name, value, st, where, optional=True)
            return
        if isinstance(item, Var):
            yield from self._var(item.name, value, st, where, optional=False)
            return
        if value is None:
            want = item.describe() if isinstance(item, ConstPattern) else item.node.label
            self.fail(st, f"{_where(where)} is omitted, the pattern wants {want}")
            return
        if isinstance(item, ConstPattern):
            array = value.const_value
            if array is None:
                self.fail(st, f"{_where(where)}, {value_text(value)}, is not a constant; the pattern wants "
                              f"{item.describe()}")
            elif not item.accepts(array):
                self.fail(st, f"{_where(where)} is the constant {short_text(array)}, the pattern wants {item.describe()}",
                          close=1)
            elif item.name:
                yield from self._var(item.name, value, st, where, optional=False)
            else:
                yield st
            return
        assert isinstance(item, PatternValue)
        producer = value.producer()
        if producer is None:
            self.fail(st, f"{_where(where)} is graph input {value_text(value)}, the pattern wants {item.node.label}")
            return
        if producer.op in item.node.ops and value.index != item.index:
            self.fail(st, f"{_where(where)} is result {value.index} of {describe(producer)}, "
                          f"the pattern wants result {item.index}")
            return
        yield from self._node(item.node, producer, st, where)

    def _var(self, name: str, value: Value | None, st: _State, where, optional: bool) -> Iterator[_State]:
        if value is None and not optional:
            self.fail(st, f"{_where(where)} is omitted, but variable '{name}' needs a value")
            return
        if name in st.binds:
            bound = st.binds[name]
            if bound is value:
                yield st
            else:
                had = "omitted" if bound is None else value_text(bound)
                now = "omitted" if value is None else value_text(value)
                self.fail(st, f"{_where(where)} is {now}, but variable '{name}' is already {had}")
            return
        yield st.bind(name, value)


def _where(where) -> str:
    if where is None:
        return "the node"
    node, i = where
    return f"operand {i} of {describe(node)}"
