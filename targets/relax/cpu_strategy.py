"""The CPU kernel strategy: matmuls and 2-D convs lowered to mdoc's hand-scheduled kernels.

Why: the generic schedule (`schedule.py`) reaches about half of the machine's FMA rate on
matrix products (BERT-mini's dense layers at ~105 GFLOP/s on 2 Zen 4 cores); the kernels of
`targets/cpu_kernels` reach onnxruntime's rate (~200) with weights packed at compile time
and the elementwise tail fused into the register tile.

`CpuKernels` is the `Kernels` hook (see `kernels.py`) for x86 and aarch64 targets:

* MatMul / Gemm with a constant 2-D B (`dense`): B is packed at compile time into the
  kernel's [N / lanes, K, lanes] panels; leading axes of A fold into its rows.
* MatMul of two activations (`batch_matmul`; attention's Q K^T and P V): batch axes
  flatten to one when they are equal or one side's are all ones.
* Conv with 2-D windows and constant weights (`conv2d`: dense, grouped, strided, dilated,
  1x1 as a GEMM, depthwise): NCHW activations in and out, weights packed into the kernel's
  blocked layout, the conv's bias fused.
* MaxPool / AveragePool with 2-D windows (`pool2d`), NCHW like the convs.
* For MatMul and Conv nodes, the tail `epilogue.match_tail` finds (MatMul: scale, bias,
  residual, activation; Conv: residual, activation) is fused and its nodes are absorbed;
  Gemm keeps its own alpha / beta / C.

Layout: a conv that reaches a kernel keeps the graph's NCHW activations (the kernels'
register tiles broadcast the input, so NCHW costs them nothing) and only its weights change
layout, so no transposes appear between neighbours. `build.py` converts to NHWC only the
convs left as `relax.nn.conv2d` (the fallbacks), which the generic schedule can vectorize
only over channels-last outputs.

Fallbacks to `Kernels` (the generic schedule): symbolic dims, 1-D operands, dtypes other
than float32, batch axes that truly broadcast, weights given at run time (convs), and 1-d /
3-d convs. Kernels are built once per shape and epilogue and reused across layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tvm
from tvm import relax

from mdoc.ir import Node
from mdoc.types import TensorType

from ..cpu_kernels import CpuSpec, Epilogue, Kernel, KernelError, batch_matmul, conv2d, dense, pool2d
from .epilogue import Tail, match_tail
from .kernels import Kernels

if TYPE_CHECKING:  # pragma: no cover
    from .context import LowerCtx


def cpu_kernels_for(target: dict) -> Kernels:
    """The kernel strategy for a TVM CPU target dict: `CpuKernels` when its vector width is
    known (AVX2, AVX-512, NEON), else the default `Kernels` (a generic x86-64 has no FMA
    vectors worth a hand schedule)."""
    try:
        return CpuKernels(CpuSpec.from_target(target))
    except KernelError:
        return Kernels()


class CpuKernels(Kernels):
    """`Kernels` with matrix products on `targets/cpu_kernels` (see the module docstring)."""

    def __init__(self, spec: CpuSpec):
        self.spec = spec
        self._built: dict[tuple, Kernel] = {}

    def matmul(self, ctx: "LowerCtx", a: relax.Expr, b: relax.Expr, *, transpose_b: bool = False) -> relax.Expr:
        a_shape, b_shape = _static_shape(ctx, a), _static_shape(ctx, b)
        if a_shape is None or b_shape is None or len(a_shape) < 2 or len(b_shape) < 2:
            return super().matmul(ctx, a, b, transpose_b=transpose_b)
        constant_b = isinstance(b, tvm.ir.GenericConst) and len(b_shape) == 2
        n = b_shape[-2] if transpose_b else b_shape[-1]
        batch = _batch_axes(a_shape, b_shape)
        if batch is None:
            return super().matmul(ctx, a, b, transpose_b=transpose_b)
        out_shape = (*a_shape[:-1], n) if constant_b else (*map(int, batch), a_shape[-2], n)
        node = ctx.node
        tail = (match_tail(ctx, node.output, out_shape) if node is not None and node.op == "onnx.MatMul"
                else Tail(node.output if node is not None else None))
        residual = ctx.lookup(tail.residual) if tail.residual is not None else None
        if constant_b:
            # rows flattened to [M, K] here (a free reshape) rather than inside the kernel
            rows = int(np.prod(a_shape[:-1]))
            kernel_shape = (rows, n)
            kernel = self._kernel("dense", (rows, a_shape[-1]), b_shape, transpose_b, tail.epilogue)
            args = [_reshaped(ctx, a, (rows, a_shape[-1])), relax.const(kernel.packers["weight"](b.value.numpy()))]
            residual = _reshaped(ctx, residual, kernel_shape) if residual is not None else None
        else:
            # batch axes flattened to one (the kernels tile a single batch loop)
            a3, b3 = _flat_batch(a_shape), _flat_batch(b_shape)
            kernel_shape = (max(a3[0], b3[0]), a_shape[-2], n)
            kernel = self._kernel("batch_matmul", a3, b3, transpose_b, tail.epilogue)
            args = [_reshaped(ctx, a, a3), _reshaped(ctx, b, b3)]
            residual = _reshaped(ctx, residual, kernel_shape) if residual is not None else None
        if tail.bias is not None:
            args.append(relax.const(tail.bias))
        if residual is not None:
            args.append(residual)
        gv = ctx.add_kernel(kernel.func, kernel.name)
        y = ctx.emit(relax.call_tir(gv, args, relax.TensorType(list(kernel_shape), "float32")))
        y = _reshaped(ctx, y, out_shape)
        if tail.nodes:
            ctx.absorb(tail.nodes, tail.result, y)
        return y

    def conv(self, ctx: "LowerCtx", x: relax.Expr, w: relax.Expr, *, strides, pads, dilations, groups: int,
             bias: relax.Expr | None = None) -> relax.Expr:
        x_shape = _static_shape(ctx, x)
        constant = isinstance(w, tvm.ir.GenericConst) and (bias is None or isinstance(bias, tvm.ir.GenericConst))
        if len(strides) != 2 or x_shape is None or not constant or str(w.ty.dtype) != "float32":
            return super().conv(ctx, x, w, strides=strides, pads=pads, dilations=dilations, groups=groups, bias=bias)
        weight = w.value.numpy()
        out_shape = _conv_out_shape(x_shape, weight.shape, strides, pads, dilations)
        node = ctx.node
        tail = (match_tail(ctx, node.output, out_shape, stages=("residual", "activation"))
                if node is not None and node.op == "onnx.Conv" and out_shape == _node_shape(node) else Tail(None))
        epilogue = Epilogue(bias=bias is not None, residual=tail.epilogue.residual, activation=tail.epilogue.activation,
                            alpha=tail.epilogue.alpha, beta=tail.epilogue.beta)
        key = ("conv2d", x_shape, weight.shape, tuple(strides), tuple(pads), tuple(dilations), groups, epilogue)
        if key not in self._built:
            # ONNX pads are (top, left, bottom, right), the builder's order too
            self._built[key] = conv2d(x_shape, weight.shape, strides=tuple(strides), padding=tuple(pads),
                                      dilation=tuple(dilations), groups=groups, epilogue=epilogue, spec=self.spec)
        kernel = self._built[key]
        args = [x, relax.const(np.ascontiguousarray(kernel.packers["weight"](weight)))]
        if bias is not None:
            args.append(relax.const(bias.value.numpy().reshape(-1)))
        if tail.residual is not None:
            args.append(ctx.lookup(tail.residual))
        gv = ctx.add_kernel(kernel.func, kernel.name)
        y = ctx.emit(relax.call_tir(gv, args, relax.TensorType(list(out_shape), "float32")))
        if tail.nodes:
            ctx.absorb(tail.nodes, tail.result, y)
        return y

    def pool(self, ctx: "LowerCtx", x: relax.Expr, kind: str, *, kernel, strides, pads, dilations, ceil_mode: bool,
             count_include_pad: bool) -> relax.Expr:
        x_shape = _static_shape(ctx, x)
        if len(kernel) != 2 or x_shape is None:
            return super().pool(ctx, x, kind, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                                ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        key = ("pool2d", kind, x_shape, tuple(kernel), tuple(strides), tuple(pads), tuple(dilations), ceil_mode,
               count_include_pad)
        if key not in self._built:
            self._built[key] = pool2d(x_shape, kind, tuple(kernel), tuple(strides), tuple(pads),
                                      dilation=tuple(dilations), ceil_mode=ceil_mode,
                                      count_include_pad=count_include_pad, spec=self.spec)
        built = self._built[key]
        gv = ctx.add_kernel(built.func, built.name)
        return relax.call_tir(gv, [x], relax.TensorType(list(built.output.shape), "float32"))

    def _kernel(self, kind: str, a_shape, b_shape, transpose_b: bool, epilogue: Epilogue) -> Kernel:
        key = (kind, a_shape, b_shape, transpose_b, epilogue)
        if key not in self._built:
            if kind == "dense":
                self._built[key] = dense(a_shape, b_shape, transpose_b=transpose_b, epilogue=epilogue, spec=self.spec)
            else:
                self._built[key] = batch_matmul(a_shape, b_shape, transpose_b=transpose_b, epilogue=epilogue,
                                                spec=self.spec)
        return self._built[key]


def _conv_out_shape(x_shape, w_shape, strides, pads, dilations) -> tuple[int, ...]:
    n, _, h, w = x_shape
    kh, kw = w_shape[2:]
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return (n, int(w_shape[0]), oh, ow)


def _node_shape(node: Node) -> tuple | None:
    t = node.output.type
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _batch_axes(a_shape, b_shape) -> tuple[int, ...] | None:
    """The output's batch axes when one side's batch is all ones or both sides' are equal (the
    batch then flattens to one axis), else None (a true broadcast: left to the default)."""
    a, b = tuple(a_shape[:-2]), tuple(b_shape[:-2])
    if a == b or all(d == 1 for d in b):
        return a if len(a) >= len(b) else (1,) * (len(b) - len(a)) + a
    if all(d == 1 for d in a):
        return b if len(b) >= len(a) else (1,) * (len(a) - len(b)) + b
    return None


def _flat_batch(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (int(np.prod(shape[:-2])), *shape[-2:])


def _reshaped(ctx: "LowerCtx", expr: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
    if tuple(ctx.shape_of(expr)) == tuple(shape):
        return expr
    return ctx.emit(relax.op.reshape(expr, list(shape)))


def _static_shape(ctx: "LowerCtx", expr: relax.Expr) -> tuple[int, ...] | None:
    """The static float32 shape of `expr`, or None (symbolic dims, other dtypes)."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or str(ty.dtype) != "float32":
        return None
    dims = ctx.shape_of(expr)
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None
