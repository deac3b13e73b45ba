"""Ops of recurrent / state-space models that carry a state from one call to the next.

CausalConvWithState: a depthwise causal conv1d over [batch, channels, length] whose left
context is the previous call's tail (`past_state`, zeros when absent); the new tail is
returned as `present_state`. An optional SiLU ("silu" / "swish") follows the conv.

TensorScatter: the write of new keys / values into a fixed-size KV cache.

LinearAttention: a state S [batch, kv_heads, d_k, d_v] updated once per token,

    S = S * exp(decay_t)                        (rules "gated", "gated_delta")
    v_t = beta_t * (v_t - k_t S)                (rules "delta", "gated_delta")
    S = S + k_t^T v_t
    out_t = scale * q_t S                       (query head h reads kv head h // group)

computed in float32. The recurrence is unrolled over the (static) sequence length, up to
`MAX_UNROLLED_STEPS` tokens: decode steps and short prefills; longer sequences are
refused with a message rather than emitting a graph of thousands of ops.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import attr_str, relax_dims, static_int
from .activations import swish
from .attention import compute_dtype, dim_tensor, grouped_matmul, split_heads

R = relax.op
MAX_UNROLLED_STEPS = 64
_RULES = {"linear": (False, False), "gated": (True, False), "delta": (False, True), "gated_delta": (True, True)}


@converter("onnx.CausalConvWithState", since=27)
def causal_conv_with_state(ctx: LowerCtx, node: Node):
    x, w = ctx.input(0), ctx.input(1)
    if ctx.rank(0) != 3 or ctx.rank(1) != 3:
        raise ctx.error(f"input {ctx.shape(0)} and weight {ctx.shape(1)} must be rank 3 "
                        f"([batch, channels, length] and [channels, 1, k])")
    activation = attr_str(ctx, "activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise ctx.error(f"activation '{activation}' is not one of none, silu, swish")
    batch, channels, length = ctx.shape(0)
    channels = static_int(ctx, channels, "the channel count")
    k = static_int(ctx, ctx.shape(1)[2], "the kernel size")
    dtype = str(x.ty.dtype)
    if ctx.has_input(3):
        past = ctx.input(3)
    else:
        past = relax.op.zeros(relax.ShapeExpr([batch, channels, k - 1]), dtype)
    padded = ctx.emit(R.concat([past, x], axis=2)) if k > 1 else x
    cdt = compute_dtype(dtype)
    xc, wc = (ctx.emit(R.astype(t, cdt)) if cdt != dtype else t for t in (padded, w))
    y = ctx.emit(ctx.kernels.conv(ctx, xc, wc, strides=[1], pads=[0, 0], dilations=[1], groups=channels))
    if ctx.has_input(2):
        b = ctx.input(2)
        b = ctx.emit(R.astype(b, cdt)) if cdt != dtype else b
        y = ctx.emit(R.add(y, ctx.emit(R.reshape(b, [1, channels, 1]))))
    if activation != "none":
        y = swish(ctx, y, 1.0)
    if cdt != dtype:
        y = ctx.emit(R.astype(y, dtype))
    total = ctx.shape_of(padded)[2]
    present = R.strided_slice(padded, axes=[2], begin=[total - (k - 1)], end=[total], assume_inbound=True)
    return [y, present]


@converter("onnx.LinearAttention", since=27)
def linear_attention(ctx: LowerCtx, node: Node):
    rule = attr_str(ctx, "update_rule", "gated_delta")
    if rule not in _RULES:
        raise ctx.error(f"update_rule '{rule}' is not one of {', '.join(_RULES)}")
    gating, delta = _RULES[rule]
    has = {name: ctx.has_input(i) for i, name in [(3, "past_state"), (4, "decay"), (5, "beta")]}
    if has["decay"] != gating:
        raise ctx.error(f"update_rule '{rule}' {'requires' if gating else 'forbids'} the decay input")
    if has["beta"] != delta:
        raise ctx.error(f"update_rule '{rule}' {'requires' if delta else 'forbids'} the beta input")
    q_heads, kv_heads = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    if not q_heads or not kv_heads or int(q_heads) % int(kv_heads):
        raise ctx.error("q_num_heads and kv_num_heads are required, q_num_heads a multiple of kv_num_heads")
    q_heads, kv_heads = int(q_heads), int(kv_heads)
    dtype = str(ctx.input(0).ty.dtype)
    batch, steps, _ = ctx.shape(0)
    steps = static_int(ctx, steps, "the sequence length")
    if steps > MAX_UNROLLED_STEPS:
        raise ctx.error(f"sequence length {steps} is over the {MAX_UNROLLED_STEPS} steps the Relax target "
                        f"unrolls; feed the sequence in chunks, carrying past_state")

    def heads(i: int, n: int, what: str) -> relax.Expr:  # [B, T, n * d] -> float32 [B, n, T, d]
        return split_heads(ctx, ctx.emit(R.astype(ctx.input(i), "float32")), n, what)

    q, k, v = heads(0, q_heads, "query"), heads(1, kv_heads, "key"), heads(2, kv_heads, "value")
    d_k, d_v = ctx.shape_of(k)[3], ctx.shape_of(v)[3]
    decay = beta = None
    if gating:
        width = static_int(ctx, ctx.shape(4)[2], "decay's last dim")
        if width not in (kv_heads, kv_heads * int(d_k)):
            raise ctx.error(f"decay's last dim {width} must be kv_num_heads or kv_num_heads * d_k")
        decay = ctx.emit(R.exp(heads(4, kv_heads, "decay")))  # [B, H, T, 1 or d_k]
    if delta:
        width = static_int(ctx, ctx.shape(5)[2], "beta's last dim")
        if width not in (kv_heads, 1):
            raise ctx.error(f"beta's last dim {width} must be kv_num_heads or 1")
        beta = heads(5, width, "beta")  # [B, H or 1, T, 1]
    state_dtype = dtype
    if has["past_state"]:
        state_dtype = str(ctx.input(3).ty.dtype)
        state = ctx.emit(R.astype(ctx.input(3), "float32"))
    else:
        state = ctx.emit(R.zeros(relax.ShapeExpr(relax_dims([batch, kv_heads, d_k, d_v])), "float32"))
    scale = float(ctx.attr("scale", 0.0)) or 1.0 / float(np.sqrt(static_int(ctx, d_k, "d_k")))
    q = ctx.emit(R.multiply(q, relax.const(scale, "float32")))

    def at(x: relax.Expr, t: int) -> relax.Expr:  # token t: [B, H, 1, d]
        return ctx.emit(R.strided_slice(x, axes=[2], begin=[t], end=[t + 1], assume_inbound=True))

    outs = []
    for t in range(steps):
        k_t, v_t = at(k, t), at(v, t)
        if decay is not None:  # [B, H, 1, 1 or d_k] -> scales the rows of S
            state = ctx.emit(R.multiply(state, ctx.emit(R.permute_dims(at(decay, t), [0, 1, 3, 2]))))
        if beta is not None:
            retrieved = ctx.emit(R.matmul(k_t, state))  # [B, H, 1, d_v]
            v_t = ctx.emit(R.multiply(at(beta, t), ctx.emit(R.subtract(v_t, retrieved))))
        state = ctx.emit(R.add(state, ctx.emit(R.multiply(ctx.emit(R.permute_dims(k_t, [0, 1, 3, 2])), v_t))))
        outs.append(grouped_matmul(ctx, at(q, t), state, q_heads // kv_heads))  # [B, Hq, 1, d_v]
    y = ctx.emit(R.concat(outs, axis=2)) if len(outs) > 1 else outs[0]
    y = ctx.emit(R.permute_dims(y, [0, 2, 1, 3]))
    y = ctx.emit(R.reshape(y, relax_dims([batch, steps, q_heads * d_v])))
    return [R.astype(y, dtype), R.astype(state, state_dtype)]


@converter("onnx.TensorScatter", since=24)
def tensor_scatter(ctx: LowerCtx, node: Node):
    """Write `update` into a KV cache at per-batch offsets along `axis` (wrapping when circular).

    As a gather, so it vectorizes: cache position j of batch b takes update row
    s = j - write_indices[b] (mod the cache length when circular) when 0 <= s < update length.
    """
    past, update = ctx.input(0), ctx.input(1)
    dims, udims = ctx.shape(0), ctx.shape(1)
    rank = len(dims)
    axis = int(ctx.attr("axis", -2))
    axis = axis + rank if axis < 0 else axis
    if not 0 < axis < rank:
        raise ctx.error(f"axis {ctx.attr('axis', -2)} must be a sequence axis after the batch axis")
    mode = attr_str(ctx, "mode", "linear")
    if mode not in ("linear", "circular"):
        raise ctx.error(f"mode '{mode}' is not one of linear, circular")
    length, steps = dims[axis], udims[axis]
    batch_shape = [1] * rank
    batch_shape[0] = -1
    j = ctx.emit(R.reshape(ctx.emit(R.arange(0, length, 1, "int64")), relax_dims([1 if k != axis else length
                                                                                    for k in range(rank)])))
    if ctx.has_input(2):
        w = ctx.emit(R.reshape(ctx.emit(R.astype(ctx.input(2), "int64")), batch_shape))
        s = ctx.emit(R.subtract(j, w))  # [B, 1.., L, 1..]
    else:
        s = j
    if mode == "circular":
        s = ctx.emit(R.floor_mod(s, dim_tensor(ctx, length, [1])))
    steps_t = dim_tensor(ctx, steps, [1])
    inside = ctx.emit(R.logical_and(ctx.emit(R.greater_equal(s, relax.const(0, "int64"))),
                                    ctx.emit(R.less(s, steps_t))))
    idx = ctx.emit(R.clip(s, 0, steps - 1))
    out_idx_shape = list(udims)
    out_idx_shape[axis] = length
    idx = ctx.emit(R.broadcast_to(idx, relax_dims(out_idx_shape)))
    picked = ctx.emit(R.gather_elements(update, idx, axis=axis))
    return [R.where(inside, picked, past)]
