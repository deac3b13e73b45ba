"""fuse-conv-affine: fold per-channel arithmetic and zero padding into the Conv (or BatchNormalization) beside it.

A Mul, Div, Add or Sub by a constant that is the same along every axis but the
channels (shape [C,1,1], [1,C,1,1], [1] or a scalar: "per channel") is an affine
map y = a*x + d per channel, and folds into a neighbour that is linear per channel:

    Mul/Div(Conv(x, W, b?), k)          -> Conv(x, W*k, b*k)        (ConvTranspose too)
    Add/Sub(Conv(x, W, b?), c)          -> Conv(x, W, b ± c)        (ConvTranspose too)
    Mul/Div/Add/Sub(BatchNormalization(x, s, β, μ, σ²), k)
                                        -> BatchNormalization(x, s*k, β*k (+ c), μ, σ²)   one node stays
    Conv(BatchNormalization(x, ...) or Mul/Div/Add/Sub(x, k), W, b?), no padding
                                        -> Conv(x, W', b')          W' scaled per input channel,
                                                                    b' += Σ W * shift
    Conv/AveragePool(Pad(x, p, 0))      -> Conv/AveragePool(x) with p added to its pads

An affine map before a Conv folds only when the Conv pads nothing: padding inserts
zeros after the map, where the folded Conv would see the map of zero. A Pad folds
into an AveragePool only when the pool counts padding (count_include_pad=1, or no
padding of its own) and does not round its output size up (ceil_mode=0), so the
average divides by the whole window exactly as after an explicit zero Pad.

Constants may be ConstantOfShape splats; the byte rules of `fuse_weights` apply
(max-bytes of growth per run, 0 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.pass_manager import register_pass
from mdoc.rewrite import Rule, rewrite_rule

from .fuse_conv_bn import BN_PARAMS, fold_out_affine, out_channels
from .fuse_weights import (Fold, FoldRule, FusePass, Known, bn_affine, channel_vector, folded, inference_form,
                           known_all, sum_over, tensor_rank)

ARITH = ("Mul", "Div", "Add", "Sub")


def arith_affine(op_type: str, k: Known, rank: int, channels: int) -> tuple[np.ndarray, np.ndarray] | str:
    """x OP k as y = a*x + d per channel: (a, d) in float64, each (channels,) or (1,)."""
    vec = channel_vector(k, rank, channels)
    if isinstance(vec, str):
        return vec
    one, zero = np.ones(1), np.zeros(1)
    if op_type == "Mul":
        return vec, zero
    if op_type == "Div":
        if np.any(vec == 0):
            return "the divisor has a zero"
        return 1.0 / vec, zero
    if op_type == "Add":
        return one, vec
    return one, -vec  # Sub


# -- after a Conv ------------------------------------------------------------------------
class _ConvThenArith(FoldRule):
    """Mul/Div/Add/Sub(Conv-like(x, W, b?), k) ==> Conv-like(x, W', b')."""

    conv_op = "Conv"
    arith = "Mul"
    commute = True  # Mul/Add: the Conv on either side

    def pattern(self, op, x, w, b, k):
        conv = op.call(f"onnx.{self.conv_op}", x, w, op.optional(b), _name="conv")
        return op.call(f"onnx.{self.arith}", conv, k, _name="arith")

    def plan(self, m):
        ks = known_all(m, "w", "b", "k")
        if isinstance(ks, str):
            return ks
        w, b, k = ks["w"], ks.get("b"), ks["k"]
        group = int(m.attr("conv", "group", 1))
        channels = out_channels(self.conv_op, w, group)
        if isinstance(channels, str):
            return channels
        if b is not None and b.shape != (channels,):
            return f"the bias has shape {list(b.shape)}, not [{channels}]"
        if k.dtype != w.dtype:
            return f"k has element type {k.dtype}, the weight {w.dtype}"
        affine = arith_affine(self.arith, k, len(w.shape), channels)
        if isinstance(affine, str):
            return affine
        w2, b2 = fold_out_affine(self.conv_op, w, b, *affine, group, k)
        weights = {"b": b2} if self.arith in ("Add", "Sub") else {"w": w2, "b": b2}
        if self.arith in ("Mul", "Div") and b is None:
            del weights["b"]  # scaling a Conv without bias needs none
        consumed = [k, *([b] if b is not None else []), *([w] if "w" in weights else [])]
        return Fold(weights, consumed)

    def build(self, op, m, fold):
        conv = m.node("conv")
        w = fold.weights["w"].build(op) if "w" in fold.weights else m["w"]
        b = fold.weights["b"].build(op) if "b" in fold.weights else None
        return op.call(conv.op, m["x"], w, b, _name=conv.name, **m.attrs("conv"))


@rewrite_rule("fuse-conv-mul", benefit=3)
class ConvMul(_ConvThenArith):
    """Conv(x, W, b?) * k ==> Conv(x, W*k, b*k), k per output channel."""

    arith = "Mul"


@rewrite_rule("fuse-conv-div", benefit=3)
class ConvDiv(_ConvThenArith):
    """Conv(x, W, b?) / k ==> Conv(x, W/k, b/k), k per output channel."""

    arith = "Div"


@rewrite_rule("fuse-conv-add", benefit=3)
class ConvAdd(_ConvThenArith):
    """Conv(x, W, b?) + c ==> Conv(x, W, b + c), c per output channel."""

    arith = "Add"


@rewrite_rule("fuse-conv-sub", benefit=3)
class ConvSub(_ConvThenArith):
    """Conv(x, W, b?) - c ==> Conv(x, W, b - c), c per output channel."""

    arith = "Sub"


@rewrite_rule("fuse-convtranspose-mul", benefit=3)
class ConvTransposeMul(_ConvThenArith):
    """ConvTranspose(x, W, b?) * k ==> ConvTranspose(x, W', b*k), k per output channel."""

    conv_op, arith = "ConvTranspose", "Mul"


@rewrite_rule("fuse-convtranspose-div", benefit=3)
class ConvTransposeDiv(_ConvThenArith):
    """ConvTranspose(x, W, b?) / k ==> ConvTranspose(x, W', b/k), k per output channel."""

    conv_op, arith = "ConvTranspose", "Div"


@rewrite_rule("fuse-convtranspose-add", benefit=3)
class ConvTransposeAdd(_ConvThenArith):
    """ConvTranspose(x, W, b?) + c ==> ConvTranspose(x, W, b + c), c per output channel."""

    conv_op, arith = "ConvTranspose", "Add"


@rewrite_rule("fuse-convtranspose-sub", benefit=3)
class ConvTransposeSub(_ConvThenArith):
    """ConvTranspose(x, W, b?) - c ==> ConvTranspose(x, W, b - c), c per output channel."""

    conv_op, arith = "ConvTranspose", "Sub"


# -- after a BatchNormalization that stays ---------------------------------------------------
class _BatchNormThenArith(FoldRule):
    """Mul/Div/Add/Sub(BatchNormalization(x, s, β, μ, σ²), k) ==> BatchNormalization(x, s', β', μ, σ²)."""

    arith = "Mul"
    commute = True

    def pattern(self, op, x, scale, bias, mean, var, k):
        bn = op.BatchNormalization(x, scale, bias, mean, var, _name="bn")
        return op.call(f"onnx.{self.arith}", bn, k, _name="arith")

    def plan(self, m):
        reason = inference_form(m, "bn")
        if reason:
            return reason
        ks = known_all(m, "scale", "bias", "k")
        if isinstance(ks, str):
            return ks
        s, beta, k = ks["scale"], ks["bias"], ks["k"]
        if len(s.shape) != 1 or beta.shape != s.shape:
            return f"scale and bias have shapes {list(s.shape)} and {list(beta.shape)}, not one [C]"
        rank = tensor_rank(m.node("bn").outputs[0]) or tensor_rank(m["x"])
        if rank is None or rank < 2:
            return "the BatchNormalization's rank is unknown (run infer-shapes first)"
        affine = arith_affine(self.arith, k, rank, s.shape[0])
        if isinstance(affine, str):
            return affine
        a, d = affine
        s2 = folded(np.broadcast_to(s.f64 * a, np.broadcast_shapes(s.data.shape, a.shape)), s.shape, s.dtype, s, k)
        b2 = folded(np.broadcast_to(beta.f64 * a + d, np.broadcast_shapes(beta.data.shape, a.shape, d.shape)),
                    beta.shape, beta.dtype, beta, k)
        weights = {"scale": s2, "bias": b2} if self.arith in ("Mul", "Div") else {"bias": b2}
        return Fold(weights, [k, beta, *([s] if "scale" in weights else [])])

    def build(self, op, m, fold):
        bn = m.node("bn")
        scale = fold.weights["scale"].build(op) if "scale" in fold.weights else m["scale"]
        return op.BatchNormalization(m["x"], scale, fold.weights["bias"].build(op), m["mean"], m["var"],
                                     _name=bn.name, **m.attrs("bn"))


@rewrite_rule("fuse-bn-mul", benefit=2)
class BatchNormMul(_BatchNormThenArith):
    """BatchNormalization(x, s, β, μ, σ²) * k ==> BatchNormalization(x, s*k, β*k, μ, σ²)."""

    arith = "Mul"


@rewrite_rule("fuse-bn-div", benefit=2)
class BatchNormDiv(_BatchNormThenArith):
    """BatchNormalization(x, s, β, μ, σ²) / k ==> BatchNormalization(x, s/k, β/k, μ, σ²)."""

    arith = "Div"


@rewrite_rule("fuse-bn-add", benefit=2)
class BatchNormAdd(_BatchNormThenArith):
    """BatchNormalization(x, s, β, μ, σ²) + c ==> BatchNormalization(x, s, β + c, μ, σ²)."""

    arith = "Add"


@rewrite_rule("fuse-bn-sub", benefit=2)
class BatchNormSub(_BatchNormThenArith):
    """BatchNormalization(x, s, β, μ, σ²) - c ==> BatchNormalization(x, s, β - c, μ, σ²)."""

    arith = "Sub"


# -- before a Conv that pads nothing ------------------------------------------------------------
def pads_nothing(m, conv: str) -> str | None:
    """None when Conv `conv` reads no padding (so a per-channel shift of its input stays a constant shift)."""
    auto = m.attr(conv, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return f"the Conv pads its input (auto_pad={auto}); padding would see the map of zero, not zero"
    pads = m.attr(conv, "pads", None)
    if auto == "NOTSET" and pads is not None and any(pads):
        return f"the Conv pads its input (pads={list(pads)}); padding would see the map of zero, not zero"
    return None


def per_in_channel(v: np.ndarray, w_shape: tuple[int, ...], group: int) -> np.ndarray:
    """`v` (one value per input channel of the Conv, or one for all) laid out against weight [O, Cin/group, k...]."""
    rank = len(w_shape)
    if v.size == 1:
        return v.reshape((1,) * rank)
    out, per_group = w_shape[0], w_shape[1]
    if group == 1:
        return v.reshape((1, per_group) + (1,) * (rank - 2))
    idx = (np.arange(out) // (out // group))[:, None] * per_group + np.arange(per_group)[None, :]
    return v[idx].reshape((out, per_group) + (1,) * (rank - 2))


class _AffineThenConv(FoldRule):
    """Conv(affine(x), W, b?) with no padding ==> Conv(x, W', b'): the map folded per input channel."""

    def affine(self, m, ks: dict[str, Known], rank: int, channels: int):
        raise NotImplementedError

    def operands(self) -> tuple[str, ...]:
        return ()

    def plan(self, m):
        reason = pads_nothing(m, "conv")
        if reason:
            return reason
        ks = known_all(m, "w", "b", *self.operands())
        if isinstance(ks, str):
            return ks
        w, b = ks["w"], ks.get("b")
        group = int(m.attr("conv", "group", 1))
        if len(w.shape) < 3:
            return f"weight has shape {list(w.shape)}; a Conv weight has at least 3 dims"
        if group < 1 or w.shape[0] % group:
            return f"weight has {w.shape[0]} output channels, not a multiple of group={group}"
        if b is not None and b.shape != (w.shape[0],):
            return f"the bias has shape {list(b.shape)}, not [{w.shape[0]}]"
        affine = self.affine(m, ks, len(w.shape), w.shape[1] * group)
        if isinstance(affine, str):
            return affine
        a, d = affine
        sources = [ks[n] for n in self.operands()]
        weights = {}
        if np.any(a != 1):
            weights["w"] = folded(w.f64 * per_in_channel(a, w.shape, group), w.shape, w.dtype, w, *sources)
        if np.any(d != 0):
            shift = sum_over(w.f64 * per_in_channel(d, w.shape, group), w.shape, tuple(range(1, len(w.shape))))
            b0 = b.f64.reshape(-1) if b is not None else np.zeros(1)
            total = b0 + shift.reshape(-1)
            weights["b"] = folded(np.broadcast_to(total, np.broadcast_shapes(total.shape, (1,))), (w.shape[0],),
                                  w.dtype, w, b, *sources)
        consumed = sources + [k for n, k in (("w", w), ("b", b)) if n in weights and k is not None]
        return Fold(weights, consumed)

    def build(self, op, m, fold):
        conv = m.node("conv")
        w = fold.weights["w"].build(op) if "w" in fold.weights else m["w"]
        b = fold.weights["b"].build(op) if "b" in fold.weights else m["b"]
        return op.Conv(m["x"], w, b, _name=conv.name, **m.attrs("conv"))


class _ArithThenConv(_AffineThenConv):
    arith = "Mul"
    commute = True

    def pattern(self, op, x, k, w, b):
        return op.Conv(op.call(f"onnx.{self.arith}", x, k, _name="arith"), w, op.optional(b), _name="conv")

    def operands(self):
        return ("k",)

    def affine(self, m, ks, rank, channels):
        if ks["k"].dtype != ks["w"].dtype:
            return f"k has element type {ks['k'].dtype}, the weight {ks['w'].dtype}"
        return arith_affine(self.arith, ks["k"], rank, channels)


@rewrite_rule("fuse-bn-conv", benefit=2)
class BatchNormConv(_AffineThenConv):
    """Conv(BatchNormalization(x), W, b?), no padding ==> Conv(x, W', b')."""

    def pattern(self, op, x, scale, bias, mean, var, w, b):
        bn = op.BatchNormalization(x, scale, bias, mean, var, _name="bn")
        return op.Conv(bn, w, op.optional(b), _name="conv")

    def operands(self):
        return BN_PARAMS

    def affine(self, m, ks, rank, channels):
        return bn_affine(m, "bn", ks, channels)


@rewrite_rule("fuse-mul-conv", benefit=2)
class MulConv(_ArithThenConv):
    """Conv(x * k, W, b?), k per input channel, no padding ==> Conv(x, W', b)."""

    arith = "Mul"


@rewrite_rule("fuse-div-conv", benefit=2)
class DivConv(_ArithThenConv):
    """Conv(x / k, W, b?), k per input channel, no padding ==> Conv(x, W', b)."""

    arith = "Div"


@rewrite_rule("fuse-add-conv", benefit=2)
class AddConv(_ArithThenConv):
    """Conv(x + c, W, b?), c per input channel, no padding ==> Conv(x, W, b + ΣW*c)."""

    arith = "Add"


@rewrite_rule("fuse-sub-conv", benefit=2)
class SubConv(_ArithThenConv):
    """Conv(x - c, W, b?), c per input channel, no padding ==> Conv(x, W, b - ΣW*c)."""

    arith = "Sub"


# -- zero padding ---------------------------------------------------------------------------------
def pad_amounts(m, pad: str) -> list[int] | str:
    """The begin/end pads of Pad `pad` over every axis of its input ([b0, b1, ..., e0, e1, ...]), when it pads
    with constant zeros; else why it does not fold."""
    node = m.node(pad)
    opset = m.model.opset_of(node.op) if m.model is not None else 17
    mode = m.attr(pad, "mode", "constant")
    if mode != "constant":
        return f"the Pad's mode is {mode}, not constant"
    if opset >= 11:
        pads = node.input(1).const_value if node.input(1) is not None else None
        value = node.input(2).const_value if node.input(2) is not None else np.zeros(1)
        if node.input(2) is not None and value is None:
            return "the Pad's constant_value is not constant"
        axes_value = node.input(3)
        axes = axes_value.const_value if axes_value is not None else None
        if axes_value is not None and axes is None:
            return "the Pad's axes are not constant"
    else:
        pads = np.asarray(node.attrs["pads"]) if "pads" in node.attrs else None
        value, axes = np.asarray(node.attrs.get("value", 0.0)), None
    if pads is None:
        return "the Pad's pads are not constant"
    if value.size and np.any(value != 0):
        return f"the Pad fills with {value.reshape(-1)[0]}, not zero"
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = tensor_rank(m["x"])
    if axes is None:
        if len(pads) % 2:
            return f"the Pad has {len(pads)} pads, not two per axis"
        if rank is not None and len(pads) != 2 * rank:
            return f"the Pad has {len(pads)} pads for a rank-{rank} input"
        return pads
    if rank is None:
        return "the Pad names axes but its input's rank is unknown"
    axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        return f"the Pad's pads do not match its axes {axes}"
    full = [0] * (2 * rank)
    for i, ax in enumerate(axes):
        full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
    return full


def merged_pads(m, pad: str, target: str) -> tuple[list[int], dict] | str:
    """The target's new pads (its own plus the Pad's spatial ones) and attributes, or why the Pad does not fold."""
    pads = pad_amounts(m, pad)
    if isinstance(pads, str):
        return pads
    rank = len(pads) // 2
    if any(p < 0 for p in pads):
        return f"the Pad crops (pads={pads})"
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return f"the Pad pads the batch or channel axis (pads={pads})"
    spatial = rank - 2
    auto = m.attr(target, "auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID"):
        return f"the {m.node(target).op_type} has auto_pad={auto}; its padding depends on the input size"
    own = m.attr(target, "pads", None)
    own = [0] * (2 * spatial) if own is None or auto == "VALID" else list(own)
    if len(own) != 2 * spatial:
        return f"the {m.node(target).op_type} has {len(own)} pads for {spatial} spatial axes"
    new = [own[i] + pads[2 + i] for i in range(spatial)] + [own[spatial + i] + pads[rank + 2 + i]
                                                               for i in range(spatial)]
    attrs = {**m.attrs(target), "pads": tuple(new)}
    attrs.pop("auto_pad", None)
    return new, attrs


@rewrite_rule("fuse-pad-conv", benefit=2)
class PadConv(Rule):
    """Conv(Pad(x, p, zeros), W, b?) ==> Conv(x, W, b?) with p added to the Conv's pads."""

    def pattern(self, op, x, w, b):
        return op.Conv(op.Pad(x, _name="pad", _allow_other_inputs=True), w, op.optional(b), _name="conv")

    def check(self, m):
        result = merged_pads(m, "pad", "conv")
        return result if isinstance(result, str) else None

    def rewrite(self, op, m):
        _, attrs = merged_pads(m, "pad", "conv")
        return op.Conv(m["x"], m["w"], m["b"], _name=m.node("conv").name, **attrs)


@rewrite_rule("fuse-pad-averagepool", benefit=2)
class PadAveragePool(Rule):
    """AveragePool(Pad(x, p, zeros)) ==> AveragePool(x) with p added to its pads, counting padding."""

    def pattern(self, op, x):
        return op.AveragePool(op.Pad(x, _name="pad", _allow_other_inputs=True), _name="pool")

    def check(self, m):
        if m.model is not None and m.model.opset_of("onnx.AveragePool") < 7:
            return "AveragePool before opset 7 has no count_include_pad, so it cannot count the Pad's zeros"
        if m.attr("pool", "ceil_mode", 0):
            return "the AveragePool has ceil_mode=1: its last window may reach past the padding, and counts differ"
        own = m.attr("pool", "pads", None)
        if not m.attr("pool", "count_include_pad", 0) and own is not None and any(own):
            return ("the AveragePool pads by itself without counting padding (count_include_pad=0); "
                    "the Pad's zeros would be counted")
        result = merged_pads(m, "pad", "pool")
        if isinstance(result, str):
            return result
        kernel = list(m.attr("pool", "kernel_shape"))
        if any(p >= kernel[i % len(kernel)] for i, p in enumerate(result[0])):
            return (f"the AveragePool would pad {result[0]} with a {kernel} window; pooling pads must be smaller "
                    "than the window (onnxruntime refuses larger ones)")
        return None

    def rewrite(self, op, m):
        _, attrs = merged_pads(m, "pad", "pool")
        return op.AveragePool(m["x"], _name=m.node("pool").name, **{**attrs, "count_include_pad": 1})


@register_pass("fuse-conv-affine")
@dataclass(frozen=True)
class FuseConvAffine(FusePass):
    """Fold per-channel Mul/Div/Add/Sub, BatchNormalization and zero Pads into the Conv (or pool, or BN) beside them.

    Per-channel arithmetic after a Conv/ConvTranspose goes into its weights and bias, after a
    BatchNormalization that stays into its scale and bias; an affine map (BatchNormalization or
    arithmetic) before a Conv that pads nothing goes into the Conv; a zero Pad into the Conv or
    AveragePool after it."""

    rule_names = (ConvMul, ConvDiv, ConvAdd, ConvSub, ConvTransposeMul, ConvTransposeDiv, ConvTransposeAdd,
                  ConvTransposeSub, BatchNormMul, BatchNormDiv, BatchNormAdd, BatchNormSub, BatchNormConv,
                  MulConv, DivConv, AddConv, SubConv, PadConv, PadAveragePool)
