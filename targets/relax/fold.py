"""Fold layout and shape ops on constants with numpy, before legalization.

TVM's `FoldConstant` evaluates a constant subexpression by compiling its
PrimFunc and running it: about a quarter of a second per call, so a model with
a hundred convolutions spent over a minute there transposing weights for the
NHWC layout (DenseNet-121: 75 s). This pass does the same folds in numpy on
the Relax level, where the ops are still named: `permute_dims`, `reshape`,
`expand_dims`, `squeeze`, `astype`, `broadcast_to`, and the elementwise
`add`, `subtract`, `multiply`, `divide` of two constants. What it does not
know stays for `FoldConstant`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .context import contiguous, is_static


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _static_shape(expr) -> list[int] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = list(ty.shape.values)
    if not all(is_static(d) for d in dims):
        return None
    return [int(d.value) if hasattr(d, "value") else int(d) for d in dims]


_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide}
_VIEWS = {"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"}


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod_ = mod

    def _arg(self, expr):
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is not None:
                return _const(bound)
        return _const(expr)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = getattr(call.op, "name", None)
        if op is None:
            return call
        try:
            out = self._fold(op, call)
        except Exception:  # noqa: BLE001  (anything unexpected: leave it to FoldConstant)
            out = None
        if out is None:
            return call
        dtype = str(call.ty.dtype)
        return relax.const(contiguous(np.asarray(out).astype(dtype, copy=False)), dtype)

    def _fold(self, op: str, call: relax.Call):
        if op == "relax.permute_dims":
            x = self._arg(call.args[0])
            if x is None:
                return None
            axes = call.attrs.axes
            return np.transpose(x, None if axes is None else [int(a) for a in axes])
        if op in _VIEWS or op == "relax.broadcast_to":
            x = self._arg(call.args[0])
            shape = _static_shape(call)
            if x is None or shape is None:
                return None
            return np.broadcast_to(x, shape) if op == "relax.broadcast_to" else np.reshape(x, shape)
        if op == "relax.astype":
            x = self._arg(call.args[0])
            return None if x is None else x.astype(str(call.attrs.dtype))
        if op in _BINARY:
            a, b = self._arg(call.args[0]), self._arg(call.args[1])
            if a is None or b is None:
                return None
            return _BINARY[op](a, b)
        return None


@tvm.transform.module_pass(opt_level=0, name="mdoc.FoldConstantsNumpy")
class FoldConstantsNumpy:
    """Fold layout/shape/elementwise ops whose operands are all constants, with numpy."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        folder = _Folder(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                folder.builder_.update_func(gv, folder.visit_expr(func))
        return relax.transform.DeadCodeElimination()(folder.builder_.get())
