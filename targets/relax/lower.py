"""Lowering of an mdoc model straight into a Relax IRModule, one converter per node.

Conventions of the produced module (what `build.run` and mdoc's runtime rely on):

* One public function, `main` (If branches and Loop bodies become private
  functions beside it, see `control_flow.py`). Its parameters are the graph
  inputs, in order, named after them (characters other than letters, digits
  and `_` become `_`), with their shapes: an int dim stays an int, a symbolic
  dim (a `str` in mdoc's types) becomes a `tirx.Var` of that name shared by
  every input that uses the symbol, and an unknown dim (`None`) becomes a
  fresh var of its own.
* `main` always returns a **tuple**, one field per graph output in order, even
  when the graph has a single output: the runtime maps field `i` to
  `model.graph.outputs[i].name` without special cases.
* Constants become `relax.const` (the default, `params_as_constants=True`): the
  weights then live inside the built executable, which is self-contained, and
  the build's FoldConstant pass packs them (transposes for Gemm, folded batch
  norms, ...) once at compile time, which is also the faster build. With
  `params_as_constants=False`, every float constant of at least
  `PARAM_MIN_ELEMENTS` elements becomes an extra parameter of `main` after the
  graph inputs (in graph order; `param_constants(model)` lists them and
  `build.run` feeds them), the function gets the `num_input` attribute and,
  as TVM's frontends do, a `params` attribute with the arrays, so
  `relax.frontend.detach_params` works on the module. Converters then see such
  weights as runtime tensors (`ctx.const` returns None for them).
* Constants are lowered lazily: one that a converter reads only through
  `ctx.const` (axes, pads, shapes, scales) never becomes a Relax value.

A node whose op has no converter for the model's opset raises
`MdocError("<op> (node '<name>') has no Relax converter for opset <n>")` before
anything is emitted.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from mdoc.errors import InternalError, MdocError, first_line
from mdoc.ir import CONSTANT, Model, Node, Value
from mdoc.types import TensorType

from . import control_flow, converters  # noqa: F401  (registers the converters)
from ..storage import to_storage
from .context import LowerCtx, SymTensor, contiguous, tvm_dtype
from .kernels import Kernels
from .registry import lookup

PARAM_MIN_ELEMENTS = 1024

# Exceptions that only a converter's own bug raises (TVM reports what it refuses as
# RuntimeError or ValueError): they are InternalErrors, the others bad input.
_BUGS = (AssertionError, AttributeError, IndexError, KeyError, NameError, TypeError, ZeroDivisionError)


def sanitize(name: str, fallback: str = "v") -> str:
    """A name that Relax and TIR print and parse back: letters, digits and `_`."""
    s = re.sub(r"\W", "_", name or "")
    if not s or s[0].isdigit():
        s = f"{fallback}_{s}" if s else fallback
    return s


def param_constants(model: Model) -> list[Value]:
    """The constants that `lower(..., params_as_constants=False)` turns into parameters, in order."""
    out = []
    for node in model.graph:
        if node.op == CONSTANT:
            array = node.attrs["value"]
            if np.asarray(array).dtype.kind == "f" and np.asarray(array).size >= PARAM_MIN_ELEMENTS:
                out.append(node.output)
    return out


def check_supported(model: Model) -> None:
    """Raise MdocError for the first node whose op has no converter for the model's opset."""
    for node in model.graph.walk():  # If and Loop bodies too
        if node.op == CONSTANT:
            continue
        opset = model.opset_of(node.op)
        if lookup(node.op, opset) is None:
            raise MdocError(f"{node.op} (node '{node.name}') has no Relax converter for opset {opset}")


def lower(model: Model, *, params_as_constants: bool = True, target: dict | None = None,
          kernels: Kernels | None = None) -> tvm.IRModule:
    """Lower `model` into a Relax IRModule whose `main` takes the graph inputs and returns a tuple.

    The body is one dataflow block; a graph with control flow is emitted into plain
    binding blocks (Relax dataflow blocks cannot hold If), and control_flow.finish
    regroups the pure stretches into dataflow blocks. When a converter bound dims
    at run time (`LowerCtx.runtime_dims`), the model is lowered again into plain
    binding blocks that stay that way: kept in order, not fused (see there why).
    """
    check_supported(model)
    mod, ctx = _lower(model, params_as_constants, target, kernels, ordered=False)
    if ctx.runtime_shapes:
        mod, _ = _lower(model, params_as_constants, target, kernels, ordered=True)
    return mod


def _lower(model: Model, params_as_constants: bool, target: dict | None, kernels: Kernels | None,
           ordered: bool) -> tuple[tvm.IRModule, LowerCtx]:
    graph = model.graph
    bb = relax.BlockBuilder()

    weight_values = [] if params_as_constants else param_constants(model)
    ctx = LowerCtx(bb, model, target=target, kernels=kernels or Kernels(), param_values=set(weight_values))
    ctx.kernels.start(model)
    params: list[relax.Var] = []
    used_names: set[str] = set()

    def unique(name: str) -> str:
        base, k = name, 1
        while name in used_names:
            name, k = f"{base}_{k}", k + 1
        used_names.add(name)
        return name

    for value in graph.inputs:
        t = value.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise MdocError(f"graph input %{value.name} has type {t}; the Relax target needs a tensor "
                            f"of known rank (give the input a shape)")
        pname = unique(sanitize(value.name, "input"))
        dims: list[Any] = []
        for k, d in enumerate(t.shape):
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str):
                dims.append(ctx.symbol(d))
            else:
                dims.append(tirx.Var(f"{pname}_d{k}", "int64"))
        params.append(relax.Var(pname, relax.TensorType(dims, tvm_dtype(t.dtype, f"graph input %{value.name}"))))
    num_input = len(params)

    weight_vars = []
    for value in weight_values:
        array = value.const_value
        var = relax.Var(unique(sanitize(value.name, "param")),
                        relax.TensorType(list(array.shape), tvm_dtype(value.type.dtype)))
        weight_vars.append(var)

    attrs = {"num_input": num_input} if weight_values else None
    with _closed_on_error(bb), bb.function("main", params + weight_vars, attrs=attrs):
        for value, var in zip(graph.inputs, params):
            ctx.bind(value, var)
        for value, var in zip(weight_values, weight_vars):
            ctx.bind(value, var)
        dataflow = not ordered and not control_flow.present(graph)
        with bb.dataflow() if dataflow else contextlib.nullcontext():
            for node in graph:
                if node.op != CONSTANT:
                    convert_node(ctx, node)
            ctx.node = None
            outs = [output_expr(ctx, value) for value in graph.outputs]
            result = (bb.emit_output if dataflow else bb.emit)(relax.Tuple(outs), "outputs")
        bb.emit_func_output(result)
    mod = bb.get() if dataflow or ordered else control_flow.finish(bb.get())
    if weight_values:
        func = mod["main"].with_attr("params", [tvm.runtime.tensor(contiguous(v.const_value))
                                                for v in weight_values])
        mod["main"] = func
    return mod, ctx


# TVM opens its inference errors with the op's whole repr: "In ir.Op(span=None, ..., name="relax.add",
# ..., support_level=10), the first input shape at dim 0 is ..."
_OP_REPR = re.compile(r'In ir\.Op\(.*?name="(?P<op>[\w.]+)".*?support_level=\d+\), ')


def _reason(e: Exception) -> str:
    """TVM's error in one line, its op named by name rather than by repr."""
    return first_line(e, message=_OP_REPR.sub(lambda m: f"{m['op']}: ", str(e), count=1))


@contextlib.contextmanager
def _closed_on_error(bb: relax.BlockBuilder):
    """Around `bb.function(...)`: when lowering raises, close the block and the scope that it leaves open.

    TVM's function scope does not end its binding block (nor its variable scope) when the body
    raises, and the BlockBuilder's destructor then logs "BlockBuilder destroyed with remaining
    blocks!" on stderr, whenever Python collects it: after mdoc's error line, or in place of it.
    The bodies of If and Loop close their own blocks and scopes (`control_flow._block`, `_function`).
    """
    try:
        yield
    except BaseException:
        bb._end_block()
        bb.end_scope()
        raise


def convert_node(ctx: LowerCtx, node: Node) -> None:
    """Lower one node into the current block and bind its results (also used for If/Loop bodies)."""
    ctx.node = node
    try:
        _convert(ctx, node)
    except MdocError:
        raise
    except _BUGS as e:  # the converter's own mistake: exit 3, naming where
        raise InternalError(f"{node.op} (node '{node.name}'): its Relax converter failed: {first_line(e)}") from e
    except Exception as e:  # TVM refusing what the model asks for (shapes that do not fit, ...)
        raise MdocError(f"{node.op} (node '{node.name}'): Relax rejected the conversion: {_reason(e)}") from e


def _convert(ctx: LowerCtx, node: Node) -> None:
    """The converter's (or a kernel's) results for `node`, emitted (Relax infers their types here) and bound."""
    results = ctx.kernels.lower_node(ctx, node)
    if results is None:
        results = lookup(node.op, ctx.opset)(ctx, node)
    if len(results) < len(node.outputs):
        results = list(results) + [None] * (len(node.outputs) - len(results))
    for value, expr in zip(node.outputs, results):
        if expr is None:
            continue  # an optional result the converter does not compute; refused below if used
        if isinstance(expr, SymTensor):
            ctx.bind(value, expr)
            continue
        if not isinstance(expr, (relax.Var, tvm.ir.GenericConst)):
            expr = ctx.bb.emit(expr, sanitize(value.name, "v"))
        ctx.bind(value, _with_shape(ctx, value, expr))


def _with_shape(ctx: LowerCtx, value: Value, expr: relax.Expr) -> relax.Expr:
    """`expr`, match-cast to a known shape when Relax's inference lost it.

    Relax gives up on shapes it cannot prove (broadcasting two different symbolic
    dims, reshapes to computed dims), and later ops then fail to legalize. The
    importer's ONNX shape inference usually knows better: its symbols map to the
    same `tirx.Var`s as the graph inputs' dims, and its unknown dims become fresh
    vars. The match is checked at run time, so a wrong guess fails loudly.
    """
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.ndim < 0 or isinstance(ty.shape, relax.ShapeExpr):
        return expr
    mdoc_type = value.type
    dims: list[Any] = []
    known = isinstance(mdoc_type, TensorType) and mdoc_type.shape is not None and len(mdoc_type.shape) == ty.ndim
    for k in range(ty.ndim):
        d = mdoc_type.shape[k] if known else None
        if isinstance(d, int):
            dims.append(d)
        elif isinstance(d, str) and d in ctx.symbols:
            dims.append(ctx.symbols[d])  # a symbol of the graph inputs (not an inferred unk__N)
        else:
            dims.append(tirx.Var(f"{sanitize(value.name, 'v')}_d{k}", "int64"))
    return ctx.bb.match_cast(expr, relax.TensorType(dims, ty.dtype), sanitize(value.name, "v"))


def output_expr(ctx: LowerCtx, value: Value) -> relax.Expr:
    """The Relax expression of a graph (or body) output."""
    bound = ctx.lookup(value)
    if bound is None:
        array = value.const_value
        if array is None:
            producer = value.producer()
            where = f"{producer.op} (node '{producer.name}')" if producer is not None else "the graph"
            raise MdocError(f"{where}: result %{value.name} is a graph output but the Relax converter "
                            f"does not compute it")
        return relax.const(contiguous(to_storage(array)), tvm_dtype(value.type.dtype))
    if isinstance(bound, SymTensor):
        return ctx.materialize(bound)
    return bound
