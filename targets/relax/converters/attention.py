"""Attention (opset 23, 24, 25) and RotaryEmbedding as compositions of Relax ops.

    scores = (Q * scale) @ K^T            one batched matmul per (batch, kv head)
    scores = softcap * tanh(scores / softcap)            when softcap > 0
    probs  = softmax(scores + bias)       bias: attn_mask (bool -> 0 / -inf, padded to the
                                          kv length with -inf), causal and sliding-window
                                          masks, padding from nonpad_kv_seqlen
    probs  = 0 on rows whose bias is all -inf (no key may be attended)
    Y      = probs @ V

Grouped-query attention (q_num_heads a multiple of kv_num_heads) does not repeat K and V:
Q is viewed as [batch, kv_heads, group, seq, head] and K, V as [batch, kv_heads, 1, kv_seq,
head], so each kv head is read once per group by the matmul's broadcasting. The KV cache
(`past_key`, `past_value`) is concatenated on the sequence axis and returned as `present_*`;
causal and window masks are offset by the past length (or, for an external cache given as
`nonpad_kv_seqlen`, per batch by `nonpad - q_seq`). float16 and bfloat16 inputs are computed
in float32 and cast back. The semantics follow onnx's reference implementation
(`onnx/reference/ops/op_attention.py`), which the conformance outputs come from.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx, is_static, onnx_to_tvm_dtype
from ..registry import converter
from ._common import float_const, relax_dims, static_int

R = relax.op
NEG_INF = float("-inf")


def compute_dtype(dtype: str) -> str:
    """The dtype attention math runs in: float32 for the 16-bit floats, else the input's."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def split_heads(ctx: LowerCtx, x: relax.Expr, heads: int, what: str) -> relax.Expr:
    """[batch, seq, heads * size] -> [batch, heads, seq, size]."""
    b, s, hidden = ctx.shape_of(x)
    hidden = static_int(ctx, hidden, f"the hidden size of {what}")
    if hidden % heads:
        raise ctx.error(f"{what}'s hidden size {hidden} is not a multiple of its {heads} heads")
    x = ctx.emit(R.reshape(x, relax_dims([b, s, heads, hidden // heads])))
    return ctx.emit(R.permute_dims(x, [0, 2, 1, 3]))


def grouped_matmul(ctx: LowerCtx, a: relax.Expr, b: relax.Expr, group: int, *,
                   transpose_b: bool = False) -> relax.Expr:
    """a [B, H, M, K] @ b [B, H / group, K', N'] where query head h uses kv head h // group."""
    if group == 1:
        return ctx.emit(ctx.kernels.matmul(ctx, a, b, transpose_b=transpose_b))
    bsz, heads, m, k = ctx.shape_of(a)
    _, kv_heads, bm, bn = ctx.shape_of(b)
    a5 = ctx.emit(R.reshape(a, relax_dims([bsz, kv_heads, group, m, k])))
    b5 = ctx.emit(R.reshape(b, relax_dims([bsz, kv_heads, 1, bm, bn])))
    y = ctx.emit(ctx.kernels.matmul(ctx, a5, b5, transpose_b=transpose_b))
    dims = ctx.shape_of(y)
    return ctx.emit(R.reshape(y, relax_dims([bsz, heads, dims[3], dims[4]])))


def positions(ctx: LowerCtx, n: Any, shape: list[int]) -> relax.Expr:
    """0 .. n-1 (int64) laid out along the axis of `shape` that holds -1."""
    if is_static(n):
        return relax.const(np.arange(int(n)).reshape([int(n) if d == -1 else 1 for d in shape]), "int64")
    return ctx.emit(R.reshape(ctx.emit(R.arange(0, n, 1, "int64")), [n if d == -1 else 1 for d in shape]))


def dim_tensor(ctx: LowerCtx, d: Any, shape: list[int]) -> relax.Expr:
    """A (possibly symbolic) dim as an int64 tensor of `shape` (all ones)."""
    if is_static(d):
        return relax.const(np.full(shape, int(d)), "int64")
    return ctx.emit(R.reshape(ctx.emit(R.shape_to_tensor(relax.ShapeExpr([d]))), shape))


def _window_allowed(ctx: LowerCtx, sq: Any, skv: Any, offset: relax.Expr | int, *, causal: bool,
                    left: int, right: int) -> relax.Expr | None:
    """Where query i may see key j: j <= i + offset (causal), |i + offset - j| within the window."""
    if not causal and left < 0 and right < 0:
        return None
    if isinstance(offset, int) and is_static(sq) and is_static(skv):
        diff = np.arange(int(sq)).reshape(-1, 1) + offset - np.arange(int(skv)).reshape(1, -1)
        allowed = np.ones(diff.shape, bool)
        if causal:
            allowed &= diff >= 0
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        return relax.const(allowed)
    i = positions(ctx, sq, [-1, 1])
    j = positions(ctx, skv, [1, -1])
    if not isinstance(offset, int):
        i = ctx.emit(R.add(i, offset))  # [batch, 1, 1, 1] + [sq, 1]
    elif offset:
        i = ctx.emit(R.add(i, relax.const(offset, "int64")))
    diff = ctx.emit(R.subtract(i, j))
    conds = []
    if causal:
        conds.append(R.greater_equal(diff, relax.const(0, "int64")))
    if left >= 0:
        conds.append(R.less_equal(diff, relax.const(left, "int64")))
    if right >= 0:
        conds.append(R.greater_equal(diff, relax.const(-right, "int64")))
    allowed = ctx.emit(conds[0])
    for c in conds[1:]:
        allowed = ctx.emit(R.logical_and(allowed, ctx.emit(c)))
    return allowed


def attention_bias(ctx: LowerCtx, *, sq: Any, skv: Any, past_len: Any, nonpad: relax.Expr | None,
                   dtype: str) -> relax.Expr | None:
    """The additive bias (0 or -inf where masked, or the float mask's values), broadcastable to
    [batch, heads, sq, skv]; None when nothing is masked."""
    zero, neg = float_const(0.0, dtype), float_const(NEG_INF, dtype)
    terms = []
    if ctx.has_input(3):
        mask = ctx.input(3)
        mdims = ctx.shape_of(mask)
        if str(mask.ty.dtype) == "bool":
            mask = ctx.emit(R.where(mask, zero, neg))
        elif str(mask.ty.dtype) != dtype:
            mask = ctx.emit(R.astype(mask, dtype))
        short = skv - mdims[-1]
        if not is_static(short):
            raise ctx.error(f"attn_mask's last dim {mdims[-1]} must be static to pad it to the kv length {skv}")
        if int(short) > 0:  # keys past the mask are masked out (onnx pads with -inf / False)
            mask = ctx.emit(R.nn.pad(mask, [0, 0] * (len(mdims) - 1) + [0, int(short)], pad_value=NEG_INF))
        terms.append(mask)
    causal = bool(ctx.attr("is_causal", 0))
    left, right = int(ctx.attr("left_window_size", -1)), int(ctx.attr("right_window_size", -1))
    offset: relax.Expr | int
    if nonpad is not None:
        # an external cache: batch b holds nonpad[b] valid keys, the queries being the last sq
        lens = ctx.emit(R.reshape(ctx.emit(R.astype(nonpad, "int64")), [-1, 1, 1, 1]))
        offset = ctx.emit(R.subtract(lens, dim_tensor(ctx, sq, [1, 1, 1, 1])))
    else:
        offset = int(past_len) if is_static(past_len) else dim_tensor(ctx, past_len, [1, 1])
    allowed = _window_allowed(ctx, sq, skv, offset, causal=causal, left=left, right=right)
    if nonpad is not None:
        valid = ctx.emit(R.less(positions(ctx, skv, [1, 1, 1, -1]), lens))  # [batch, 1, 1, skv]
        allowed = valid if allowed is None else ctx.emit(R.logical_and(allowed, valid))
    if allowed is not None:
        terms.append(ctx.emit(R.where(allowed, zero, neg)))
    if not terms:
        return None
    bias = terms[0]
    for t in terms[1:]:
        bias = ctx.emit(R.add(bias, t))
    return bias


@converter("onnx.Attention", since=23)
def attention(ctx: LowerCtx, node: Node):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    dtype = str(q.ty.dtype)
    cdt = compute_dtype(dtype)
    rank = len(ctx.shape_of(q))
    if rank == 3:
        q_heads, kv_heads = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if q_heads is None or kv_heads is None:
            raise ctx.error("3-D Q, K, V need the q_num_heads and kv_num_heads attributes")
        q = split_heads(ctx, q, int(q_heads), "Q")
        k = split_heads(ctx, k, int(kv_heads), "K")
        v = split_heads(ctx, v, int(kv_heads), "V")
    elif rank != 4:
        raise ctx.error(f"Q has rank {rank}; Attention takes 3-D or 4-D inputs")
    past_k, past_v = ctx.input(4) if ctx.has_input(4) else None, ctx.input(5) if ctx.has_input(5) else None
    if (past_k is None) != (past_v is None):
        raise ctx.error("past_key and past_value must be given together")
    nonpad = ctx.input(6) if ctx.num_inputs > 6 and ctx.has_input(6) else None
    if nonpad is not None and past_k is not None:
        raise ctx.error("nonpad_kv_seqlen cannot be combined with past_key / past_value")
    past_len = 0
    if past_k is not None:
        past_len = ctx.shape_of(past_k)[2]
        k = ctx.emit(R.concat([past_k, k], axis=2))
        v = ctx.emit(R.concat([past_v, v], axis=2))
    present_k, present_v = k, v

    bsz, q_heads, sq, head = ctx.shape_of(q)
    kv_heads, skv = ctx.shape_of(k)[1], ctx.shape_of(k)[2]
    q_heads = static_int(ctx, q_heads, "the number of query heads")
    kv_heads = static_int(ctx, kv_heads, "the number of kv heads")
    if q_heads % kv_heads:
        raise ctx.error(f"{q_heads} query heads are not a multiple of {kv_heads} kv heads")
    group = q_heads // kv_heads

    scale = ctx.attr("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(static_int(ctx, head, "the head size"))
    if cdt != dtype:
        q, k, v = (ctx.emit(R.astype(t, cdt)) for t in (q, k, v))
    q = ctx.emit(R.multiply(q, float_const(scale, cdt)))
    scores = grouped_matmul(ctx, q, k, group, transpose_b=True)  # [batch, q_heads, sq, skv]
    softcap = float(ctx.attr("softcap", 0.0))
    if softcap > 0:
        capped = ctx.emit(R.tanh(ctx.emit(R.divide(scores, float_const(softcap, cdt)))))
        scores = ctx.emit(R.multiply(capped, float_const(softcap, cdt)))
    qk = scores  # modes 0 and 1 (onnx's reference returns the softcapped scores for both)

    bias = attention_bias(ctx, sq=sq, skv=skv, past_len=past_len, nonpad=nonpad, dtype=cdt)
    logits = scores if bias is None else ctx.emit(R.add(scores, bias))
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    if mode == 2:
        qk = logits
    precision = ctx.attr("softmax_precision")
    sdt = onnx_to_tvm_dtype(precision, "softmax_precision") if precision is not None else cdt
    sdt = sdt if sdt == "float64" else cdt  # float32 already covers the 16-bit precisions
    probs = ctx.emit(R.nn.softmax(logits if sdt == cdt else ctx.emit(R.astype(logits, sdt)), axis=-1))
    if sdt != cdt:
        probs = ctx.emit(R.astype(probs, cdt))
    if bias is not None:
        # rows with no attendable key: softmax gives NaN (all -inf), onnx gives 0. (Not
        # `max(bias) == -inf`: TOPI's max starts from the lowest finite float, not -inf.)
        open_ = ctx.emit(R.astype(ctx.emit(R.not_equal(bias, float_const(NEG_INF, cdt))), "float32"))
        none_left = ctx.emit(R.equal(ctx.emit(R.max(open_, axis=-1, keepdims=True)), float_const(0.0, "float32")))
        probs = ctx.emit(R.where(none_left, float_const(0.0, cdt), probs))
    if mode == 3:
        qk = probs
    y = grouped_matmul(ctx, probs, v, group)  # [batch, q_heads, sq, v_head]
    if rank == 3:
        y = ctx.emit(R.permute_dims(y, [0, 2, 1, 3]))
        vdims = ctx.shape_of(y)
        y = ctx.emit(R.reshape(y, relax_dims([bsz, sq, vdims[2] * vdims[3]])))
    if cdt != dtype:
        y, qk = R.astype(y, dtype), R.astype(qk, dtype)
    return [y, present_k, present_v, qk]


@converter("onnx.RotaryEmbedding", since=23)
def rotary_embedding(ctx: LowerCtx, node: Node):
    """Rotate pairs (x1, x2) of the first `rotary_embedding_dim` features of every head by the
    cached angles: (cos x1 - sin x2, sin x1 + cos x2). Pairs are halves of the rotated part,
    or neighbours when `interleaved`; the caches are indexed by `position_ids` when given."""
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    if len(dims) == 4:  # [B, H, S, D] -> [B, S, H, D]
        x = ctx.emit(R.permute_dims(x, [0, 2, 1, 3]))
    elif len(dims) == 3:
        heads = ctx.attr("num_heads")
        if not heads:
            raise ctx.error("a 3-D input needs the num_heads attribute")
        hidden = static_int(ctx, dims[2], "the hidden size")
        x = ctx.emit(R.reshape(x, relax_dims([dims[0], dims[1], int(heads), hidden // int(heads)])))
    else:
        raise ctx.error(f"input has rank {len(dims)}; RotaryEmbedding takes 3-D or 4-D inputs")
    bsz, seq, heads, head = ctx.shape_of(x)
    head = static_int(ctx, head, "the head size")
    rot = int(ctx.attr("rotary_embedding_dim", 0)) or head
    cos, sin = ctx.input(1), ctx.input(2)
    if ctx.has_input(3):
        ids = ctx.input(3)
        cos, sin = ctx.emit(R.take(cos, ids, axis=0)), ctx.emit(R.take(sin, ids, axis=0))
    if static_int(ctx, ctx.shape_of(cos)[-1], "the cache width") != rot // 2:
        raise ctx.error(f"the caches hold {ctx.shape_of(cos)[-1]} angles per position, "
                        f"rotary_embedding_dim / 2 is {rot // 2}")
    cos, sin = ctx.emit(R.expand_dims(cos, 2)), ctx.emit(R.expand_dims(sin, 2))  # [B, S, 1, rot/2]

    def part(begin: int, end: int, step: int = 1) -> relax.Expr:
        return ctx.emit(R.strided_slice(x, axes=[3], begin=[begin], end=[end], strides=[step], assume_inbound=True))

    interleaved = bool(ctx.attr("interleaved", 0))
    x1, x2 = (part(0, rot, 2), part(1, rot, 2)) if interleaved else (part(0, rot // 2), part(rot // 2, rot))
    real = ctx.emit(R.subtract(ctx.emit(R.multiply(cos, x1)), ctx.emit(R.multiply(sin, x2))))
    imag = ctx.emit(R.add(ctx.emit(R.multiply(sin, x1)), ctx.emit(R.multiply(cos, x2))))
    if interleaved:
        pairs = ctx.emit(R.concat([ctx.emit(R.expand_dims(real, 4)), ctx.emit(R.expand_dims(imag, 4))], axis=4))
        rotated = ctx.emit(R.reshape(pairs, relax_dims([bsz, seq, heads, rot])))
    else:
        rotated = ctx.emit(R.concat([real, imag], axis=3))
    y = ctx.emit(R.concat([rotated, part(rot, head)], axis=3)) if rot < head else rotated
    if len(dims) == 4:
        return [R.permute_dims(y, [0, 2, 1, 3])]
    return [R.reshape(y, relax_dims(dims))]
