"""fuse-layer-norm: LayerNorm as exporters write it ==> one `mdoc.layer_norm`.

The normalization and its affine part are separate rules, so every order and
omission exporters produce composes from a few small patterns:

    Div(d, Sqrt(Add(ReduceMean(Pow(d, 2)), eps)))  with d = Sub(x, ReduceMean(x))
                                        -> mdoc.layer_norm(x, ones)        (layer-norm)
    the same with Mul(d, d) for the square, or Mul(d, Reciprocal(Sqrt(...))) for the
    division (tf2onnx, Keras)           -> mdoc.layer_norm(x, ones)        (layer-norm-*)
    Mul(mdoc.layer_norm(x, g, b?), gamma) -> mdoc.layer_norm(x, g*gamma, b*gamma)   (layer-norm-scale)
    Add(mdoc.layer_norm(x, g, b?), beta)  -> mdoc.layer_norm(x, g, b + beta)        (layer-norm-shift)
    onnx.LayerNormalization(x, g, b?)     -> mdoc.layer_norm(x, g, b?)              (layer-norm-from-onnx)

torch.onnx (TorchScript below opset 17, and Hugging Face models exported that
way) writes the first form followed by Mul(gamma) and Add(beta); the dynamo
exporter and opset 17 write LayerNormalization. Both means must reduce the same
trailing axes with keepdims=1, epsilon must be a scalar constant, and gamma and
beta must be constants over the last axis to fold (a LayerNorm over several
trailing axes keeps its Mul and Add). Operand orders of Add and Mul do not
matter (the rules commute). Run it before fuse-conv-affine, which would fold
gamma and beta into the next MatMul and leave a bare normalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fusion_util import float_tensor, last_axis_vector, reduced_axes, scalar, shape_of


class _Normalize(Rule):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) ==> mdoc.layer_norm(x, ones)."""

    commute = True

    def square(self, op, d):
        return op.Pow(d, 2.0)

    def divide(self, op, d, std):
        return op.Div(d, std)

    def pattern(self, op, x):
        d = op.Sub(x, op.ReduceMean(x, _allow_other_inputs=True, _name="mean"))
        var = op.ReduceMean(self.square(op, d), _allow_other_inputs=True, _name="var")
        return self.divide(op, d, op.Sqrt(op.Add(var, op.constant(_name="eps"))))

    def check(self, m):
        if (why := float_tensor(m["x"])) is not None:
            return f"x: {why}"
        rank = len(shape_of(m["x"]))
        mean, var = reduced_axes(m, "mean", rank), reduced_axes(m, "var", rank)
        for axes in (mean, var):
            if isinstance(axes, str):
                return axes
        if mean != var:
            return f"the means reduce different axes ({mean} and {var})"
        if not mean or mean != list(range(mean[0], rank)):
            return f"the means reduce axes {mean}, not the trailing axes"
        normalized = shape_of(m["x"])[mean[0]:]
        if not all(isinstance(d, int) for d in normalized):
            return f"the normalized dims {list(normalized)} are not static"
        if scalar(m, "eps") is None:
            return "epsilon is not a scalar float constant"
        return None

    def rewrite(self, op, m):
        rank = len(shape_of(m["x"]))
        first = reduced_axes(m, "mean", rank)[0]
        dtype = m["x"].type.dtype.numpy
        ones = np.ones(shape_of(m["x"])[first:], dtype)
        axis = -1 if first == rank - 1 else first
        return op.mdoc.layer_norm(m["x"], op.constant(ones), axis=axis, epsilon=scalar(m, "eps"))


@rewrite_rule("layer-norm", benefit=2)
class LayerNorm(_Normalize):
    """Div(d, Sqrt(Add(ReduceMean(Pow(d, 2)), eps))), d = Sub(x, ReduceMean(x)) ==> mdoc.layer_norm(x, ones)."""


@rewrite_rule("layer-norm-mul-square", benefit=2)
class LayerNormMulSquare(_Normalize):
    """The square written Mul(d, d) ==> mdoc.layer_norm(x, ones)."""

    def square(self, op, d):
        return op.Mul(d, d)


@rewrite_rule("layer-norm-reciprocal", benefit=2)
class LayerNormReciprocal(_Normalize):
    """The division written Mul(d, Reciprocal(Sqrt(...))) ==> mdoc.layer_norm(x, ones)."""

    def divide(self, op, d, std):
        return op.Mul(d, op.Reciprocal(std))


@rewrite_rule("layer-norm-mul-square-reciprocal", benefit=2)
class LayerNormMulSquareReciprocal(_Normalize):
    """Mul(d, d) and Mul(d, Reciprocal(Sqrt(...))) (tf2onnx's SquaredDifference and Rsqrt) ==> mdoc.layer_norm."""

    def square(self, op, d):
        return op.Mul(d, d)

    def divide(self, op, d, std):
        return op.Mul(d, op.Reciprocal(std))


class _Affine(Rule):
    """Fold a constant vector over the last axis into a last-axis mdoc.layer_norm's gamma and beta."""

    commute = True
    op_type = "Mul"

    def pattern(self, op, x, g, b, k):
        ln = op.mdoc.layer_norm(x, g, op.optional(b), _name="ln")
        return op.call(f"onnx.{self.op_type}", ln, k, _name="arith")

    def check(self, m):
        shape = shape_of(m["x"])
        axis = int(m.node("ln").attrs.get("axis", -1))
        if shape is None or axis not in (-1, len(shape) - 1):
            return "the LayerNorm is not over the last axis only"
        if m.const("g") is None or (m["b"] is not None and m.const("b") is None):
            return "the LayerNorm's gamma or beta is not constant"
        k = m.const("k")
        if k is None:
            return f"the {self.op_type} operand is not constant"
        if np.asarray(k).ndim > len(shape) or last_axis_vector(k, shape[-1]) is None:
            return f"the {self.op_type} operand has shape {list(np.shape(k))}, not a vector over the last axis"
        if np.asarray(k).dtype != np.asarray(m.const("g")).dtype:
            dtypes = np.asarray(k).dtype, np.asarray(m.const("g")).dtype
            return f"the {self.op_type} operand is {dtypes[0]}, the LayerNorm {dtypes[1]}"
        return None

    def vectors(self, m):
        length = shape_of(m["x"])[-1]
        g = last_axis_vector(m.const("g"), length).astype(np.float64)
        b = last_axis_vector(m.const("b"), length).astype(np.float64) if m["b"] is not None else np.zeros(length)
        return g, b, last_axis_vector(m.const("k"), length).astype(np.float64)

    def rewrite(self, op, m):
        g, b, k = self.vectors(m)
        g, b = (g * k, b * k) if self.op_type == "Mul" else (g, b + k)
        dtype = np.asarray(m.const("g")).dtype
        return op.mdoc.layer_norm(m["x"], op.constant(g.astype(dtype)), op.constant(b.astype(dtype)),
                                  **m.attrs("ln"))


@rewrite_rule("layer-norm-scale", benefit=2)
class LayerNormScale(_Affine):
    """Mul(mdoc.layer_norm(x, g, b?), gamma) ==> mdoc.layer_norm(x, g * gamma, b * gamma)."""

    op_type = "Mul"


@rewrite_rule("layer-norm-shift", benefit=2)
class LayerNormShift(_Affine):
    """Add(mdoc.layer_norm(x, g, b?), beta) ==> mdoc.layer_norm(x, g, b + beta)."""

    op_type = "Add"


@rewrite_rule("layer-norm-from-onnx")
class LayerNormFromOnnx(Rule):
    """onnx.LayerNormalization(x, g, b?) (its mean and inverse deviation unused) ==> mdoc.layer_norm."""

    def pattern(self, op, x, g, b):
        return op.LayerNormalization(x, g, op.optional(b), _name="ln")

    def check(self, m):
        if (why := float_tensor(m["x"])) is not None:
            return f"x: {why}"
        if int(m.attr("ln", "stash_type", 1)) != 1:
            return "stash_type is not 1 (float32 statistics)"
        return None

    def rewrite(self, op, m):
        inputs = [m["x"], m["g"]] + ([m["b"]] if m["b"] is not None else [])
        return op.mdoc.layer_norm(*inputs, axis=int(m.attr("ln", "axis", -1)),
                                  epsilon=float(m.attr("ln", "epsilon", 1e-5)))


@register_pass("fuse-layer-norm")
@dataclass(frozen=True)
class FuseLayerNorm(RewritePass):
    """LayerNorm as exporters write it (nine ops, or onnx.LayerNormalization) ==> mdoc.layer_norm."""

    rule_names = (LayerNorm, LayerNormMulSquare, LayerNormReciprocal, LayerNormMulSquareReciprocal,
                  LayerNormScale, LayerNormShift, LayerNormFromOnnx)
