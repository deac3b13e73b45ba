"""The rewrite driver: apply rules with a worklist to a fixpoint, splice replacements, explain misses.

`apply_rules(graph, rules, ctx)` visits every node of the graph and of its
nested bodies, tries the rules whose pattern root has the node's op (highest
benefit first) and applies the first that matches, passes its check and
builds a replacement. Applying is one step: the new nodes go in before the
root, the values the pattern returns are replaced, and the matched nodes that
became dead are erased (with constants that only they used). The nodes a
change can affect go back on the worklist, until nothing applies.

A match is refused, with a reason, when a matched node that will be erased
has a result used outside the match (unless the pattern op says `_keep=True`
or the rule `keep_shared = True`), when the check says so, when a replacement
has a type that contradicts the value it replaces, or when rerouting values
would make the data flow loop (`mdoc.analysis.would_create_cycle`).

`explain(graph, rule)` lists where a rule would fire and its nearest misses,
nearest first; `trace_rewrites()` turns on the `--trace-rewrites` output.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .analysis import owner_in, topological_order, would_create_cycle
from .errors import MdocError
from .ir import CONSTANT, Graph, Model, Node, Value
from .rewrite_match import Failure, Match, Matcher, OutputIndex, describe, value_text
from .rewrite_pattern import NewNode, NewValue, RewriteBuilder
from .rewrite_rules import Rule, resolve_rules
from .types import TensorType, UnknownType, tensor_type_of


# -- tracing ---------------------------------------------------------------------------
@dataclass
class RewriteTrace:
    """What `--trace-rewrites` shows: a line per application, and for the rules named in `explain`
    (or all, with "*"), after each run of the driver, where they would still fire and their near misses."""

    write: Callable[[str], None] = print
    explain: frozenset[str] = frozenset()
    lines: list[str] = field(default_factory=list)
    fired: Counter = field(default_factory=Counter)  # rule name -> applications (the report's rule table)

    def emit(self, line: str) -> None:
        self.lines.append(line)
        self.write(line)

    def wants(self, rule: str) -> bool:
        return rule in self.explain or "*" in self.explain


_TRACE: ContextVar[RewriteTrace | None] = ContextVar("mdoc_rewrite_trace", default=None)


@contextmanager
def trace_rewrites(write: Callable[[str], None] = print, explain: Iterable[str] = ()) -> Iterator[RewriteTrace]:
    """Trace every rule application made inside the `with` block (the CLI's `--trace-rewrites`).

        with trace_rewrites(write=log, explain=["fuse-conv-bn"]) as trace:
            PassManager(passes).run(model)
        trace.lines  # everything written
    """
    trace = RewriteTrace(write, frozenset(explain))
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


# -- one attempt at one node -------------------------------------------------------------
@dataclass
class _Plan:
    """A match that passed every test, with the replacement its rewrite built (not yet in the graph)."""

    rule: Rule
    match: Match
    replacements: tuple  # of Value | NewValue, one per pattern output
    needed: list[NewNode]  # the built nodes the replacements need, in creation order
    reroutes: bool  # a replaced value is not a result of the root
    sources: list[Value]  # existing values the replacement reads (or is)
    outside: bool  # some of them are not operands or results of the matched nodes
    flows_in: bool  # some of those outside values are computed (not constants or graph inputs)


def _attempt(rule: Rule, root: Node, model: Model | None, outputs: OutputIndex) -> _Plan | Failure:
    pattern = rule.compiled
    matcher = Matcher(pattern, rule.commute, model)
    for st in matcher.matches(root):
        m = Match(rule.rule_name, pattern, root, st.binds, st.nodes, model, outputs)
        reason = _external_use(m, rule, outputs)
        if reason:
            matcher.fail(st, reason, stage=1)
            continue
        verdict = _call(rule, "check", m)
        if verdict is not None and verdict is not True:
            why = verdict if isinstance(verdict, str) and verdict else f"check returned {verdict!r}"
            matcher.fail(st, f"check refused: {why}", stage=2)
            continue
        builder = RewriteBuilder()
        result = _call(rule, "rewrite", m, builder)
        if result is None:
            matcher.fail(st, "rewrite declined (returned None)", stage=3)
            continue
        plan = _plan(rule, m, builder, result)
        if not plan.needed and all(new is old for new, old in zip(plan.replacements, m.outputs)):
            matcher.fail(st, "rewrite returned the matched values themselves (nothing to change)", stage=3)
            continue
        reason = _type_conflict(plan) or _cycle(plan)
        if reason:
            matcher.fail(st, reason, stage=4)
            continue
        return plan
    return matcher.best or Failure(root, 0, len(pattern.nodes), 0, "the pattern does not match here")


def _call(rule: Rule, method: str, m: Match, *args):
    try:
        return getattr(rule, method)(*args, m) if args else getattr(rule, method)(m)
    except MdocError:
        raise
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"while running {method}() of rewrite rule '{rule.rule_name}' at {describe(m.root)}")
        raise


def _external_use(m: Match, rule: Rule, outputs: OutputIndex) -> str | None:
    matched = set(m.nodes)
    replaced = set(m.outputs)
    for node in m.nodes:
        if m.is_kept(node, rule.keep_shared):
            continue
        for out in node.outputs:
            if out in replaced:
                continue
            result = f"result %{out.name}" if out.name else f"result {out.index}"
            if out in outputs:
                return f"{result} of {describe(node)} is a graph output"
            for user, _ in out.uses():
                if user not in matched:
                    return (f"{result} of {describe(node)} is also used by {describe(user)}, outside the match "
                            "(a pattern op with _keep=True may be shared)")
    return None


def _plan(rule: Rule, m: Match, builder: RewriteBuilder, result: Any) -> _Plan:
    n_out = len(m.pattern.outputs)
    replacements = result if isinstance(result, tuple) else (result,)
    if len(replacements) != n_out:
        raise MdocError(f"rule '{rule.rule_name}': rewrite() returned {len(replacements)} value(s) for a pattern "
                        f"that returns {n_out}")
    for r in replacements:
        if not isinstance(r, Value | NewValue):
            raise MdocError(f"rule '{rule.rule_name}': rewrite() returned a {type(r).__name__}; return values "
                            "built with op (op.Relu(...)) or values of the match (m['x'])")
    needed: set[int] = set()
    stack = [r.node for r in replacements if isinstance(r, NewValue)]
    while stack:
        rec = stack.pop()
        if id(rec) in needed:
            continue
        needed.add(id(rec))
        stack.extend(v.node for v in rec.inputs if isinstance(v, NewValue))
    ordered = [rec for rec in builder.created if id(rec) in needed]
    reroutes = any(old.producer() is not m.root and new is not old for old, new in zip(m.outputs, replacements))
    sources = [v for rec in ordered for v in rec.inputs if isinstance(v, Value)]
    sources += [r for r in replacements if isinstance(r, Value)]
    upstream = {v for n in m.nodes for v in (*n.inputs, *n.outputs) if v is not None}
    outside = [v for v in sources if v not in upstream]
    flows_in = any(not _is_leaf(v) for v in outside)
    return _Plan(rule, m, replacements, ordered, reroutes, sources, bool(outside), flows_in)


def _is_leaf(v: Value) -> bool:
    """A graph input or a constant: nothing flows into it, so reading it cannot close a loop."""
    p = v.producer()
    return p is None or (p.op == CONSTANT and not p.inputs)


def _type_conflict(plan: _Plan) -> str | None:
    for old, new in zip(plan.match.outputs, plan.replacements):
        if isinstance(new, Value) and new is not old:
            a, b = old.type, new.type
            if isinstance(a, TensorType) and isinstance(b, TensorType) and (
                    a.dtype != b.dtype or (a.is_static and b.is_static and a.shape != b.shape)):
                return f"the replacement {value_text(new)} has type {b}, but it replaces {value_text(old)} of type {a}"
    return None


def _cycle(plan: _Plan) -> str | None:
    """Refuse a replacement that would make the data flow loop (possible only when values other than
    the root's results are rerouted, or the rewrite reads computed values from outside the match)."""
    m = plan.match
    graph = m.graph
    if not plan.reroutes and not plan.flows_in:
        return None  # everything comes from above the root, and only the root's results move

    def source_of(v) -> Any:
        if isinstance(v, NewValue):
            return v.node
        return owner_in(graph, v.producer()) if v.producer() is not None else None

    edges = []
    for rec in plan.needed:
        for v in rec.inputs:
            if v is not None and (src := source_of(v)) is not None:
                edges.append((src, rec))
    reused = set(plan.sources)
    removed = {n for n in m.nodes if not m.is_kept(n, plan.rule.keep_shared)
               and not any(o in reused for o in n.outputs)}
    for old, new in zip(m.outputs, plan.replacements):
        src = source_of(new) if new is not old else None
        if src is None:
            continue
        for user, _ in old.uses():
            owner = owner_in(graph, user)
            if owner is not None and owner not in removed:
                edges.append((src, owner))
    loop = would_create_cycle(graph, edges, removed)
    if loop is None:
        return None
    through = next((n for n in loop if isinstance(n, Node)), None)
    where = f" through {describe(through)}" if through is not None else ""
    return f"rewriting would create a cycle{where}: a replaced value's user feeds what replaces it"


# -- applying ------------------------------------------------------------------------------
def _splice(plan: _Plan, outputs: OutputIndex, fanout: int) -> list[Node]:
    """Put the plan into the graph in one step; returns the nodes that are new or whose operands or
    neighbourhood changed, where other matches may now start or stop."""
    m, rule_name = plan.match, plan.rule.rule_name
    graph, root = m.graph, m.root
    fed = [v for n in m.nodes for v in n.inputs if v is not None]
    first = plan.replacements[0].node if isinstance(plan.replacements[0], NewValue) else None
    made: dict[int, Node] = {}

    def resolve(v):
        return made[id(v.node)].outputs[v.index] if isinstance(v, NewValue) else v

    new_nodes = []
    for rec in plan.needed:
        if rec.op == CONSTANT:
            array = rec.attrs["value"]
            node = graph.add(CONSTANT, (), {"value": array}, outputs=[tensor_type_of(array)], before=root,
                             output_names=[rec.name], provenance=rule_name)
        else:
            name = rec.name or (root.name if rec is first else "")
            node = graph.add(rec.op, [resolve(v) for v in rec.inputs], rec.attrs, outputs=rec.n_outputs,
                             name=name, before=root, provenance=rule_name)
            for sub in node.subgraphs():
                outputs.add_graph(sub)
        made[id(rec)] = node
        new_nodes.append(node)

    changed = list(new_nodes)
    for old, r in zip(m.outputs, plan.replacements):
        new = resolve(r)
        if new is old:
            continue
        if isinstance(r, NewValue):
            if isinstance(new.type, UnknownType):
                new.type = old.type
            if not new.name:
                new.name = old.name
        changed += [user for user, _ in old.uses()]
        graph.replace_all_uses(old, new)
        outputs.replace(old, new)

    pending = list(reversed(m.nodes))  # users before their operands
    progress = True
    while progress:
        progress = False
        for node in pending:
            if node.graph is graph and _dead(node, outputs):
                graph.erase(node)
                progress = True
    for v in fed:  # constants that only the erased nodes used
        p = v.producer()
        if p is not None and p.op == CONSTANT and p.graph is graph and _dead(p, outputs):
            graph.erase(p)
    if plan.reroutes or plan.outside:
        defining = new_nodes + [owner_in(graph, v.producer()) for v in plan.sources if v.producer() is not None]
        if _out_of_order(graph, [n for n in defining if n is not None]):
            _restore_order(graph)
    # A value that lost users may now be an intermediate of a match below it; with more users than a
    # pattern has ops it cannot be, so high fan-out values (a shared input) do not requeue everything.
    for v in dict.fromkeys(fed):
        p = v.producer()
        if p is not None and p.graph is not None and p.op != CONSTANT and len(v.uses()) <= fanout:
            changed += [user for user, _ in v.uses()]
    return changed


def _dead(node: Node, outputs: OutputIndex) -> bool:
    return all(not o.has_uses() and o not in outputs for o in node.outputs)


def _out_of_order(graph: Graph, new_nodes: list[Node]) -> bool:
    position = {n: i for i, n in enumerate(graph)}
    for node in new_nodes:
        for out in node.outputs:
            for user, _ in out.uses():
                owner = owner_in(graph, user)
                if owner is not None and position[owner] < position[node]:
                    return True
    return False


def _restore_order(graph: Graph) -> None:
    """Relink the nodes of `graph` in a topological order that moves as little as it can."""
    order = topological_order(graph)
    for i in range(len(order) - 2, -1, -1):
        graph.move_before(order[i + 1], order[i])


def _alive(node: Node, top: Graph) -> bool:
    g = node.graph
    while g is not None and g is not top:
        parent = g.parent
        if parent is None:
            return False
        g = parent.graph
    return g is top


def _downstream(nodes: list[Node], depth: int) -> Iterator[Node]:
    """`nodes` and their users, transitively, `depth` levels down: the roots a change can reach."""
    frontier = nodes
    yield from nodes
    for _ in range(depth - 1):
        nxt = [user for node in frontier for out in node.outputs for user, _ in out.uses()]
        yield from nxt
        frontier = nxt


def apply_rules(graph: Graph, rules: Any, ctx=None, *, max_iterations: int | None = None) -> int:
    """Apply `rules` (names, Rule classes or instances) to `graph` and its nested bodies until none
    applies; returns how many rewrites were made.

    `ctx` (a PassContext) gives the model (for opsets) and the log that
    applications are reported to. `max_iterations` bounds the number of
    rewrites (default: 10 per node, at least 1000); reaching it is an error that
    names the rule that keeps firing, usually one that undoes itself or another.
    """
    active = resolve_rules(rules)
    model = getattr(ctx, "model", None)
    trace = _TRACE.get()
    log = trace.emit if trace is not None else getattr(ctx, "log", None)
    by_op: dict[str, list[Rule]] = {}
    for rule in active:
        for root_op in rule.compiled.root.ops:
            by_op.setdefault(root_op, []).append(rule)
    depth = max((r.compiled.depth for r in active), default=1)
    fanout = max((len(r.compiled.nodes) for r in active), default=1)  # most ops in one pattern
    outputs = OutputIndex(graph)

    queue: deque[Node] = deque()
    queued: set[Node] = set()

    def push(nodes: Iterable[Node]) -> None:
        for n in nodes:
            if n.op in by_op and n not in queued:
                queued.add(n)
                queue.append(n)

    push(graph.walk())
    bound = max_iterations if max_iterations is not None else max(1000, 10 * len(queued))
    count = 0
    recent: deque[str] = deque(maxlen=100)
    while queue:
        node = queue.popleft()
        queued.discard(node)
        if not _alive(node, graph):
            continue
        for rule in by_op.get(node.op, ()):
            plan = _attempt(rule, node, model, outputs)
            if isinstance(plan, Failure):
                continue
            if count >= bound:
                name, _ = Counter(recent).most_common(1)[0] if recent else (rule.rule_name, 0)
                raise MdocError(f"rewrite rules did not reach a fixpoint after {bound} rewrites: rule '{name}' "
                                f"keeps firing (next at {describe(node)}); it may undo itself or another rule "
                                "(or raise max_iterations if the graph really needs more)")
            where = f"rule {rule.rule_name} fired at node {describe(node)}"
            if node.graph is not graph:
                where += f" in graph @{node.graph.name}"
            changed = _splice(plan, outputs, fanout)
            count += 1
            recent.append(rule.rule_name)
            if trace is not None:
                trace.fired[rule.rule_name] += 1
            if log is not None:
                log(where)
            push(_downstream(changed, depth))
            break
    if trace is not None:
        for rule in active:
            if trace.wants(rule.rule_name):
                for line in explain(graph, rule, model):
                    trace.emit(f"rule {rule.rule_name}: {line}")
    return count


# -- explaining --------------------------------------------------------------------------
def explain(graph: Graph, rule: Any, model: Model | None = None, limit: int = 10) -> list[str]:
    """Where `rule` (a name, class or instance) would fire in `graph` and its bodies, then its nearest
    misses (nearest first, at most `limit`), each with the reason it failed."""
    (r,) = resolve_rules([rule])
    root_ops = r.compiled.root.ops
    candidates = [n for n in graph.walk() if n.op in root_ops]
    if not candidates:
        return [f"no node has op {' or '.join(root_ops)}, the root of the pattern"]
    outputs = OutputIndex(graph)
    fires, misses = [], []
    for i, node in enumerate(candidates):
        result = _attempt(r, node, model, outputs)
        if isinstance(result, Failure):
            misses.append((result, i))
        else:
            fires.append(node)
    lines = [f"would fire at {describe(n)}" for n in fires]
    misses.sort(key=lambda fi: (tuple(-k for k in fi[0].key), fi[1]))
    lines += [f"near miss {f.text()}" for f, _ in misses[:limit]]
    if len(misses) > limit:
        lines.append(f"... and {len(misses) - limit} more misses")
    return lines
