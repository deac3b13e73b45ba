"""fuse-conv-bn: fold an inference-form BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul before it.

In inference, BatchNormalization is a per-channel affine map y = a*x + d with
a = scale / sqrt(var + epsilon) and d = bias - mean * a. After a linear op whose
output channel o is computed by weights W[o] and bias b[o], that map folds:
W'[o] = a[o] * W[o], b'[o] = a[o] * b[o] + d[o]. The rules:

    BatchNormalization(Conv(x, W, b?))                 -> Conv(x, W', b')
    BatchNormalization(ConvTranspose(x, W, b?))        -> ConvTranspose(x, W', b')   (W is [Cin, Cout/group, ...])
    BatchNormalization(Gemm(A, B, C?))                 -> Gemm(A, B', C') with beta = 1
    BatchNormalization(MatMul(x, W) [+ c]), x 2-d      -> Gemm(x, W', c')

Each fires only when the weights and the BatchNormalization's four parameters are
known (constants, or ConstantOfShape splats: see `fuse_weights`), floating point,
the BatchNormalization has one result and no training mode, the linear op's result
has no other reader, and the fold does not grow the model's constants beyond the
pass's `max-bytes` (0 by default). Folding is done in float64 and cast back to the
weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.pass_manager import register_pass
from mdoc.rewrite import rewrite_rule

from .fuse_weights import Fold, FoldRule, FusePass, Known, bn_affine, channel_vector, folded, known_all, tensor_rank

BN_PARAMS = ("scale", "bias", "mean", "var")


def gemm_too_old(m) -> str | None:
    """Gemm before opset 7 broadcasts C only when told to (attribute `broadcast`): the folds build a 1-d C."""
    if m.model is not None and m.model.opset_of("onnx.Gemm") < 7:
        return "Gemm before opset 7 does not broadcast a 1-d C without broadcast=1"
    return None


def out_channels(op_type: str, w: Known, group: int) -> int | str:
    """How many output channels a Conv/ConvTranspose with weight `w` has (or why the weight is malformed)."""
    if len(w.shape) < 3:
        return f"weight has shape {list(w.shape)}; a {op_type} weight has at least 3 dims"
    if op_type == "ConvTranspose":
        if group < 1 or w.shape[0] % group:
            return f"weight has {w.shape[0]} input channels, not a multiple of group={group}"
        return w.shape[1] * group
    return w.shape[0]


def per_out_channel(op_type: str, a: np.ndarray, w_shape: tuple[int, ...], group: int) -> np.ndarray:
    """`a` (one value per output channel, or one for all) laid out to broadcast against a weight of `w_shape`."""
    rank = len(w_shape)
    if a.size == 1:
        return a.reshape((1,) * rank)
    if op_type == "ConvTranspose":  # weight [Cin, Cout/group, k...]: input channel i feeds group i // (Cin/group)
        cin, per_group = w_shape[0], w_shape[1]
        rows = a.reshape(group, per_group)[np.arange(cin) // (cin // group)]
        return rows.reshape((cin, per_group) + (1,) * (rank - 2))
    return a.reshape((-1,) + (1,) * (rank - 1))  # Conv: weight [Cout, Cin/group, k...]


def fold_out_affine(op_type: str, w: Known, b: Known | None, a: np.ndarray, d: np.ndarray, group: int,
                    *sources: Known) -> tuple:
    """New (weight, bias) of a Conv/ConvTranspose followed by y = a*y + d per output channel."""
    channels = out_channels(op_type, w, group)
    w2 = folded(w.f64 * per_out_channel(op_type, a, w.shape, group), w.shape, w.dtype, w, *sources)
    b0 = b.f64.reshape(-1) if b is not None else np.zeros(1)
    b2 = folded(np.broadcast_to(b0 * a + d, np.broadcast_shapes(b0.shape, a.shape, d.shape)),
                (channels,), w.dtype, b, *sources)
    return w2, b2


class _ConvBatchNorm(FoldRule):
    """BatchNormalization(Conv-like(x, W, b?)) ==> Conv-like(x, W', b')."""

    conv_op = "Conv"

    def pattern(self, op, x, w, b, scale, bias, mean, var):
        conv = op.call(f"onnx.{self.conv_op}", x, w, op.optional(b), _name="conv")
        return op.BatchNormalization(conv, scale, bias, mean, var, _name="bn")

    def plan(self, m):
        ks = known_all(m, "w", "b", *BN_PARAMS)
        if isinstance(ks, str):
            return ks
        w, b = ks["w"], ks.get("b")
        group = int(m.attr("conv", "group", 1))
        channels = out_channels(self.conv_op, w, group)
        if isinstance(channels, str):
            return channels
        if b is not None and b.shape != (channels,):
            return f"the bias has shape {list(b.shape)}, not [{channels}]"
        affine = bn_affine(m, "bn", ks, channels)
        if isinstance(affine, str):
            return affine
        params = [ks[n] for n in BN_PARAMS]
        w2, b2 = fold_out_affine(self.conv_op, w, b, *affine, group, *params)
        return Fold({"w": w2, "b": b2}, [w, *([b] if b else []), *params])

    def build(self, op, m, fold):
        conv = m.node("conv")
        return op.call(conv.op, m["x"], fold.weights["w"].build(op), fold.weights["b"].build(op),
                       _name=conv.name, **m.attrs("conv"))


@rewrite_rule("fuse-conv-bn", benefit=3)
class ConvBatchNorm(_ConvBatchNorm):
    """BatchNormalization(Conv(x, W, b?)) ==> Conv(x, W', b'): the normalization folded into the weights."""

    conv_op = "Conv"


@rewrite_rule("fuse-convtranspose-bn", benefit=3)
class ConvTransposeBatchNorm(_ConvBatchNorm):
    """BatchNormalization(ConvTranspose(x, W, b?)) ==> ConvTranspose(x, W', b')."""

    conv_op = "ConvTranspose"


@rewrite_rule("fuse-gemm-bn", benefit=3)
class GemmBatchNorm(FoldRule):
    """BatchNormalization(Gemm(A, B, C?)) ==> Gemm(A, B', C') with beta = 1: columns of B scaled, C shifted."""

    def pattern(self, op, a, b, c, scale, bias, mean, var):
        return op.BatchNormalization(op.Gemm(a, b, op.optional(c), _name="gemm"), scale, bias, mean, var,
                                     _name="bn")

    def plan(self, m):
        if reason := gemm_too_old(m):
            return reason
        ks = known_all(m, "b", "c", *BN_PARAMS)
        if isinstance(ks, str):
            return ks
        b, c = ks["b"], ks.get("c")
        if len(b.shape) != 2:
            return f"B has shape {list(b.shape)}, not 2-d"
        trans_b = int(m.attr("gemm", "transB", 0))
        n = b.shape[0] if trans_b else b.shape[1]
        affine = bn_affine(m, "bn", ks, n)
        if isinstance(affine, str):
            return affine
        a, d = affine
        params = [ks[k] for k in BN_PARAMS]
        scale_b = a.reshape(-1, 1) if trans_b else a.reshape(1, -1)
        b2 = folded(b.f64 * scale_b, b.shape, b.dtype, b, *params)
        beta = float(m.attr("gemm", "beta", 1.0))
        if c is not None:
            if len(c.shape) > 2 or np.broadcast_shapes(c.shape, (1, n))[-1] != n:
                return f"C has shape {list(c.shape)}, which does not broadcast to [M, {n}]"
            c_data = beta * c.f64 * a + d
            c_shape = np.broadcast_shapes(c.shape, (n,))
        else:
            c_data, c_shape = d, (n,)
        c2 = folded(np.broadcast_to(c_data, np.broadcast_shapes(c_data.shape, c_shape)), c_shape, b.dtype,
                    c, *params)
        return Fold({"b": b2, "c": c2}, [b, *([c] if c else []), *params])

    def build(self, op, m, fold):
        gemm = m.node("gemm")
        attrs = {**m.attrs("gemm"), "beta": 1.0}
        return op.Gemm(m["a"], fold.weights["b"].build(op), fold.weights["c"].build(op), _name=gemm.name,
                       **attrs)


class _MatMulBatchNorm(FoldRule):
    """BatchNormalization(MatMul(x, W) [+ c]) with x 2-d ==> Gemm(x, W', c')."""

    commute = True  # the Add may read the MatMul on either side

    def plan(self, m):
        if reason := gemm_too_old(m):
            return reason
        ks = known_all(m, "w", *(("c",) if "c" in m else ()), *BN_PARAMS)
        if isinstance(ks, str):
            return ks
        w = ks["w"]
        if len(w.shape) != 2:
            return f"W has shape {list(w.shape)}, not 2-d"
        if tensor_rank(m["x"]) != 2:
            return ("x is not known to be 2-d: BatchNormalization normalizes axis 1, which is the MatMul's "
                    "last axis only for 2-d x")
        n = w.shape[1]
        affine = bn_affine(m, "bn", ks, n)
        if isinstance(affine, str):
            return affine
        a, d = affine
        params = [ks[k] for k in BN_PARAMS]
        w2 = folded(w.f64 * a.reshape(1, -1), w.shape, w.dtype, w, *params)
        c = ks.get("c")
        c0 = np.zeros(1)
        if c is not None:
            c0 = channel_vector(c, 2, n)
            if isinstance(c0, str):
                return c0
        c2 = folded(np.broadcast_to(c0 * a + d, np.broadcast_shapes(c0.shape, a.shape, d.shape)), (n,),
                    w.dtype, c, *params)
        return Fold({"w": w2, "c": c2}, [w, *([c] if c else []), *params])

    def build(self, op, m, fold):
        return op.Gemm(m["x"], fold.weights["w"].build(op), fold.weights["c"].build(op),
                       _name=m.node("matmul").name)


@rewrite_rule("fuse-matmul-bn", benefit=3)
class MatMulBatchNorm(_MatMulBatchNorm):
    """BatchNormalization(MatMul(x, W)) with x 2-d ==> Gemm(x, W', c')."""

    def pattern(self, op, x, w, scale, bias, mean, var):
        return op.BatchNormalization(op.MatMul(x, w, _name="matmul"), scale, bias, mean, var, _name="bn")


@rewrite_rule("fuse-matmul-add-bn", benefit=4)
class MatMulAddBatchNorm(_MatMulBatchNorm):
    """BatchNormalization(MatMul(x, W) + c) with x 2-d ==> Gemm(x, W', c')."""

    def pattern(self, op, x, w, c, scale, bias, mean, var):
        return op.BatchNormalization(op.Add(op.MatMul(x, w, _name="matmul"), c, _name="add"),
                                     scale, bias, mean, var, _name="bn")


@register_pass("fuse-conv-bn")
@dataclass(frozen=True)
class FuseConvBn(FusePass):
    """Fold inference BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul(+Add) before it."""

    rule_names = (ConvBatchNorm, ConvTransposeBatchNorm, GemmBatchNorm, MatMulBatchNorm, MatMulAddBatchNorm)
