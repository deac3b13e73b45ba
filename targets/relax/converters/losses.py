"""Loss ops evaluated for inference: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Both pick, for every sample n and spatial position d, the class `target[n, d]` out of
the input [N, C, d1, ...] (log-probabilities for NLL; SoftmaxCrossEntropyLoss takes
`log_softmax` over C first and can return it as a second result):

    loss[n, d] = -weight[t] * input[n, t, d]      t = target[n, d]; 0 where t == ignore_index
    reduction  none: loss | sum: sum(loss) | mean: sum(loss) / sum(weight[t] over kept d)

(`mean` without weights nor ignore_index is the plain mean.) Targets equal to
ignore_index may lie outside [0, C): they are clamped before the gather and their loss
and weight zeroed, as onnx's reference does.
"""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import attr_str, float_const

R = relax.op


def nll(ctx: LowerCtx, logp: relax.Expr, target: relax.Expr, weight: relax.Expr | None) -> relax.Expr:
    """The reduced (or per-position) negative log-likelihood of `target` under `logp` [N, C, ...]."""
    dtype = str(logp.ty.dtype)
    classes = ctx.shape_of(logp)[1]
    reduction = attr_str(ctx, "reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise ctx.error(f"reduction '{reduction}' is not one of none, sum, mean")
    ignore = ctx.attr("ignore_index")
    target = ctx.emit(R.astype(target, "int64")) if str(target.ty.dtype) != "int64" else target
    idx = ctx.emit(R.clip(target, 0, classes - 1))
    picked = ctx.emit(R.gather_elements(logp, ctx.emit(R.expand_dims(idx, 1)), axis=1))
    loss = ctx.emit(R.negative(ctx.emit(R.squeeze(picked, [1]))))
    kept = None
    if ignore is not None:
        kept = ctx.emit(R.not_equal(target, relax.const(int(ignore), "int64")))
    w = None
    if weight is not None:
        w = ctx.emit(R.take(weight, idx, axis=0))
        if kept is not None:
            w = ctx.emit(R.where(kept, w, float_const(0.0, dtype)))
    elif kept is not None:
        w = ctx.emit(R.astype(kept, dtype))
    if w is not None:
        loss = ctx.emit(R.multiply(loss, w))
    if reduction == "none":
        return loss
    total = ctx.emit(R.sum(loss))
    if reduction == "sum":
        return total
    if w is None:
        return R.mean(loss)
    return R.divide(total, ctx.emit(R.sum(w)))


@converter("onnx.NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(ctx: LowerCtx, node: Node):
    return [nll(ctx, ctx.input(0), ctx.input(1), ctx.input(2) if ctx.has_input(2) else None)]


@converter("onnx.SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(ctx: LowerCtx, node: Node):
    logp = ctx.emit(R.nn.log_softmax(ctx.input(0), axis=1))
    return [nll(ctx, logp, ctx.input(1), ctx.input(2) if ctx.has_input(2) else None), logp]
