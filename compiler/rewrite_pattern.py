"""The op builder that rewrite rules are written with, in its two modes, and compiled patterns.

A rule's `pattern(self, op, x, w, ...)` and `rewrite(self, op, m)` read like
graph construction: `op.Conv(x, w, b, strides=(2, 2))`. In a pattern, `op` is a
`PatternBuilder` and the call describes what to look for; in a rewrite, `op` is
a `RewriteBuilder` and the call describes a node to create. Either way:

- `op.Relu(x)` is the ONNX op `onnx.Relu`; `op.mdoc.conv2d_relu(...)` is
  `mdoc.conv2d_relu`; `op.domain("com.microsoft").FusedConv(...)` is
  `com.microsoft.FusedConv`; `op.call("onnx.Relu", x)` takes the full op name.
  In a pattern, `op.call(("onnx.Conv", "mdoc.conv"), x, w)` matches a node of
  any of the ops named (one rule for a family: every activation, a product
  before or after an earlier fusion); `m.node(name).op` says which.
- keyword arguments are attributes; keywords that begin with `_` steer the
  builder itself (`_name`, `_outputs`, ...; each mode lists its own).
- `op.Split(x, _outputs=2)` returns a tuple of results; index it to pick one.

In a pattern, operands are the pattern's variables (any value; a variable used
twice must see the same value both times), results of other pattern ops,
`op.constant()` (any constant) or `op.constant(1.0)` / a plain number (a
constant equal to it), `op.optional(b)` (the operand may be omitted), or None (the
operand must be omitted). Attribute keywords are constraints: a value
(`to=1`; an absent attribute is compared through its ONNX default) or a
predicate (`perm=lambda p: len(p) == 4`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any, Callable

import numpy as np

from .errors import MdocError
from .ir import CONSTANT, Value, op_name

# ONNX ops whose result does not depend on the order of their operands.
COMMUTATIVE = frozenset(f"onnx.{t}" for t in ("Add", "Mul", "And", "Or", "Xor", "Max", "Min", "Sum", "Equal"))


# -- pattern objects -----------------------------------------------------------------
class Var:
    """A pattern variable: one parameter of `pattern()`; matches any value."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<Var {self.name}>"


@dataclass(frozen=True, eq=False)
class OptionalOperand:
    """`op.optional(b)`: the operand may be omitted (then `m["b"]` is None) or be any value."""

    var: Var


@dataclass(frozen=True, eq=False)
class ConstPattern:
    """`op.constant()` (any constant) or `op.constant(value)` (a constant equal to value)."""

    value: np.ndarray | None = None
    name: str | None = None  # binds the matched value: m[name]

    def accepts(self, array: np.ndarray) -> bool:
        if self.value is None:
            return True
        want = self.value
        try:
            if want.shape == ():
                return array.size > 0 and bool(np.all(array == want))
            return array.shape == want.shape and bool(np.array_equal(array, want))
        except (TypeError, ValueError):
            return False

    def describe(self) -> str:
        return "a constant" if self.value is None else f"a constant equal to {short_text(self.value)}"


@dataclass(eq=False)
class PatternNode:
    """One op of a pattern: what a graph node must look like to match it."""

    op: str  # the op, or the ops joined by "|" (`ops`)
    inputs: tuple  # of Var | OptionalOperand | ConstPattern | PatternValue | None
    attrs: dict[str, Any]  # attribute name -> required value or predicate
    name: str | None  # `_name`: how check/rewrite reach the matched node
    n_outputs: int
    commute: bool | None  # None: the rule's default
    allow_other_inputs: bool
    keep: bool
    index: int  # creation order, unique within one pattern

    @property
    def ops(self) -> tuple[str, ...]:
        """The ops a matching node may have."""
        return tuple(self.op.split("|"))

    @property
    def label(self) -> str:
        """How messages refer to this pattern node: `onnx.Conv 'conv'` or plain `onnx.Conv`."""
        return f"{self.op} '{self.name}'" if self.name else self.op

    def operand_orders(self, commute_default: bool, n: int) -> list[tuple[int, ...]]:
        """The operand orders to try: identity, or every permutation for a commutative node."""
        k = len(self.inputs)
        commute = self.commute if self.commute is not None else commute_default
        if commute and all(o in COMMUTATIVE for o in self.ops) and n == k and k > 1:
            return list(permutations(range(k)))
        return [tuple(range(k))]


@dataclass(frozen=True, eq=False)
class PatternValue:
    """Result `index` of a pattern node."""

    node: PatternNode
    index: int = 0

    def __iter__(self):
        raise MdocError(f"pattern op {self.node.op} has one result; give `_outputs=N` to unpack N results")


@dataclass(eq=False)
class Pattern:
    """A compiled pattern: the DAG of pattern nodes under its root, ready for the matcher."""

    root: PatternNode
    outputs: tuple[PatternValue, ...]  # what the rewrite replaces, in order
    nodes: list[PatternNode]  # every node, operands before users, root last
    var_names: tuple[str, ...]
    node_names: dict[str, PatternNode]
    const_names: tuple[str, ...]
    depth: int  # longest chain of pattern nodes, root included


# -- the builders -------------------------------------------------------------------
class _Domain:
    """`op.mdoc` / `op.domain("com.microsoft")`: attribute access names an op of that domain."""

    def __init__(self, builder: "_Builder", domain: str):
        self._builder = builder
        self._domain = domain

    def __getattr__(self, op_type: str):
        if op_type.startswith("__"):
            raise AttributeError(op_type)
        full = op_name(self._domain, op_type)
        return lambda *inputs, **kw: self._builder.call(full, *inputs, **kw)


class OpSpellingError(MdocError, AttributeError):
    """`op.relu`: not an op of the builder (an AttributeError too, so `hasattr` keeps working)."""


class _Builder:
    """What both modes share: op spelling by attribute access, domains, `call`."""

    mode = ""

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        if op_type == "mdoc":
            return _Domain(self, "mdoc")
        if not op_type[:1].isupper():
            raise OpSpellingError(f"op.{op_type}: ONNX op types are CamelCase (op.Relu); other domains are "
                                 f"spelled op.mdoc.{op_type} or op.domain('my.domain').{op_type}")
        full = op_name("", op_type)
        return lambda *inputs, **kw: self.call(full, *inputs, **kw)

    def domain(self, name: str) -> _Domain:
        """Ops of another domain: `op.domain("com.microsoft").FusedConv(...)`."""
        return _Domain(self, name)

    def call(self, op: str, *inputs, **kwargs):
        raise NotImplementedError


class PatternBuilder(_Builder):
    """`op` inside `pattern()`: each call records a pattern node and returns its result(s).

    Builder keywords: `_name="conv"` (name the matched node for `m.node`,
    `m.attr`, ...), `_outputs=N` (the node has at least N results; returns N
    pattern values), `_commute=True/False` (try both operand orders of a
    commutative op; the rule's `commute` flag is the default),
    `_allow_other_inputs=True` (operands past the pattern's are ignored), and
    `_keep=True` (the matched node may have users outside the match; it then
    stays in the graph).
    """

    mode = "pattern"
    _FLAGS = ("_name", "_outputs", "_commute", "_allow_other_inputs", "_keep")

    def __init__(self):
        self.created: list[PatternNode] = []

    def call(self, op: str | tuple[str, ...], *inputs, **kwargs):
        if isinstance(op, tuple | list):
            op = "|".join(op)
        flags = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("_")}
        unknown = sorted(set(flags) - set(self._FLAGS))
        if unknown:
            raise MdocError(f"pattern op {op}: unknown builder keyword {unknown[0]} "
                            f"(pattern keywords: {', '.join(self._FLAGS)})")
        operands = tuple(self._operand(op, i, v) for i, v in enumerate(inputs))
        n_out = flags.get("_outputs", 1)
        if not isinstance(n_out, int) or n_out < 1:
            raise MdocError(f"pattern op {op}: _outputs must be a positive int, got {n_out!r}")
        node = PatternNode(op, operands, dict(kwargs), flags.get("_name"), n_out, flags.get("_commute"),
                           bool(flags.get("_allow_other_inputs", False)), bool(flags.get("_keep", False)),
                           len(self.created))
        if node.commute and not all(o in COMMUTATIVE for o in node.ops):
            raise MdocError(f"pattern op {op}: _commute=True, but {op} is not commutative "
                            f"(commutative ops: {', '.join(sorted(t[5:] for t in COMMUTATIVE))})")
        if node.commute and (node.allow_other_inputs or any(isinstance(x, OptionalOperand) for x in operands)):
            raise MdocError(f"pattern op {op}: _commute cannot be combined with optional or other inputs")
        self.created.append(node)
        if n_out == 1:
            return PatternValue(node, 0)
        return tuple(PatternValue(node, i) for i in range(n_out))

    def constant(self, value: Any = None, *, _name: str | None = None) -> ConstPattern:
        """Any constant, or (given `value`) a constant equal to it; a scalar matches a constant whose every
        element equals it. `_name="k"` makes the matched value available as `m["k"]`."""
        return ConstPattern(None if value is None else np.asarray(value), _name)

    def optional(self, var: Var) -> OptionalOperand:
        """An operand that may be omitted: `op.Conv(x, w, op.optional(b))` matches with or without a bias."""
        if not isinstance(var, Var):
            raise MdocError("op.optional() takes a pattern variable (a parameter of pattern())")
        return OptionalOperand(var)

    @staticmethod
    def _operand(op: str, i: int, v: Any):
        if v is None or isinstance(v, (Var, OptionalOperand, ConstPattern, PatternValue)):
            return v
        if isinstance(v, tuple) and v and isinstance(v[0], PatternValue):
            raise MdocError(f"pattern op {op}: operand {i} is a tuple of {len(v)} results; pick one, e.g. [0]")
        if isinstance(v, (int, float, bool, np.ndarray, np.generic)):
            return ConstPattern(np.asarray(v))
        raise MdocError(f"pattern op {op}: operand {i} is a {type(v).__name__}; use a pattern variable, "
                        "another op's result, op.constant(...) or a number")


@dataclass(eq=False)
class NewNode:
    """A node that a rewrite asks for; the driver creates it when it splices the replacement in."""

    op: str
    inputs: tuple  # of Value | NewValue | None
    attrs: dict[str, Any]
    n_outputs: int
    name: str = ""
    outputs: tuple["NewValue", ...] = field(default=())


@dataclass(frozen=True, eq=False)
class NewValue:
    """Result `index` of a node the rewrite builds."""

    node: NewNode
    index: int = 0

    def __iter__(self):
        raise MdocError(f"{self.node.op} builds one result; give `_outputs=N` to unpack N results")


class RewriteBuilder(_Builder):
    """`op` inside `rewrite()`: each call records a new node (off-graph) and returns its result(s).

    Operands are values of the match (`m["x"]`, `m.node("conv").inputs[2]`),
    results of earlier calls, `op.constant(array)` or None (omitted). Builder
    keywords: `_name` (the node's name) and `_outputs=N` (N results, returned as a
    tuple). Nothing touches the graph until the driver splices the result in, so
    a rewrite may build and then decline by returning None.
    """

    mode = "rewrite"
    _FLAGS = ("_name", "_outputs")

    def __init__(self):
        self.created: list[NewNode] = []

    def call(self, op: str, *inputs, **kwargs):
        flags = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("_")}
        unknown = sorted(set(flags) - set(self._FLAGS))
        if unknown:
            raise MdocError(f"op {op}: unknown builder keyword {unknown[0]} in a rewrite "
                            f"(rewrite keywords: {', '.join(self._FLAGS)})")
        for i, v in enumerate(inputs):
            if v is not None and not isinstance(v, (Value, NewValue)):
                hint = ("pick one result, e.g. [0]" if isinstance(v, tuple) else
                        "wrap arrays in op.constant(np.array(..., dtype=...))")
                raise MdocError(f"op {op}: operand {i} is a {type(v).__name__}, not a value; {hint}")
        n_out = flags.get("_outputs", 1)
        node = NewNode(op, tuple(inputs), {k: _attr_value(v) for k, v in kwargs.items()}, n_out,
                       flags.get("_name", ""))
        node.outputs = tuple(NewValue(node, i) for i in range(n_out))
        self.created.append(node)
        return node.outputs[0] if n_out == 1 else node.outputs

    def constant(self, value: Any, dtype: Any = None, *, _name: str = "") -> NewValue:
        """A new constant. Give a numpy array, or a Python number/list together with `dtype`."""
        if dtype is None and not isinstance(value, (np.ndarray, np.generic)):
            raise MdocError(f"op.constant({short_text(value)}): give a numpy array, or a dtype "
                            "(op.constant(0.5, np.float32)), so the constant's type is not a guess")
        array = np.asarray(value, dtype=dtype)
        node = NewNode(CONSTANT, (), {"value": array}, 1, "")
        node.outputs = (NewValue(node, 0),)
        node.name = _name  # for a constant, `_name` is its value's name hint
        self.created.append(node)
        return node.outputs[0]


def _attr_value(v: Any) -> Any:
    """Attributes as the IR stores them: lists become tuples, numpy scalars Python numbers."""
    if isinstance(v, list | tuple):
        return tuple(_attr_value(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def short_text(v: Any) -> str:
    """A value as messages show it: short, on one line."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    text = np.array2string(v, threshold=6) if isinstance(v, np.ndarray) else repr(v)
    return " ".join(text.split())[:60]


# -- compiling a rule's pattern --------------------------------------------------------
def compile_pattern(rule_name: str, pattern_fn: Callable) -> Pattern:
    """Run `pattern_fn(op, *vars)` once with a PatternBuilder and check what it built.

    `pattern_fn` is a rule's bound `pattern` method; its parameters after `op`
    become the variables. Problems are MdocErrors that name the rule.
    """
    params = list(inspect.signature(pattern_fn).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise MdocError(f"rule '{rule_name}': pattern() must take the op builder first: pattern(self, op, x, ...)")
    var_params = params[1:]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in var_params):
        raise MdocError(f"rule '{rule_name}': pattern() variables must be plain named parameters")
    builder = PatternBuilder()
    variables = [Var(p.name) for p in var_params]
    try:
        result = pattern_fn(builder, *variables)
    except MdocError as e:
        raise MdocError(f"rule '{rule_name}': {e}") from None
    outputs = result if isinstance(result, tuple) else (result,)
    if not outputs or not all(isinstance(o, PatternValue) for o in outputs):
        got = type(result).__name__ if not isinstance(result, tuple) else "a tuple with a non-op item"
        raise MdocError(f"rule '{rule_name}': pattern() must return the result(s) of an op (op.X(...)), got {got}")
    root = outputs[0].node

    # The DAG under the root, operands before users.
    order: list[PatternNode] = []
    seen: set[int] = set()
    depth: dict[int, int] = {}

    def visit(n: PatternNode) -> int:
        if n.index in seen:
            return depth[n.index]
        seen.add(n.index)
        d = 0
        for x in n.inputs:
            if isinstance(x, PatternValue):
                d = max(d, visit(x.node))
        depth[n.index] = d + 1
        order.append(n)
        return d + 1

    visit(root)
    for o in outputs[1:]:
        if o.node.index not in seen:
            raise MdocError(f"rule '{rule_name}': returned value of {o.node.label} is not computed on the way "
                            f"to the first returned value ({root.label}); a pattern has one root")
    stray = [n for n in builder.created if n.index not in seen]
    if stray:
        raise MdocError(f"rule '{rule_name}': pattern op {stray[0].label} is not connected to what pattern() returns")

    used_vars: set[str] = set()
    consts: dict[int, ConstPattern] = {}  # named constant patterns, by identity (one may be used twice)
    for n in order:
        for x in n.inputs:
            if isinstance(x, Var):
                used_vars.add(x.name)
            elif isinstance(x, OptionalOperand):
                used_vars.add(x.var.name)
            elif isinstance(x, ConstPattern) and x.name:
                consts[id(x)] = x
    const_names = [c.name for c in consts.values()]
    var_names = tuple(v.name for v in variables)
    unused = [v for v in var_names if v not in used_vars]
    if unused:
        raise MdocError(f"rule '{rule_name}': variable '{unused[0]}' is never used in the pattern")

    names: dict[str, PatternNode] = {}
    taken = set(var_names)
    for n in order:
        if n.name is None:
            continue
        if n.name in names or n.name in taken:
            raise MdocError(f"rule '{rule_name}': name '{n.name}' is given twice in the pattern")
        names[n.name] = n
    for c in const_names:
        if c in names or c in taken:
            raise MdocError(f"rule '{rule_name}': name '{c}' is given twice in the pattern")
        taken.add(c)
    return Pattern(root, tuple(outputs), order, var_names, names, tuple(const_names),
                   max(depth.values()))
