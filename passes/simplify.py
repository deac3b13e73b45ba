"""simplify: remove operations that provably do nothing, and collapse chains that undo each other.

Each rule fires only when the IR's types prove the result equals an existing
value bit for bit (up to the sign of a zero for `x + 0`): `x * 1` must not
broadcast `x` to a larger shape or change its element type, a Reshape must
reproduce `x`'s own dims, a Slice must keep every element of every axis it
names. The rules:

    x*1, 1*x, x+0, 0+x, x-0, x/1, x^1 -> x         Identity(x) -> x
    Transpose(x, identity perm) -> x                Transpose(Transpose(x, p), q) -> Transpose(x, p∘q)
    Reshape(Reshape(x, s), t) -> Reshape(x, t)      Reshape(x, s) -> x    when s reproduces x's dims
    Reshape(x, Concat(Shape(x)[0], 17)) -> Reshape(x, [0, 17])   (a computed target made constant)
    Squeeze(Unsqueeze(x, a), a) -> x                Unsqueeze(Squeeze(x, a), a) -> x
    Unsqueeze(Unsqueeze(x, a), b), Squeeze(Squeeze(x, a), b) -> one Unsqueeze/Squeeze with both axes
    Dropout(x) -> x   in inference, or with ratio 0, when its mask is unused
    Cast(x, to=dtype of x) -> x                     Pad(x, all-zero pads) -> x
    Expand(x, s) -> x   when s broadcasts to x's own shape
    Concat(x), Sum(x), Max(x), Min(x), Mean(x) -> x
    Slice(x, ...) -> x  when every sliced axis keeps everything
    Unsqueeze/Squeeze/Reshape/Flatten/Expand/Tile/Transpose(ConstantOfShape(s, v)) -> ConstantOfShape(s', v)

The pass runs its rules to a fixpoint, in nested bodies too, and erases the
nodes a rewrite leaves without readers (so a collapsed chain disappears).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.types import DType, TensorType

from ._util import dims_content, graphs, is_live, keeps_output_name, output_refs, replace_value

# An end at or past this is "to the end of the axis" whatever the axis' size (exporters write INT_MAX or INT64_MAX).
_TO_END = 2**31 - 1


@register_pass("simplify")
@dataclass(frozen=True)
class Simplify(GraphPass):
    """Remove no-op arithmetic, identities, cancelling Transpose/Reshape/Squeeze chains, and empty Pad/Slice/Expand."""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        s = _Simplifier(ctx, output_refs(graph))
        changed = False
        while True:
            round_changed = False
            for g in list(graphs(graph)):
                round_changed |= s.graph(g)
            if not round_changed:
                return changed
            changed = True


class _Simplifier:
    def __init__(self, ctx: PassContext, refs: set[int]):
        self.ctx = ctx
        self.refs = refs

    def graph(self, g: Graph) -> bool:
        changed = False
        for node in g.nodes():
            if node.graph is not g:
                continue  # erased by an earlier rewrite in this sweep
            rule = RULES.get(node.op)
            if rule is None or not any(self.used(o) for o in node.outputs):
                continue  # dead nodes are dce's business
            result = rule(node, self)
            if result is None or result is False:
                continue
            if result is True:  # rewritten in place
                changed = True
                continue
            out = node.outputs[0]
            if not keeps_output_name(g, out, result):
                # `out` is a model output that cannot take `result`'s place by name: one Identity keeps it.
                if node.op == "onnx.Identity":
                    continue
                result = g.add("onnx.Identity", [result], outputs=[out.type], name=node.name, before=node,
                               output_names=[out.name]).output
            replace_value(g, out, result, self.refs)
            self.erase_dead(node)
            changed = True
        return changed

    def erase_dead(self, node: Node) -> None:
        """Erase `node` if nothing reads it, then its producers that this leaves unread."""
        g = node.graph
        if g is None or any(is_live(o, self.refs) for o in node.outputs):
            return
        producers = [v.producer() for v in node.inputs if v is not None]
        g.erase(node)
        for p in producers:
            if p is not None and p.graph is g:
                self.erase_dead(p)

    def opset(self, node: Node) -> int:
        return self.ctx.model.opset_of(node.op)

    def used(self, v: Value) -> bool:
        return is_live(v, self.refs)


Rule = Callable[[Node, _Simplifier], "Value | bool | None"]
RULES: dict[str, Rule] = {}


def rule(*ops: str):
    def wrap(fn: Rule) -> Rule:
        for op in ops:
            RULES[f"onnx.{op}"] = fn
        return fn
    return wrap


# -- type helpers -------------------------------------------------------------------
def _tensor(v: Value | None) -> TensorType | None:
    return v.type if v is not None and isinstance(v.type, TensorType) else None


def _ranked(v: Value | None) -> TensorType | None:
    t = _tensor(v)
    return t if t is not None and t.shape is not None else None


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.const_value


def _ints(v: Value | None) -> list[int] | None:
    a = _const(v)
    return None if a is None or a.dtype.kind not in "iu" else [int(x) for x in a.reshape(-1)]


def _broadcasts_into(x: TensorType, shape: tuple) -> bool:
    """Broadcasting `x` with a tensor of `shape` gives `x`'s own shape."""
    if len(shape) > len(x.shape):
        return False
    for d, c in zip(reversed(x.shape), reversed(shape)):
        if c != 1 and not (isinstance(d, int) and d == c):
            return False
    return True


def _neutral_operand(x: Value, c: Value, neutral: int) -> bool:
    """`c` is a constant filled with `neutral`, of `x`'s element type, that broadcasts into `x`'s shape."""
    a, t = _const(c), _ranked(x)
    if a is None or t is None or a.dtype.kind not in "fiub" or not np.all(a == neutral):
        return False
    try:
        if DType.from_numpy(a.dtype) is not t.dtype:
            return False
    except (ValueError, TypeError, KeyError):
        return False
    return _broadcasts_into(t, a.shape)


def _axes(node: Node, s: _Simplifier) -> list[int] | None:
    """Squeeze/Unsqueeze axes, from the attribute (before opset 13) or a constant operand."""
    if s.opset(node) >= 13:
        return [] if node.input(1) is None else _ints(node.input(1))
    axes = node.attrs.get("axes")
    return None if axes is None else list(axes)


def _norm(axes: list[int], rank: int) -> set[int] | None:
    if any(not -rank <= a < rank for a in axes):
        return None
    out = {a % rank for a in axes}
    return out if len(out) == len(axes) else None


# -- arithmetic identities -----------------------------------------------------------
@rule("Add")
def _add(node, s):
    a, b = node.inputs[0], node.inputs[1]
    if _neutral_operand(a, b, 0):
        return a
    if _neutral_operand(b, a, 0):
        return b
    return None


@rule("Sub")
def _sub(node, s):
    return node.inputs[0] if _neutral_operand(node.inputs[0], node.inputs[1], 0) else None


@rule("Mul")
def _mul(node, s):
    a, b = node.inputs[0], node.inputs[1]
    if _neutral_operand(a, b, 1):
        return a
    if _neutral_operand(b, a, 1):
        return b
    return None


@rule("Div")
def _div(node, s):
    return node.inputs[0] if _neutral_operand(node.inputs[0], node.inputs[1], 1) else None


@rule("Pow")
def _pow(node, s):
    x, e = node.inputs[0], node.inputs[1]
    a, t = _const(e), _ranked(x)
    if a is None or t is None or a.dtype.kind not in "fiu" or not np.all(a == 1):
        return None
    return x if _broadcasts_into(t, a.shape) else None


# -- identities ------------------------------------------------------------------------
@rule("Identity")
def _identity(node, s):
    return node.inputs[0]


@rule("Concat", "Sum", "Max", "Min", "Mean")
def _single(node, s):
    present = [v for v in node.inputs if v is not None]
    return present[0] if len(present) == 1 and len(node.inputs) == 1 else None


@rule("Cast")
def _cast(node, s):
    t = _tensor(node.inputs[0])
    return node.inputs[0] if t is not None and t.dtype.value == node.attrs.get("to") else None


@rule("CastLike")
def _cast_like(node, s):
    a, b = _tensor(node.inputs[0]), _tensor(node.inputs[1])
    return node.inputs[0] if a is not None and b is not None and a.dtype is b.dtype else None


@rule("Dropout")
def _dropout(node, s):
    if len(node.outputs) > 1 and s.used(node.outputs[1]):
        return None
    opset = s.opset(node)
    if opset >= 12:
        ratio = _const(node.input(1))
        zero = ratio is not None and np.all(ratio == 0)
        mode = node.input(2)
        inference = mode is None or (_const(mode) is not None and not np.any(_const(mode)))
        if not (inference or zero):
            return None
    return node.inputs[0]


@rule("Pad")
def _pad(node, s):
    pads = _ints(node.input(1)) if s.opset(node) >= 11 else list(node.attrs.get("pads", ()))
    return node.inputs[0] if pads is not None and not any(pads) else None


def _expand(node, s):
    shape, t = _ints(node.input(1)), _ranked(node.inputs[0])
    if shape is None or t is None:
        return None
    return node.inputs[0] if _broadcasts_into(t, tuple(shape)) else None


# -- layout chains -----------------------------------------------------------------------
def _perm(node: Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return list(perm)
    t = _ranked(node.inputs[0])
    return None if t is None else list(reversed(range(len(t.shape))))


def _transpose(node, s):
    perm = _perm(node)
    if perm is None:
        return None
    if perm == list(range(len(perm))):
        return node.inputs[0]
    inner = node.inputs[0].producer()
    if inner is None or inner.op != "onnx.Transpose":
        return None
    first = _perm(inner)
    if first is None or len(first) != len(perm):
        return None
    composed = [first[i] for i in perm]
    x = inner.inputs[0]
    if composed == list(range(len(composed))):
        return x
    if sum(1 for _ in inner.outputs[0].uses()) != 1 or id(inner.outputs[0]) in s.refs:
        return None  # the inner Transpose stays for its other readers: merging would not remove a node
    node.attrs["perm"] = tuple(composed)
    node.set_input(0, x)
    s.erase_dead(inner)
    return True


_LAYOUT = ("Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Tile", "Transpose")


def _splat_layout(node: Node, s: _Simplifier) -> bool | None:
    """Layout(ConstantOfShape(s, v)) -> ConstantOfShape(result's shape, v): a filled tensor stays a fill.

    Only when the fill has no other reader (so a node goes) and the result's shape is static.
    """
    fill, t = node.inputs[0].producer(), _tensor(node.outputs[0])
    if fill is None or fill.op != "onnx.ConstantOfShape" or _ints(fill.input(0)) is None:
        return None
    if t is None or not t.is_static or not _single_reader(fill, s):
        return None
    g = node.graph
    shape = g.constant(np.array(t.shape, dtype=np.int64), before=node)
    new = g.add("onnx.ConstantOfShape", [shape], dict(fill.attrs), outputs=[t], name=node.name, before=node,
                output_names=[node.outputs[0].name])
    return new.output


@rule(*_LAYOUT)
def _layout(node, s):
    result = _splat_layout(node, s)
    if result is not None:
        return result
    op = node.op_type
    if op == "Reshape":
        return _reshape(node, s)
    if op == "Squeeze":
        return _squeeze(node, s)
    if op == "Unsqueeze":
        return _unsqueeze(node, s)
    if op == "Expand":
        return _expand(node, s)
    if op == "Transpose":
        return _transpose(node, s)
    return None


def _reshape(node, s):
    x, target = node.inputs[0], _ints(node.input(1))
    allowzero = node.attrs.get("allowzero", 0)
    if target is None and not allowzero:
        return _constant_target(node, s)
    inner = x.producer()
    if inner is not None and inner.op == "onnx.Reshape" and target is not None and (allowzero or 0 not in target):
        node.set_input(0, inner.inputs[0])  # t never reads the inner result's dims: skip the inner Reshape
        s.erase_dead(inner)
        return True
    t = _ranked(x)
    if t is None or target is None or len(target) != len(t.shape):
        return None
    wild = 0
    for d, want in zip(t.shape, target):
        if want == 0 and not allowzero:
            continue
        if want == -1:
            wild += 1
            continue
        if not (isinstance(d, int) and d == want):
            return None
    return x if wild <= 1 else None


def _constant_target(node: Node, s: _Simplifier) -> bool | None:
    """Reshape(x, Concat(Shape(x)[0], 17, 32)) -> Reshape(x, [0, 17, 32]): a computed target as a constant.

    A target dim equal to x's dim at the same place (same symbol) becomes 0, which
    copies it; one other symbolic dim may become -1 when every other entry is a
    positive int (so -1 is determined even for empty tensors).
    """
    content, t = dims_content(node.inputs[1]), _ranked(node.inputs[0])
    if content is None or t is None or len(content[0]) != 1:
        return None
    target = []
    for i, d in enumerate(content[1]):
        if isinstance(d, int):
            target.append(d)
        elif i < len(t.shape) and t.shape[i] == d:
            target.append(0)
        else:
            target.append(None)
    if target.count(None) > 1 or 0 in [d for d in content[1] if isinstance(d, int)]:
        return None
    if None in target:
        if not all(d is None or (isinstance(d, int) and d > 0) for d in target):
            return None
        target[target.index(None)] = -1
    old = node.inputs[1]
    node.set_input(1, node.graph.constant(np.array(target, dtype=np.int64), before=node))
    if old.producer() is not None:
        s.erase_dead(old.producer())
    return True


def _squeeze(node, s):
    inner = node.inputs[0].producer()
    if inner is None or inner.op not in ("onnx.Unsqueeze", "onnx.Squeeze"):
        return None
    x, t = inner.inputs[0], _ranked(inner.inputs[0])
    a1, a2 = _axes(inner, s), _axes(node, s)
    if t is None or not a1 or not a2:
        return None
    r = len(t.shape)
    if inner.op == "onnx.Unsqueeze":
        n1, n2 = _norm(a1, r + len(a1)), _norm(a2, r + len(a1))
        return x if n1 is not None and n1 == n2 else None
    # Squeeze(Squeeze(x, a1), a2) -> Squeeze(x, a1 + a2 mapped back to x's axes)
    n1 = _norm(a1, r)
    n2 = _norm(a2, r - len(a1)) if n1 is not None else None
    if n2 is None or not _single_reader(inner, s):
        return None
    kept = [i for i in range(r) if i not in n1]
    return _set_axes(node, s, x, sorted(n1 | {kept[j] for j in n2}), inner)


def _unsqueeze(node, s):
    inner = node.inputs[0].producer()
    if inner is None or inner.op not in ("onnx.Unsqueeze", "onnx.Squeeze"):
        return None
    x, t = inner.inputs[0], _ranked(inner.inputs[0])
    if t is None:
        return None
    a1, a2 = _axes(inner, s), _axes(node, s)
    if a1 is None or a2 is None:
        return None
    rank = len(t.shape)
    if inner.op == "onnx.Unsqueeze":
        # Unsqueeze(Unsqueeze(x, a1), a2) -> Unsqueeze(x, a1 moved past a2's new dims, plus a2)
        if not a1 or not a2 or not _single_reader(inner, s):
            return None
        n1, n2 = _norm(a1, rank + len(a1)), _norm(a2, rank + len(a1) + len(a2))
        if n1 is None or n2 is None:
            return None
        old = [i for i in range(rank + len(a1) + len(a2)) if i not in n2]  # where the inner dims land
        return _set_axes(node, s, x, sorted(n2 | {old[j] for j in n1}), inner)
    if not a1:  # Squeeze without axes drops every 1: known only when every dim is known
        if not t.is_static:
            return None
        a1 = [i for i, d in enumerate(t.shape) if d == 1]
    n1, n2 = _norm(a1, rank), _norm(a2, rank)
    if n1 is None or n1 != n2 or not n1 or len(a2) != len(a1):
        return None
    return x


def _single_reader(node: Node, s: _Simplifier) -> bool:
    """Only one operand reads `node`'s result, so rewriting that reader makes `node` dead."""
    out = node.outputs[0]
    return len(out.uses()) == 1 and id(out) not in s.refs


def _set_axes(node: Node, s: _Simplifier, x: Value, axes: list[int], inner: Node) -> bool:
    """Point a Squeeze/Unsqueeze at `x` with new `axes` (attribute or constant operand, as the opset has it)."""
    node.set_input(0, x)
    if s.opset(node) >= 13:
        old = node.input(1)
        node.set_input(1, node.graph.constant(np.array(axes, dtype=np.int64), before=node))
        if old is not None and old.producer() is not None:
            s.erase_dead(old.producer())
    else:
        node.attrs["axes"] = tuple(axes)
    s.erase_dead(inner)
    return True


@rule("Slice")
def _slice(node, s):
    x, t = node.inputs[0], _ranked(node.inputs[0])
    if t is None:
        return None
    rank = len(t.shape)
    if s.opset(node) >= 10:
        starts, ends = _ints(node.input(1)), _ints(node.input(2))
        axes = _ints(node.input(3)) if node.input(3) is not None else None
        steps = _ints(node.input(4)) if node.input(4) is not None else None
        if starts is None or ends is None or (node.input(3) is not None and axes is None) or \
                (node.input(4) is not None and steps is None):
            return None
    else:
        starts, ends = list(node.attrs.get("starts", ())), list(node.attrs.get("ends", ()))
        axes = list(node.attrs["axes"]) if "axes" in node.attrs else None
        steps = None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1 or not -rank <= axis < rank:
            return None
        d = t.shape[axis % rank]
        whole_start = start == 0 or (isinstance(d, int) and start <= -d)
        whole_end = end >= _TO_END or (isinstance(d, int) and end >= d)
        if not (whole_start and whole_end):
            return None
    return x
