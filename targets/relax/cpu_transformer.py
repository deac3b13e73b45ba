"""mdoc's transformer ops on the CPU kernels: one op, one kernel family, no looking around.

`CpuKernels.lower_node` sends these ops here; each returns the node's results,
or None to leave the node to the generic converter (`converters/transformer.py`):
symbolic dims, dtypes other than float32, gamma or beta computed at run time.

    mdoc.layer_norm        the layer_norm kernel (one task per row), last axis only
    mdoc.skip_layer_norm   the residual sum (elementwise), then the layer_norm kernel
    mdoc.attention         batch_matmul (q k^T, the scale in its epilogue), + mask, the softmax
                           kernel, batch_matmul (p v): what the separate nodes lowered to before
                           fuse-attention, with the head split and merge as reshapes/transposes
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tvm import relax

from mdoc.ir import Node
from mdoc.types import DType, TensorType

from ..cpu_kernels import Epilogue
from ..cpu_kernels.request import KernelRequest
from .context import reshaped

if TYPE_CHECKING:  # pragma: no cover
    from .context import LowerCtx
    from .cpu_strategy import CpuKernels

R = relax.op


def _vectors(node: Node, gamma_at: int, shape) -> tuple[np.ndarray, np.ndarray] | None:
    """Constant gamma and beta (zeros when absent) as float32 vectors over the last axis, else None."""
    gamma, beta = node.input(gamma_at), node.input(gamma_at + 1)
    if gamma is None or gamma.const_value is None or (beta is not None and beta.const_value is None):
        return None
    g = np.asarray(gamma.const_value, np.float32).reshape(-1)
    b = np.asarray(beta.const_value, np.float32).reshape(-1) if beta is not None else np.zeros_like(g)
    return (g, b) if g.shape == (shape[-1],) == b.shape else None


def _value_shape(value) -> tuple[int, ...] | None:
    """The static shape of a float32 graph value, else None (these kernels take static shapes;
    symbolic ones go to the generic converters)."""
    t = value.type if value is not None else None
    if not isinstance(t, TensorType) or t.shape is None or t.dtype != DType.F32:
        return None
    return tuple(t.shape) if all(isinstance(d, int) for d in t.shape) else None


def layer_norm(kernels: "CpuKernels", ctx: "LowerCtx", node: Node) -> list | None:
    shape = _value_shape(node.inputs[0])
    if shape is None or int(node.attrs.get("axis", -1)) not in (-1, len(shape) - 1):
        return None
    vectors = _vectors(node, 1, shape)
    if vectors is None:
        return None
    return [kernels._layer_norm(ctx, ctx.input(0), *vectors, float(node.attrs.get("epsilon", 1e-5)))]


def skip_layer_norm(kernels: "CpuKernels", ctx: "LowerCtx", node: Node) -> list | None:
    from .converters.transformer import skip_sum

    shape = _value_shape(node.inputs[0])
    if shape is None or _value_shape(node.inputs[1]) != shape:
        return None
    vectors = _vectors(node, 2, shape)
    if vectors is None:
        return None
    s = skip_sum(ctx)
    return [kernels._layer_norm(ctx, s, *vectors, float(node.attrs.get("epsilon", 1e-5))), s]


def attention(kernels: "CpuKernels", ctx: "LowerCtx", node: Node) -> list | None:
    shapes = [_value_shape(node.input(i)) for i in range(3)]
    if any(s is None for s in shapes) or (node.input(3) is not None and _value_shape(node.input(3)) is None):
        return None
    (b, sq, hidden), (_, sk, _), (_, _, hidden_v) = shapes
    h = int(node.attrs["num_heads"])
    d, dv = hidden // h, hidden_v // h
    mask = _value_shape(node.input(3)) if node.input(3) is not None else None
    if mask is not None and np.broadcast_shapes((b, h, sq, sk), mask) != (b, h, sq, sk):
        return None  # a mask that widens the scores (a batch of masks for one q): the generic path

    def heads(i: int, size: int, seq: int, perm: list[int]) -> relax.Expr:
        x4 = ctx.emit(R.reshape(ctx.input(i), [b, seq, h, size]))
        return ctx.emit(R.permute_dims(x4, perm))

    q4, kt, v4 = heads(0, d, sq, [0, 2, 1, 3]), heads(1, d, sk, [0, 2, 3, 1]), heads(2, dv, sk, [0, 2, 1, 3])
    qk = kernels._kernel(KernelRequest.of("batch_matmul", (b * h, sq, d), (b * h, d, sk), transpose_b=False,
                                          epilogue=Epilogue(scale=float(node.attrs["scale"]))))
    scores = kernels._call(ctx, qk, [reshaped(ctx, q4, (b * h, sq, d)), reshaped(ctx, kt, (b * h, d, sk))])
    if node.input(3) is not None:
        scores = ctx.emit(R.add(reshaped(ctx, scores, (b, h, sq, sk)), ctx.input(3)))
    softmax = kernels._kernel(KernelRequest.of("softmax", (b * h * sq, sk)))
    probs = kernels._call(ctx, softmax, [reshaped(ctx, scores, (b * h * sq, sk))])
    pv = kernels._kernel(KernelRequest.of("batch_matmul", (b * h, sq, sk), (b * h, sk, dv), transpose_b=False,
                                          epilogue=Epilogue()))
    y = kernels._call(ctx, pv, [reshaped(ctx, probs, (b * h, sq, sk)), reshaped(ctx, v4, (b * h, sk, dv))])
    y = ctx.emit(R.permute_dims(reshaped(ctx, y, (b, h, sq, dv)), [0, 2, 1, 3]))
    return [reshaped(ctx, y, (b, sq, hidden_v))]


LOWER = {"mdoc.layer_norm": layer_norm, "mdoc.skip_layer_norm": skip_layer_norm, "mdoc.attention": attention}
