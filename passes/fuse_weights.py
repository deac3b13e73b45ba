"""Weight folding that the fuse-* rule families share (not a pass: nothing here registers).

A fusion folds one op's constants into another op's weights: BatchNormalization
into the Conv before it, a per-channel Mul into a Conv's weights, an Add into its
bias. Three things are the same every time, so they live here:

- **Known operands.** An operand folds when its value is known before the model
  runs: an `onnx.Constant`, or a `ConstantOfShape` of a constant shape (a
  *splat*: one value repeated, which models such as the onnx package's light
  models use for every weight). `known(v)` returns a `Known` that holds the
  value compactly: a splat is one element with all dims 1, so folding a splat
  weight of 100 MB costs nothing.
- **Careful arithmetic.** Folds compute in float64 on those compact arrays
  (numpy broadcasting does the per-channel work) and cast the result back to
  the weight's dtype once. A result that is still one repeated value, and that
  came from a splat, stays a `ConstantOfShape`; anything else becomes a dense
  constant. Only floating-point weights fold.
- **Never a larger model.** A fold's growth is the bytes of the dense constants
  it creates minus the bytes of the constants only the replaced nodes read. The
  rule refuses (with the numbers) when the growth exceeds what is left of the
  pass's `max-bytes` budget for this run (0 by default, as -O2 and -O3 run
  them: a splat weight times a dense per-channel scale would materialize it,
  so that pair stays). Folds that free bytes add them to the budget.

A rule of a fuse-* family subclasses `FoldRule`: `plan(m)` returns a `Fold` (the
values to build) or a reason to refuse; `build(op, m, fold)` returns the
replacement. `FusePass` is the RewritePass base that gives every rule of a family
one shared budget and types the ConstantOfShape nodes the rules create.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mdoc.ir import Graph, Value
from mdoc.pass_manager import PassContext
from mdoc.rewrite import Match, RewritePass, Rule, apply_rules
from mdoc.types import DType, TensorType, UnknownType

SPLAT = "onnx.ConstantOfShape"


# -- known operands -------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Known:
    """An operand whose value is known: a constant, or a splat (`ConstantOfShape` of a constant shape)."""

    value: Value
    data: np.ndarray  # broadcastable to `shape`: the whole array, or for a splat one element with all dims 1
    shape: tuple[int, ...]
    splat: bool

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def f64(self) -> np.ndarray:
        return self.data.astype(np.float64)


def known(v: Value | None) -> Known | None:
    """`v` as a Known operand, or None when its value is not known before the model runs."""
    if v is None:
        return None
    array = v.const_value
    if array is not None:
        return Known(v, array, tuple(array.shape), False)
    p = v.producer()
    if p is None or p.op != SPLAT or len(p.outputs) != 1:
        return None
    dims = p.input(0).const_value if p.input(0) is not None else None
    if dims is None or dims.dtype.kind not in "iu" or dims.ndim != 1 or np.any(dims < 0):
        return None
    shape = tuple(int(d) for d in dims)
    fill = p.attrs.get("value")
    fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill)
    if fill.size != 1:
        return None
    return Known(v, fill.reshape((1,) * len(shape)), shape, True)


def known_all(m: Match, *names: str) -> dict[str, Known] | str:
    """The Known operands of `m` by name (an omitted optional operand is left out), or why one is not
    foldable: not known before the model runs, or not floating point."""
    out: dict[str, Known] = {}
    for name in names:
        v = m[name]
        if v is None:
            continue
        k = known(v)
        if k is None:
            return f"{name} is not constant (nor a ConstantOfShape of a constant shape)"
        if k.dtype.kind != "f":
            return f"{name} has element type {k.dtype}; only floating-point weights fold"
        out[name] = k
    return out


def channel_vector(k: Known, rank: int, channels: int, axis: int = 1) -> np.ndarray | str:
    """`k`, broadcast against a tensor of `rank` dims with `channels` channels on `axis`, as one value per
    channel: a float64 array of shape (channels,), or (1,) when it is the same for every channel.

    Refuses (a reason) when `k` varies along another axis, or would broadcast the tensor to a larger
    shape (more dims, or a channel dim that is not 1 or `channels`).
    """
    shape = k.shape
    if len(shape) > rank:
        return f"{_name(k)} has shape {list(shape)}, more dims than the {rank}-d tensor it scales"
    pos = axis - (rank - len(shape))  # the axis of k that lines up with the channels
    for i, d in enumerate(shape):
        if i != pos and d != 1:
            return f"{_name(k)} has shape {list(shape)}: it varies along an axis other than the channels"
    if pos >= 0 and shape[pos] not in (1, channels):
        return f"{_name(k)} has shape {list(shape)}, but the tensor has {channels} channels"
    return k.f64.reshape(-1)


def _name(k: Known) -> str:
    return f"%{k.value.name}" if k.value.name else "the constant"


def bn_affine(m: Match, bn: str, params: dict[str, Known], channels: int) -> tuple[np.ndarray, np.ndarray] | str:
    """BatchNormalization `bn` in inference form as y = a*x + d per channel: (a, d) in float64, each of
    shape (channels,) or (1,); or why it is not an inference-form BatchNormalization over `channels`."""
    node = m.node(bn)
    reason = inference_form(m, bn)
    if reason:
        return reason
    for name in ("scale", "bias", "mean", "var"):
        if params[name].shape != (channels,):
            return f"{name} of {node.op_type} has shape {list(params[name].shape)}, not [{channels}]"
    eps = float(m.attr(bn, "epsilon", 1e-5))
    a = params["scale"].f64 / np.sqrt(params["var"].f64 + eps)
    d = params["bias"].f64 - params["mean"].f64 * a
    return a, d


def inference_form(m: Match, bn: str) -> str | None:
    """None when BatchNormalization `bn` normalizes with its running statistics (one result, not training)."""
    node = m.node(bn)
    if len(node.outputs) != 1:
        return (f"{node.op_type} has {len(node.outputs)} results (training mode: it updates running "
                "statistics); only the one-result inference form folds")
    if m.attr(bn, "training_mode", 0):
        return f"{node.op_type} has training_mode=1 (batch statistics); only the inference form folds"
    opset = m.model.opset_of(node.op) if m.model is not None else 17
    if opset < 7 and not m.attr(bn, "is_test", 0):
        return f"{node.op_type} has is_test=0 (training) at opset {opset}; only the inference form folds"
    if not m.attr(bn, "spatial", 1):
        return f"{node.op_type} has spatial=0 (statistics per element, not per channel)"
    return None


def tensor_rank(v: Value | None) -> int | None:
    t = v.type if v is not None else None
    return t.rank if isinstance(t, TensorType) else None


# -- folded results ---------------------------------------------------------------------
@dataclass(eq=False)
class Folded:
    """A new weight: float64 `data` broadcastable to `shape`, to be stored as `dtype`.

    `splat_from` lists the splat operands it came from: when there are any and the
    result is still one repeated value, it is built as a ConstantOfShape; otherwise as a
    dense constant.
    """

    data: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    splat_from: tuple[Known, ...] = ()

    @property
    def is_splat(self) -> bool:
        return bool(self.splat_from) and self.data.size > 0 and bool(np.all(self.data == self.data.flat[0]))

    def nbytes(self) -> int:
        """Constant bytes this weight adds to the model. A splat adds its int64 shape, unless a splat it came
        from has the same shape: cse then merges the two shape constants."""
        if self.is_splat:
            return 0 if any(k.shape == self.shape for k in self.splat_from) else 8 * len(self.shape)
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def build(self, op) -> Any:
        """The new value, built with the rewrite's op builder."""
        if self.is_splat:
            fill = np.asarray([self.data.flat[0]]).astype(self.dtype)
            # A new shape constant, not the source's: a rewrite that reads only the match's own values
            # needs no cycle check from the driver (cse merges equal shape constants afterwards).
            return op.ConstantOfShape(op.constant(np.array(self.shape, dtype=np.int64)), value=fill)
        dense = np.broadcast_to(self.data, self.shape).astype(self.dtype)
        return op.constant(np.ascontiguousarray(dense))


def folded(data: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, *sources: Known | None) -> Folded:
    """A Folded result of `sources` (the Known operands it was computed from; None ones are skipped)."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim > len(shape) or np.broadcast_shapes(data.shape, shape) != tuple(shape):
        raise ValueError(f"folded data of shape {data.shape} does not broadcast to {shape}")
    data = data.reshape((1,) * (len(shape) - data.ndim) + data.shape)
    return Folded(data, tuple(shape), np.dtype(dtype), tuple(k for k in sources if k is not None and k.splat))


def sum_over(data: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """The sum over `axes` of `data` broadcast to `shape`, without materializing the broadcast."""
    data = data.reshape((1,) * (len(shape) - data.ndim) + data.shape)
    for ax in sorted(axes, reverse=True):
        if data.shape[ax] == 1:
            data = np.squeeze(data, ax) * shape[ax]
        else:
            data = data.sum(axis=ax)
    return data


# -- rules that fold, and their passes ----------------------------------------------------
@dataclass(eq=False)
class Fold:
    """What a FoldRule will build: new weights by name, and the known operands the match consumed."""

    weights: dict[str, Folded]
    consumed: list[Known] = field(default_factory=list)

    def growth(self, m: Match) -> int:
        """Bytes the model's constants grow by: dense weights created, minus constants only the match read."""
        created = sum(w.nbytes() for w in self.weights.values())
        dying = set(m.nodes)
        freed, seen = 0, set()
        for k in self.consumed:
            if k.splat or id(k.value) in seen:
                continue  # a splat frees (almost) nothing; count each constant once
            seen.add(id(k.value))
            if not any(o is k.value for o in m.graph.outputs) and all(u in dying for u, _ in k.value.uses()):
                freed += int(k.data.nbytes)
        return created - freed


class Budget:
    """The bytes of growth a pass run may still spend, shared by the rules of one run. Folds that shrink the
    model add what they free, so a run never grows the model by more than max-bytes in total. It also
    remembers the splats the folds consumed: the driver erases dead constants, the pass erases dead splats."""

    def __init__(self, left: int):
        self.left = left
        self.splats: list[Value] = []


class FoldRule(Rule):
    """Base of rules that fold constants into weights: write `pattern`, `plan(m)` and `build(op, m, fold)`.

    `check` calls `plan` and refuses when it gives a reason or when the fold would grow
    the model by more than the budget; `rewrite` calls `build` with the plan.
    """

    budget: Budget | None = None  # set per run by FusePass; None: nothing may grow

    def plan(self, m: Match) -> Fold | str:
        raise NotImplementedError(f"rule {self.rule_name} has no plan()")

    def build(self, op, m: Match, fold: Fold):
        raise NotImplementedError(f"rule {self.rule_name} has no build()")

    def check(self, m: Match):
        fold = self.plan(m)
        if isinstance(fold, str):
            return fold
        cost = fold.growth(m)
        left = self.budget.left if self.budget is not None else 0
        if cost > max(left, 0):
            return (f"folding would grow the model's constants by {cost} bytes (budget left: {max(left, 0)}); "
                    "raise max-bytes to allow it")
        m.fold_plan = fold  # Match objects live for one attempt: check and rewrite of the same match
        m.fold_cost = cost
        return None

    def rewrite(self, op, m: Match):
        fold = getattr(m, "fold_plan", None)
        if fold is None:  # rewrite called without check (a caller of the rule's methods by hand)
            fold = self.plan(m)
            if isinstance(fold, str):
                return None
        if self.budget is not None:
            self.budget.left -= getattr(m, "fold_cost", 0)
            self.budget.splats += [k.value for k in fold.consumed if k.splat]
        return self.build(op, m, fold)


@dataclass(frozen=True)
class FusePass(RewritePass):
    """Base of the fuse-* passes: `rule_names` lists FoldRule classes (or plain rules); max-bytes is the
    growth of constant bytes one run may spend (0: the model never grows)."""

    max_bytes: int = 0
    rule_names: ClassVar[tuple[Any, ...]] = ()

    def selected_rules(self, budget: Budget | None = None):
        budget = budget if budget is not None else Budget(self.max_bytes)
        rules = []
        for cls in self.rule_names:
            rule = cls()
            if isinstance(rule, FoldRule):
                rule.budget = budget
            rules.append(rule)
        return rules

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        """Apply the family to a fixpoint; while folds free bytes, sweep again: a fold refused for its
        growth earlier in the run may fit the budget now."""
        budget = Budget(self.max_bytes)
        rules = self.selected_rules(budget)
        limit = getattr(self, "max_iterations", 0) or None
        changed = False
        while True:
            before = budget.left
            count = apply_rules(graph, rules, ctx, max_iterations=limit)
            changed |= count > 0
            if count == 0 or budget.left <= before:
                break
        if changed:
            type_new_splats(graph, {r.rule_name for r in rules})
            erase_dead_splats(budget.splats)
        return changed


def type_new_splats(graph: Graph, provenance: set[str]) -> None:
    """Give the ConstantOfShape nodes that rules made (the builder leaves their type unknown) their type."""
    for node in graph.walk():
        if node.op != SPLAT or node.provenance not in provenance:
            continue
        out = node.outputs[0]
        k = known(out)
        if k is not None and isinstance(out.type, UnknownType):
            out.type = TensorType(DType.from_numpy(k.dtype), k.shape)


def erase_dead_splats(values: list[Value]) -> None:
    """Erase the ConstantOfShape nodes of `values` that nothing reads any more, and their dead shape constants."""
    for v in dict.fromkeys(values):
        node = v.producer()
        g = node.graph if node is not None else None
        if g is None or v.has_uses() or any(o is v for o in g.outputs) or g.parent is not None:
            continue  # still read, already gone, or in a body (whose outputs the use lists do not show)
        shape = node.input(0)
        g.erase(node)
        p = shape.producer() if shape is not None else None
        if p is not None and p.graph is g and p.op == "onnx.Constant" and not shape.has_uses() \
                and not any(o is shape for o in g.outputs):
            g.erase(p)
