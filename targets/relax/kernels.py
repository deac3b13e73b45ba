"""The kernel strategy: where hand-scheduled kernels plug into the Relax lowering.

The converters of the compute-heavy ops (Conv, MatMul, Gemm, MaxPool and AveragePool)
do not build Relax ops themselves: they ask `ctx.kernels`, an instance
of `Kernels`, for the expression. The default returns plain `relax.op` calls,
which the build legalizes to TOPI and schedules with the generic CPU schedule
(`schedule.py`). A target-specific strategy (for example one backed by
`targets/cpu_kernels`) subclasses `Kernels` and returns, where it has a better
kernel, a `relax.call_tir` to a PrimFunc it adds with `ctx.add_kernel(func, name)`
(which marks it `mdoc.scheduled`, so the generic schedule leaves it alone, and
drops the `global_symbol` "main" that `te.create_prim_func` gives). Returning
`super().conv(...)` falls back to the default for shapes it does not cover.

    class CpuKernels(Kernels):
        def conv(self, ctx, x, w, *, strides, pads, dilations, groups, bias=None):
            if len(strides) == 2 and groups == 1 and my_kernel_fits(ctx.shape_of(x), ctx.shape_of(w)):
                gv = ctx.add_kernel(make_conv_primfunc(...), "mdoc_conv2d")
                return relax.call_tir(gv, [x, packed_w], out_ty=relax.TensorType(out_shape, "float32"))
            return super().conv(ctx, x, w, strides=strides, pads=pads, dilations=dilations, groups=groups,
                                bias=bias)

    ex = build(lower(model, kernels=CpuKernels()), target)

Shapes arrive as lists of ints (or TIR expressions for symbolic dims); pads are
ONNX-ordered (all begins, then all ends).

A fused op (`mdoc.conv`, `mdoc.matmul`, made by `fuse-epilogue`) hands its elementwise tail
to `conv` / `matmul` as a `Tail`; the default applies it as Relax ops after the product
(`apply_tail`, which `FuseOps` later fuses), a kernel strategy in its register tile. No
strategy looks at the graph for more: what is fused is what the op says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tvm
from tvm import relax

from mdoc.activations import ACTIVATIONS, Applied

from ..cpu_description import CpuSpec

if TYPE_CHECKING:  # pragma: no cover
    from .context import LowerCtx

POOL_OPS = {
    "max": {1: relax.op.nn.max_pool1d, 2: relax.op.nn.max_pool2d, 3: relax.op.nn.max_pool3d},
    "avg": {1: relax.op.nn.avg_pool1d, 2: relax.op.nn.avg_pool2d, 3: relax.op.nn.avg_pool3d},
}
POOL_LAYOUTS = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
_CONV = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}
_LAYOUTS = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


R = relax.op


def _f(v: float) -> relax.Expr:
    return relax.const(np.float32(v))


# every activation of `mdoc.activations`, as Relax ops: fn(x, alpha, beta)
RELAX_ACTIVATIONS: dict[str, Callable[[relax.Expr, float, float], relax.Expr]] = {
    "relu": lambda x, a, b: R.nn.relu(x),
    "tanh": lambda x, a, b: R.tanh(x),
    "sigmoid": lambda x, a, b: R.sigmoid(x),
    "silu": lambda x, a, b: R.multiply(x, R.sigmoid(x)),
    "gelu": lambda x, a, b: R.nn.gelu(x),
    "gelu_tanh": lambda x, a, b: R.nn.gelu_tanh(x),
    "clip": lambda x, a, b: R.clip(x, a, b),
    "leaky_relu": lambda x, a, b: R.nn.leakyrelu(x, a),
    "hardsigmoid": lambda x, a, b: R.clip(R.add(R.multiply(x, _f(a)), _f(b)), 0.0, 1.0),
    "hardswish": lambda x, a, b: R.multiply(x, R.clip(R.add(R.multiply(x, _f(1.0 / 6.0)), _f(0.5)), 0.0, 1.0)),
}


@dataclass(frozen=True)
class Tail:
    """The elementwise tail of a fused op, in the order applied: y * scale + bias + residual, then the
    activation. bias is a matmul's [N] vector over the last axis (a conv's bias is its own operand);
    residual has the result's shape."""

    scale: float | None = None
    bias: np.ndarray | None = None
    residual: relax.Expr | None = None
    activation: Applied | None = None


def apply_tail(ctx: "LowerCtx", y: relax.Expr, tail: Tail | None) -> relax.Expr:
    """`tail` applied to the product `y` as Relax ops (float32)."""
    if tail is None:
        return y
    if tail.scale is not None:
        y = R.multiply(ctx.emit(y), _f(tail.scale))
    if tail.bias is not None:
        y = R.add(ctx.emit(y), relax.const(np.asarray(tail.bias, np.float32)))
    if tail.residual is not None:  # of a size Relax may not prove equal (a Loop body's two batch vars)
        y = R.add(*ctx.aligned(ctx.emit(y), tail.residual))
    act = tail.activation
    if act is not None:
        spec = ACTIVATIONS[act.name]
        alpha = spec.alpha if act.alpha is None else act.alpha
        beta = spec.beta if act.beta is None else act.beta
        y = RELAX_ACTIVATIONS[act.name](ctx.emit(y), alpha, beta)
    return y


class Kernels:
    """Default kernels: plain Relax ops, scheduled later by the generic CPU schedule."""

    def start(self, model) -> None:
        """Called once per lowering of `model`, before its first node (whole-graph plans go here)."""

    def conv(self, ctx: "LowerCtx", x: relax.Expr, w: relax.Expr, *, strides: Sequence[int],
             pads: Sequence[int], dilations: Sequence[int], groups: int,
             bias: relax.Expr | None = None, tail: Tail | None = None) -> relax.Expr:
        """N-d convolution (N = 1, 2, 3) in NC[D]HW / OI[D]HW, plus `bias` [C] when given, then `tail`."""
        y = self._conv(ctx, x, w, strides=strides, pads=pads, dilations=dilations, groups=groups)
        if bias is not None:
            # [1, C, 1, ...] of the data's full rank: Relax's ConvertLayout carries NHWC through a
            # binary op only when both operands have the data's rank
            per_channel = ctx.emit(relax.op.reshape(bias, [1, -1] + [1] * len(strides)))
            y = relax.op.add(ctx.emit(y), per_channel)
        return apply_tail(ctx, y, tail)

    def _conv(self, ctx, x, w, *, strides, pads, dilations, groups):
        nd = len(strides)
        data_layout, kernel_layout = _LAYOUTS[nd]
        channels = ctx.shape_of(x)[1]
        if 1 < groups <= 8 and (not isinstance(channels, int) or groups != channels):
            # A few groups (ShuffleNet, AlexNet-style): one conv per group on a channel slice, then
            # concat. Each is a dense conv the generic schedule vectorizes over output channels;
            # the grouped form indexes its input by `channel // group_size` and stays scalar.
            return self._conv_per_group(ctx, x, w, strides, pads, dilations, groups)
        cout = ctx.shape_of(w)[0]
        padded = _padded(cout, ctx.cpu)
        if groups == 1 and padded != cout and isinstance(w, tvm.ir.GenericConst):
            # output channels are the vector axis of the generic schedule: pad the (constant)
            # weights to whole vectors with zero filters and drop the extra channels after
            wv = w.value.numpy()
            w = relax.const(np.concatenate([wv, np.zeros((padded - cout,) + wv.shape[1:], wv.dtype)]))
            y = ctx.emit(_CONV[nd](x, w, strides=list(strides), padding=list(pads), dilation=list(dilations),
                                   groups=groups, data_layout=data_layout, kernel_layout=kernel_layout))
            return relax.op.strided_slice(y, axes=[1], begin=[0], end=[cout], assume_inbound=True)
        return _CONV[nd](x, w, strides=list(strides), padding=list(pads), dilation=list(dilations),
                         groups=groups, data_layout=data_layout, kernel_layout=kernel_layout)

    def _conv_per_group(self, ctx, x, w, strides, pads, dilations, groups):
        nd = len(strides)
        cin, cout = ctx.shape_of(x)[1], ctx.shape_of(w)[0]
        if not isinstance(cin, int) or not isinstance(cout, int):
            return _CONV[nd](x, w, strides=list(strides), padding=list(pads), dilation=list(dilations),
                             groups=groups, data_layout=_LAYOUTS[nd][0], kernel_layout=_LAYOUTS[nd][1])
        gi, go = cin // groups, cout // groups
        outs = []
        for g in range(groups):
            xg = ctx.emit(relax.op.strided_slice(x, axes=[1], begin=[g * gi], end=[(g + 1) * gi], assume_inbound=True))
            if isinstance(w, tvm.ir.GenericConst):  # slice constant weights now, not in FoldConstant
                wg = relax.const(w.value.numpy()[g * go:(g + 1) * go].copy())
            else:
                wg = ctx.emit(relax.op.strided_slice(w, axes=[0], begin=[g * go], end=[(g + 1) * go],
                                                     assume_inbound=True))
            outs.append(ctx.emit(self.conv(ctx, xg, wg, strides=strides, pads=pads, dilations=dilations, groups=1)))
        return relax.op.concat(outs, axis=1)

    def lower_node(self, ctx: "LowerCtx", node) -> list | None:
        """Lower `node` with a kernel of the strategy's own, returning its results like a converter;
        None leaves it to the converter. The default strategy has no such kernels."""
        return None

    def pool(self, ctx: "LowerCtx", x: relax.Expr, kind: str, *, kernel: Sequence[int], strides: Sequence[int],
             pads: Sequence[int], dilations: Sequence[int], ceil_mode: bool, count_include_pad: bool) -> relax.Expr:
        """MaxPool (kind "max") / AveragePool ("avg") over NC[D]HW data, ONNX attributes."""
        nd = len(kernel)
        extra = {"count_include_pad": count_include_pad} if kind == "avg" else {}
        return POOL_OPS[kind][nd](x, pool_size=list(kernel), strides=list(strides), padding=list(pads),
                                  dilation=list(dilations), ceil_mode=ceil_mode, layout=POOL_LAYOUTS[nd], **extra)

    def matmul(self, ctx: "LowerCtx", a: relax.Expr, b: relax.Expr, *, transpose_b: bool = False,
               tail: Tail | None = None) -> relax.Expr:
        """numpy-style matmul of `a` by `b` (by `b`'s last two axes swapped when `transpose_b`), then `tail`."""
        return apply_tail(ctx, self._matmul(ctx, a, b, transpose_b), tail)

    def _matmul(self, ctx, a, b, transpose_b):
        a, b = ctx.contracted(a, b, transpose_b=transpose_b)
        if transpose_b:
            nd = len(ctx.shape_of(b))
            b = ctx.bb.emit(relax.op.permute_dims(b, list(range(nd - 2)) + [nd - 1, nd - 2]))
        b_dims = ctx.shape_of(b)
        n = b_dims[-1]
        if len(b_dims) >= 2 and len(ctx.shape_of(a)) >= 2 and (padded := _padded(n, ctx.cpu)) != n:
            # N is the vector axis of the generic schedule; a ragged N (ViT's 197 tokens) would leave
            # the whole product scalar, so pad B with zero columns and slice the result
            width = [0, 0] * (len(b_dims) - 1) + [0, padded - n]
            if isinstance(b, tvm.ir.GenericConst):
                bv = b.value.numpy()
                b = relax.const(np.pad(bv, [(0, 0)] * (bv.ndim - 1) + [(0, padded - n)]))
            else:
                b = ctx.bb.emit(relax.op.nn.pad(b, width))
            y = ctx.bb.emit(relax.op.matmul(a, b))
            return relax.op.strided_slice(y, axes=[len(ctx.shape_of(y)) - 1], begin=[0], end=[n],
                                          assume_inbound=True)
        return relax.op.matmul(a, b)


def _padded(n, cpu: CpuSpec | None) -> int:
    """`n` rounded up to whole vectors of `cpu` when a vector loop over it would be ragged (not a
    multiple of half a vector), else `n`; no CPU (a GPU target): `n`."""
    if cpu is None or not isinstance(n, int) or n % (cpu.lanes // 2) == 0 or n <= cpu.lanes // 4:
        return n
    return -(-n // cpu.lanes) * cpu.lanes
