"""Lowering of ONNX If and Loop into Relax control flow.

mdoc's passes inline an If whose condition is a constant (fold-if) and unroll a
Loop of a small constant trip count (decompose-loop). What reaches the lowering
is data dependent, and becomes Relax control flow here:

* **If** -> `relax.If` whose branches each call a private function holding the
  branch's nodes and returning a tuple of its outputs; the values of enclosing
  graphs that a branch uses are its parameters. Branches are functions, not
  inline blocks, because TVM's StaticPlanBlockMemory plans one function as a
  whole: it hands storage allocated in one branch to an allocation in the
  other, or after the If, and the VM then crashes on the path that never
  allocated it. The two branches must agree on the element type and rank of
  every output; where their shapes differ, Relax joins them to a shape it does
  not know and the If's results are match-cast (by `node_lowering.convert_node`) to
  the importer's inferred shape or to fresh symbolic dims.
* **Loop** -> private Relax functions, a while loop written as recursion
  over the loop state `(i, cond, carried..., accumulators...)`: the body's
  function runs one iteration (the body's nodes, each scan output appended to
  its accumulator by a Concat, `i + 1`); step functions run it while
  `cond and i < M` holds, in blocks of 2**LOOP_LEVELS iterations so the VM's
  call depth stays small (see `lower_loop`). Parameter shapes keep the dims
  the body's types declare as ints and take fresh symbolic dims elsewhere, so
  carried values may change shape between iterations.

No computation sits inside an If branch: every branch is a call (to a
branch's or a body's function) or a tuple of the state, which keeps the
memory planner's reuse sound and FuseOps working (it fails on some bindings
inside branches).

Values of enclosing graphs that a body uses are passed as parameters (a
function cannot see another function's variables); compile-time constants are
not, they become constants wherever they are used.

Relax dataflow blocks cannot hold an If, so a graph with control flow is
lowered into plain binding blocks and `finish` regroups the pure stretches into
dataflow blocks (`ConvertToDataflow`), where fusion still applies.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx

from mdoc.errors import MdocError
from mdoc.ir import CONSTANT, Graph, Node, Value
from mdoc.types import TensorType

from .context import LowerCtx, SymTensor, dim_var, is_static, tvm_dtype
from .node_lowering import convert_node, output_expr
from .registry import converter

CONTROL_FLOW_OPS = frozenset({"onnx.If", "onnx.Loop"})


def present(graph: Graph) -> bool:
    """Whether `graph` (not counting nested bodies) has a node that lowers to Relax control flow."""
    return any(node.op in CONTROL_FLOW_OPS for node in graph)


def finish(mod: tvm.IRModule) -> tvm.IRModule:
    """Regroup the pure bindings of a module lowered without dataflow blocks into dataflow blocks."""
    return relax.transform.ConvertToDataflow()(mod)


# -- bodies ---------------------------------------------------------------------


def lower_body(ctx: LowerCtx, body: Graph, bindings: dict[Value, Any]) -> list[relax.Expr]:
    """Lower the nodes of `body` into the current block, its inputs bound as given; its outputs.

    The lowering environment is restored afterwards: bindings made while
    lowering the body (its own values, and outer values that a converter
    materialized or match-cast inside it) are scoped to the body's block and
    must not leak to the enclosing graph. An error while lowering the body names the body and
    its If or Loop after the failing node.
    """
    saved_env, saved_node = dict(ctx.env), ctx.node
    try:
        for value, expr in bindings.items():
            ctx.bind(value, expr)
        for node in body:
            if node.op != CONSTANT:
                convert_node(ctx, node)
        ctx.node = None
        return [output_expr(ctx, value) for value in body.outputs]
    except MdocError as e:
        if saved_node is not None:  # say which body of which If or Loop the failing node is in
            key = next((k for k, v in saved_node.attrs.items() if v is body), "body")
            e.args = (f"{e.args[0]} (in the {key} of {saved_node.op} '{saved_node.name}')", *e.args[1:])
        raise
    finally:
        ctx.env, ctx.node = saved_env, saved_node


def _block(ctx: LowerCtx, emit) -> relax.SeqExpr:
    """A SeqExpr of the bindings `emit()` makes in a fresh binding block, ending in the var it returns."""
    bb = ctx.bb
    bb._begin_binding_block()
    try:
        result = emit()
    finally:
        block = bb._end_block()
    return relax.SeqExpr([block], result)


def _scalar_bool(ctx: LowerCtx, expr: relax.Expr, what: str) -> relax.Expr:
    """A rank-0 bool tensor from a one-element condition tensor (ONNX allows shape [1])."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.ndim < 0:
        raise ctx.error(f"{what} must be a tensor of known rank")
    if str(ty.dtype) != "bool":
        expr = ctx.bb.emit(relax.op.not_equal(expr, relax.const(0, str(ty.dtype))))
    if ty.ndim != 0:
        expr = ctx.bb.emit(relax.op.reshape(expr, []))
    return expr


def _scalar_int64(ctx: LowerCtx, expr: relax.Expr) -> relax.Expr:
    if str(expr.ty.dtype) != "int64":
        expr = ctx.bb.emit(relax.op.astype(expr, "int64"))
    if expr.ty.ndim != 0:
        expr = ctx.bb.emit(relax.op.reshape(expr, []))
    return expr


# -- functions ------------------------------------------------------------------


def captured_values(body: Graph) -> list[Value]:
    """The values of enclosing graphs that `body` or a body nested in it uses, in first-use order."""
    inner: set[Value] = set()
    found: dict[Value, None] = {}

    def visit(graph: Graph) -> None:
        inner.update(graph.inputs)
        for node in graph:
            inner.update(node.outputs)
        for node in graph:
            for v in node.inputs:
                if v is not None and v not in inner:
                    found.setdefault(v)
            for sub in node.subgraphs():
                visit(sub)
        for v in graph.outputs:
            if v not in inner:
                found.setdefault(v)

    visit(body)
    return list(found)


def _outer_expr(ctx: LowerCtx, value: Value) -> relax.Expr | None:
    """`value` of an enclosing graph as a Relax expression, or None when it is a compile-time constant."""
    bound = ctx.lookup(value)
    if bound is None:
        if value.const_value is not None:
            return None  # lowered lazily as a relax.const wherever the body uses it
        raise ctx.error(f"the body uses %{value.name} before it is defined")
    if isinstance(bound, SymTensor):
        if bound.static:
            return None  # known at compile time: stays a SymTensor, usable in any function
        bound = ctx.materialize(bound)
    if isinstance(bound, tvm.ir.GenericConst):
        return None
    return bound


def _captured(ctx: LowerCtx, body: Graph) -> list[tuple[Value, relax.Expr]]:
    """The outer values `body` uses that are not compile-time constants, with their Relax expressions here."""
    return [(v, e) for v in captured_values(body) if (e := _outer_expr(ctx, v)) is not None]


def _captured_params(ctx: LowerCtx, body: Graph, scope: "_Scope"
                     ) -> tuple[list[tuple[Value, relax.Expr]], list[relax.Var]]:
    """`_captured(ctx, body)` and a parameter for each, its run-time dims the vars of `scope`."""
    captured = _captured(ctx, body)
    params = [relax.Var(f"c{j}", _param_type(e.ty, f"c{j}", _outer_dims(e), scope)) for j, (_, e) in enumerate(captured)]
    return captured, params


def _outer_dims(expr: relax.Expr) -> list[Any]:
    """The dims of a value the caller passes unchanged: ints, and the caller's run-time sizes, which
    the function's parameters share (silero-vad's batch, in its audio and its LSTM state)."""
    if not isinstance(expr.ty.shape, relax.ShapeExpr):
        return []
    return [int(d) if is_static(d) else d for d in expr.ty.shape.values]


class _Scope:
    """The TIR vars of one function's parameters: one per run-time size of the caller.

    A TIR var belongs to one function. Inside a body, a size that two parameters share outside
    (the graph's N in [N, 128] states, a conv's (w - 3) // 4 + 1 in two captured maps) must be
    one var, or Relax cannot prove that they agree and an elementwise op on them fails to
    legalize. Sizes are matched by structural equality of the caller's expressions."""

    def __init__(self):
        self.dims: list[tuple[Any, tirx.Var]] = []

    def var(self, outer: Any, hint: str) -> tirx.Var:
        for expr, var in self.dims:
            if tvm_ffi.structural_equal(expr, outer):
                return var
        self.dims.append((outer, dim_var(hint)))
        return self.dims[-1][1]

    def symbols(self, outer: dict[str, tirx.Var]) -> dict[str, tirx.Var]:
        """The graph's symbols (name -> the caller's var) that are sizes of this function, as its vars."""
        return {name: var for name, o in outer.items() for expr, var in self.dims if tvm_ffi.structural_equal(expr, o)}


@contextmanager
def _symbol_scope(ctx: LowerCtx, scope: _Scope):
    """Lower a function's body with the graph's symbols mapped to the function's own TIR vars
    (`_with_shape` match-casts lost shapes to them)."""
    saved = ctx.symbols
    ctx.symbols = scope.symbols(saved)
    try:
        yield
    finally:
        ctx.symbols = saved


def _function(ctx: LowerCtx, params: list[relax.Var], emit, ret: relax.Type | None = None) -> relax.Function:
    """A Relax function of `params` whose body is the bindings `emit()` makes, ending in the var it returns."""
    bb = ctx.bb
    bb.begin_scope(params)
    try:
        seq = _block(ctx, emit)
        seq = bb.normalize(seq)  # drops symbolic dims the body defines from its result type
    finally:
        bb.end_scope()
    return relax.Function(params, seq, ret)


# -- If -------------------------------------------------------------------------


def _branch(ctx: LowerCtx, node: Node, key: str) -> relax.SeqExpr:
    """A SeqExpr calling a private function that holds branch `key` of If `node`."""
    body: Graph = node.attrs[key]
    if len(body.outputs) != len(node.outputs):
        raise ctx.error(f"{key} has {len(body.outputs)} outputs, the If has {len(node.outputs)}")
    scope = _Scope()
    captured, params = _captured_params(ctx, body, scope)
    bindings = {v: p for (v, _), p in zip(captured, params)}
    with _symbol_scope(ctx, scope):
        func = _function(ctx, params, lambda: ctx.bb.emit(relax.Tuple(lower_body(ctx, body, bindings))))
    gv = ctx.bb.add_func(func, ctx.bb.get_unique_name(f"mdoc_if_{key.split('_')[0]}"))
    return _block(ctx, lambda: ctx.bb.emit(relax.Call(gv, [e for _, e in captured])))


@converter("onnx.If", since=1)
def lower_if(ctx: LowerCtx, node: Node) -> list:
    cond = _scalar_bool(ctx, ctx.input(0), "the condition")
    branches = [_branch(ctx, node, key) for key in ("then_branch", "else_branch")]
    for k, (a, b) in enumerate(zip(branches[0].body.ty.fields, branches[1].body.ty.fields)):
        if str(a.dtype) != str(b.dtype) or a.ndim != b.ndim:
            raise ctx.error(f"output {k} is {a.dtype} of rank {a.ndim} in then_branch but {b.dtype} of rank "
                            f"{b.ndim} in else_branch; Relax needs both branches to agree")
    result = ctx.bb.emit(relax.If(cond, *branches), "if_out")
    return [ctx.bb.emit(relax.TupleGetItem(result, k)) for k in range(len(node.outputs))]


# -- Loop -----------------------------------------------------------------------


def _param_type(ty: relax.TensorType, name: str, static: list[Any], scope: _Scope | None = None) -> relax.TensorType:
    """`ty` with the dims of `static` that are ints kept, those that are the caller's run-time sizes
    given the function's var for them (`scope`), and every other dim a fresh var of `name`."""
    static = static if len(static) == ty.ndim else [None] * ty.ndim

    def dim(k: int, d: Any) -> Any:
        if isinstance(d, int):
            return d
        if d is not None and scope is not None:
            return scope.var(d, f"{name}_d{k}")
        return dim_var(f"{name}_d{k}")

    return relax.TensorType([dim(k, d) for k, d in enumerate(static)], ty.dtype)


def _dims(t: Any) -> list[Any]:
    return list(t.shape) if isinstance(t, TensorType) and t.shape is not None else []


def _static_dims(expr: relax.Expr) -> list[Any]:
    """The dims of `expr` that are ints (None for the others); [] when Relax does not know its shape."""
    return _static_dims_of(expr.ty)


def _static_dims_of(ty: relax.TensorType) -> list[Any]:
    if not isinstance(ty.shape, relax.ShapeExpr):
        return []
    return [int(d) if is_static(d) else None for d in ty.shape.values]


def _scope_vars(exprs: list[relax.Expr]) -> list[tirx.Var]:
    """The symbolic vars in the shapes of `exprs` (values of the scope being lowered)."""
    found: list[tirx.Var] = []
    for e in exprs:
        ty = e.ty
        if isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
            for d in ty.shape.values:
                if not is_static(d):
                    found.extend(v for v in tirx.analysis.undefined_vars(d) if not any(v.same_as(f) for f in found))
    return found


def _dims_in_scope(ty: relax.TensorType, here: list[tirx.Var]) -> list[Any]:
    """`ty`'s dims: ints, expressions of the vars `here`, None for the others."""
    def dim(d):
        if is_static(d):
            return int(d)
        return d if all(any(v.same_as(h) for h in here) for v in tirx.analysis.undefined_vars(d)) else None
    return [dim(d) for d in ty.shape.values]


def _carried_dims(node: Node, j: int, init: relax.Expr) -> list[Any]:
    """The dims of loop-carried value `j` that stay fixed: declared by the body's input, or, where
    the body leaves its input undeclared, the initial value's dims that the body's output keeps.
    A run-time size of the initial value stays (shared with the function's other parameters) only
    where its mdoc type, the body's input and the body's output all name one symbol there: the
    value then keeps that size from iteration to iteration."""
    body: Graph = node.attrs["body"]
    declared, out, outer = (_dims(body.inputs[2 + j].type), _dims(body.outputs[1 + j].type),
                            _dims(node.inputs[2 + j].type))
    first = _outer_dims(init)
    if declared:
        same = len(out) == len(declared) == len(outer) == len(first)
        return [d if isinstance(d, int) else
                first[k] if same and isinstance(d, str) and out[k] == d == outer[k] else None
                for k, d in enumerate(declared)]
    if len(out) != len(first):
        return []
    return [a if isinstance(a, int) and a == b else None for a, b in zip(first, out)]


def _scan_init(ctx: LowerCtx, node: Node, body: Graph, j: int, n: int, probe) -> relax.Expr:
    """An empty accumulator [0, *element shape] for scan output `j`.

    The element shape comes from the types the importer inferred, or, where
    they do not say (bodies of ONNX functions such as Range's are often
    untyped), from `probe()`: the body lowered once on the initial values into
    a block that is then dropped; only int dims are taken from it.
    """
    result, element = node.outputs[n + j], body.outputs[1 + n + j]
    shape = None
    if isinstance(result.type, TensorType) and result.type.shape is not None:
        shape = list(result.type.shape[1:])
    if isinstance(element.type, TensorType) and element.type.shape is not None:
        shape = list(element.type.shape)
    if shape is None or not all(isinstance(d, int) or (isinstance(d, str) and d in ctx.symbols) for d in shape):
        probed = probe()[1 + n + j]
        if probed is None or any(d is None for d in probed):
            raise ctx.error(f"scan output {j} (%{result.name}) needs a known element shape to start its "
                            f"accumulator (got {element.type}); run infer-shapes or give the model static shapes")
        shape = probed
    dims = [d if isinstance(d, int) else ctx.symbols[d] if isinstance(d, str) else d for d in shape]
    dtype = tvm_dtype((result.type if isinstance(result.type, TensorType) else element.type).dtype)
    return ctx.bb.emit(relax.op.zeros(relax.ShapeExpr([0, *dims]), dtype))


LOOP_LEVELS = 10
"""A Loop runs as blocks of 2**LOOP_LEVELS iterations (see `lower_loop`)."""


@converter("onnx.Loop", since=1)
def lower_loop(ctx: LowerCtx, node: Node) -> list:
    """Loop -> private Relax functions over the state (i, cond, carried..., accumulators...).

    The Relax VM runs a call as a nested C++ call, so a plain tail-recursive
    while loop overflows the stack after a few thousand iterations. Instead:
    `step_0` runs one iteration when `cond and i < M` holds, `step_k` runs
    `step_{k-1}` twice (when the loop has not stopped), and the recursive loop
    function runs `step_LOOP_LEVELS` until the loop stops: the call depth grows
    by one per 2**LOOP_LEVELS iterations. Every function takes the state, then
    the trip count and the captured values (passed along unchanged), and returns
    the state.
    """
    bb = ctx.bb
    body: Graph = node.attrs["body"]
    n = len(node.inputs) - 2
    k = len(body.outputs) - 1 - n
    if k < 0 or len(body.inputs) != 2 + n:
        raise ctx.error(f"{n} loop-carried inputs do not fit a body with {len(body.inputs)} inputs and "
                        f"{len(body.outputs)} outputs (it needs {2 + n} inputs and at least {1 + n} outputs)")
    trip = (_scalar_int64(ctx, ctx.input(0)) if ctx.has_input(0)
            else relax.const(np.iinfo(np.int64).max, "int64"))
    cond = _scalar_bool(ctx, ctx.input(1), "the condition") if ctx.has_input(1) else relax.const(True, "bool")
    inits = []
    for j in range(n):
        if not ctx.has_input(2 + j):
            raise ctx.error(f"loop-carried input {j} is omitted; the Relax target needs a value")
        inits.append(ctx.input(2 + j))
    probed: list = []

    def probe() -> list:
        """The dims of the body's outputs (None: unknown shape), lowered on the initial values: ints,
        and symbolic dims of vars defined here (an LSTM's batch inside an If branch, a branch parameter)."""
        if not probed:
            bindings = {body.inputs[0]: relax.const(0, "int64"), body.inputs[1]: cond}
            bindings.update({body.inputs[2 + j]: e for j, e in enumerate(inits)})
            here = _scope_vars([*inits, *(e for _, e in _captured(ctx, body))])
            dropped = _block(ctx, lambda: bb.emit(relax.Tuple(lower_body(ctx, body, bindings))))
            probed.extend(_dims_in_scope(t, here) if isinstance(t.shape, relax.ShapeExpr) else None
                          for t in dropped.body.ty.fields)
        return probed

    accs = [_scan_init(ctx, node, body, j, n, probe) for j in range(k)]
    captured = _captured(ctx, body)

    # parameter types: the state, then what passes through unchanged
    scalar = [relax.TensorType([], "int64"), relax.TensorType([], "bool")]
    # per parameter, its dims: ints, the caller's run-time sizes (one var each in every function) or None
    state_dims = [[], [], *(_carried_dims(node, j, e) for j, e in enumerate(inits)),
                  *([None, *_outer_dims(e)[1:]] for e in accs)]
    fixed_dims = [[], *(_outer_dims(e) for _, e in captured)]
    state_types = [*scalar, *(_param_type(e.ty, f"v{j}", d) for j, (e, d) in enumerate(zip(inits, state_dims[2:]))),
                   *(_param_type(e.ty, f"acc{j}", d) for j, (e, d) in enumerate(zip(accs, state_dims[2 + n:])))]
    fixed_types = [relax.TensorType([], "int64"), *(_param_type(e.ty, f"c{j}", d)
                                                   for j, ((_, e), d) in enumerate(zip(captured, fixed_dims[1:])))]
    state_names = ["i", "cond", *(f"v{j}" for j in range(n)), *(f"acc{j}" for j in range(k))]
    fixed_names = ["trip_count", *(f"c{j}" for j in range(len(captured)))]
    ret = relax.TupleType([*scalar, *(relax.TensorType(dtype=t.dtype, ndim=t.ndim) for t in state_types[2:])])

    def fresh(scope: _Scope) -> tuple[list[relax.Var], list[relax.Var]]:
        """New parameters of one function (Relax refuses one Var as the parameter of two functions),
        with new dims: the caller's run-time sizes are the vars of `scope`."""
        def params(types, names, dims) -> list[relax.Var]:
            return [relax.Var(name, _param_type(t, name, d, scope)) for t, name, d in zip(types, names, dims)]
        return params(state_types, state_names, state_dims), params(fixed_types, fixed_names, fixed_dims)

    def call(gv, state, fixed) -> list[relax.Var]:
        result = bb.emit(relax.Call(gv, [*state, *fixed]))
        return [bb.emit(relax.TupleGetItem(result, j)) for j in range(len(state_types))]

    def define(name: str, then) -> relax.GlobalVar:
        """A function that returns `then(state, fixed)` while the loop runs and its state once it stops."""
        gv = relax.GlobalVar(bb.get_unique_name(name))
        relax.expr._update_type(gv, relax.FuncType([*state_types, *fixed_types], ret))
        scope = _Scope()
        state, fixed = fresh(scope)

        def emit() -> relax.Var:
            go = bb.emit(relax.op.logical_and(state[1], relax.op.less(state[0], fixed[0])))
            running = _block(ctx, lambda: bb.emit(relax.Tuple(then(gv, state, fixed))))
            return bb.emit(relax.If(go, running, _block(ctx, lambda: bb.emit(relax.Tuple(state)))))

        with _symbol_scope(ctx, scope):
            bb.update_func(gv, _function(ctx, [*state, *fixed], emit, ret))
        return gv

    def iterate(state, fixed) -> list[relax.Expr]:
        i, cond_in, vs, accs_in = state[0], state[1], state[2:2 + n], state[2 + n:]
        bindings = {body.inputs[0]: i, body.inputs[1]: cond_in}
        bindings.update({body.inputs[2 + j]: v for j, v in enumerate(vs)})
        bindings.update({v: p for (v, _), p in zip(captured, fixed[1:])})
        outs = lower_body(ctx, body, bindings)
        again = _scalar_bool(ctx, outs[0], "the body's condition output")
        grown = []
        for acc, s in zip(accs_in, outs[1 + n:]):
            # every iteration's element has the accumulator's element shape (checked at run time)
            grown.append(bb.emit(relax.op.concat(ctx.aligned(acc, bb.emit(relax.op.expand_dims(s, 0)), concat_axis=0),
                                                 axis=0)))
        step = bb.emit(relax.op.add(i, relax.const(1, "int64")))
        return [step, again, *outs[1:1 + n], *grown]

    # the body is a function of its own, called from the step's If branch: FuseOps fails on some
    # bindings inside If branches (a match_cast to a shape), and no branch then allocates memory
    scope = _Scope()
    state, fixed = fresh(scope)
    with _symbol_scope(ctx, scope):
        body_func = _function(ctx, [*state, *fixed], lambda: bb.emit(relax.Tuple(iterate(state, fixed))), ret)
    body_gv = bb.add_func(body_func, bb.get_unique_name("mdoc_loop_body"))
    step = define("mdoc_loop_step", lambda gv, state, fixed: call(body_gv, state, fixed))
    for level in range(LOOP_LEVELS):
        step = define(f"mdoc_loop_x{2 << level}",
                      lambda gv, state, fixed, inner=step: call(inner, call(inner, state, fixed), fixed))
    loop = define("mdoc_loop", lambda gv, state, fixed: call(gv, call(step, state, fixed), fixed))
    outer_fixed = [trip, *(e for _, e in captured)]
    out = call(loop, [relax.const(0, "int64"), cond, *inits, *accs], outer_fixed)
    return out[2:]
