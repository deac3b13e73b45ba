"""mdoc.conv and mdoc.matmul (made by `fuse-epilogue`): the product through `ctx.kernels` with the tail
the op carries, as a `kernels.Tail`; mdoc.inverted_residual as its three convs.

The strategy applies the tail in its kernel's register tile (`cpu_strategy.CpuKernels`) or as Relax ops
after the product (the default `Kernels`, every target); either way it reads only the op.
"""

from __future__ import annotations

import numpy as np

from mdoc.activations import applied_from_attrs
from mdoc.fused_ops import IR_STAGES, ir_activation_attrs, ir_conv_attrs
from mdoc.ir import Node

from ..context import LowerCtx
from ..kernels import Tail
from ..registry import converter
from .nn import lower_conv


@converter("mdoc.conv", since=1)
def conv(ctx: LowerCtx, node: Node):
    residual = ctx.input(3) if ctx.has_input(3) else None
    return [lower_conv(ctx, Tail(residual=residual, activation=applied_from_attrs(node.attrs)))]


@converter("mdoc.matmul", since=1)
def matmul(ctx: LowerCtx, node: Node):
    bias = ctx.const(2) if ctx.has_input(2) else None
    if ctx.has_input(2) and bias is None:
        raise ctx.need_const(2, "bias")
    scale = node.attrs.get("scale")
    tail = Tail(scale=None if scale is None else float(scale),
                bias=None if bias is None else np.asarray(bias, np.float32).reshape(-1),
                residual=ctx.input(3) if ctx.has_input(3) else None, activation=applied_from_attrs(node.attrs))
    return [ctx.kernels.matmul(ctx, ctx.input(0), ctx.input(1), tail=tail)]


@converter("mdoc.inverted_residual", since=1)
def inverted_residual(ctx: LowerCtx, node: Node):
    """The block as its three convs (a strategy with the block's kernel takes the node in `lower_node`)."""
    y = ctx.input(0)
    for k, stage in enumerate(IR_STAGES):
        attrs = ir_conv_attrs(node, stage)
        residual = ctx.input(7) if stage == "project" and ctx.has_input(7) else None
        tail = Tail(residual=residual, activation=applied_from_attrs(ir_activation_attrs(node, stage)))
        bias = ctx.input(2 + 2 * k) if ctx.has_input(2 + 2 * k) else None
        y = ctx.emit(ctx.kernels.conv(ctx, y, ctx.input(1 + 2 * k), strides=attrs.get("strides", [1, 1]),
                                      pads=attrs.get("pads", [0, 0, 0, 0]), dilations=[1, 1],
                                      groups=int(attrs.get("group", 1)), bias=bias, tail=tail))
    return [y]
