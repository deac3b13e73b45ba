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
from typing import Any

import numpy as np
import tvm
from tvm import relax

from mdoc.errors import MdocError
from mdoc.ir import CONSTANT, Model, Value
from mdoc.types import TensorType

from . import control_flow, converters  # noqa: F401  (registers the converters)
from .context import LowerCtx, contiguous, dim_var, tvm_dtype
from .kernels import Kernels
from .node_lowering import convert_node, output_expr, sanitize
from .registry import lookup

PARAM_MIN_ELEMENTS = 1024

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
                dims.append(dim_var(f"{pname}_d{k}"))
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
