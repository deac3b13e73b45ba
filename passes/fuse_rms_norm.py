"""fuse-rms-norm: RMSNorm as exporters write it ==> one `mdoc.rms_norm`.

LLaMA-style decoders (Hugging Face's LlamaRMSNorm, T5's layer norm, Mistral, Qwen) normalize
by the root mean square, with no mean subtracted:

    Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))   (torch's rsqrt; rms-norm-reciprocal)
    Mul(x, Div(1, Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))       (rsqrt as torch 2.13's TorchScript
                                                                  exporter writes it; rms-norm-one-over)
    Div(x, Sqrt(Add(ReduceMean(Pow(x, 2)), eps)))               (rms-norm)
    the square as Mul(x, x)                                      (rms-norm-mul-square*)
                                                  -> mdoc.rms_norm(x, ones)
    Mul(mdoc.rms_norm(x, g), gamma)               -> mdoc.rms_norm(x, g * gamma)   (rms-norm-scale)
    onnx.RMSNormalization(x, g) over the last axis -> mdoc.rms_norm(x, g)          (rms-norm-from-onnx)

The mean must reduce the last axis with keepdims=1 and epsilon must be a scalar constant.
Hugging Face casts x to float32 first and back after: the casts stay around the fused op.
Exported back as RMSNormalization (opset 23), SimplifiedLayerNormalization under
--onnx-runtime-ops, else the expansion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fusion_util import float_tensor, last_axis_vector, reduced_axes, scalar, shape_of


class _Normalize(Rule):
    """x / sqrt(mean(x^2) + eps) over the last axis ==> mdoc.rms_norm(x, ones)."""

    commute = True

    def square(self, op, x):
        return op.Pow(x, 2.0)

    def divide(self, op, x, rms):
        return op.Div(x, rms)

    def pattern(self, op, x):
        ms = op.ReduceMean(self.square(op, x), _allow_other_inputs=True, _name="ms")
        return self.divide(op, x, op.Sqrt(op.Add(ms, op.constant(_name="eps"))))

    def check(self, m):
        if (why := float_tensor(m["x"])) is not None:
            return f"x: {why}"
        shape = shape_of(m["x"])
        axes = reduced_axes(m, "ms", len(shape))
        if isinstance(axes, str):
            return axes
        if axes != [len(shape) - 1]:
            return f"the mean reduces axes {axes}, not the last axis alone"
        if not isinstance(shape[-1], int):
            return f"the normalized dim {shape[-1]} is not static"
        if scalar(m, "eps") is None:
            return "epsilon is not a scalar float constant"
        return None

    def rewrite(self, op, m):
        ones = np.ones(shape_of(m["x"])[-1], m["x"].type.dtype.numpy)
        return op.mdoc.rms_norm(m["x"], op.constant(ones), epsilon=scalar(m, "eps"))


@rewrite_rule("rms-norm", benefit=2)
class RmsNorm(_Normalize):
    """Div(x, Sqrt(Add(ReduceMean(Pow(x, 2)), eps))) ==> mdoc.rms_norm(x, ones)."""


@rewrite_rule("rms-norm-reciprocal", benefit=2)
class RmsNormReciprocal(_Normalize):
    """Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps)))) (torch's rsqrt) ==> mdoc.rms_norm(x, ones)."""

    def divide(self, op, x, rms):
        return op.Mul(x, op.Reciprocal(rms))


@rewrite_rule("rms-norm-one-over", benefit=2)
class RmsNormOneOver(_Normalize):
    """Mul(x, Div(1, Sqrt(...))) (transformers' LlamaRMSNorm through torch.onnx) ==> mdoc.rms_norm(x, ones)."""

    def divide(self, op, x, rms):
        return op.Mul(x, op.Div(op.constant(_name="one"), rms))

    def check(self, m):
        if scalar(m, "one") != 1.0:
            return "the numerator of 1 / rms is not the constant 1"
        return super().check(m)


@rewrite_rule("rms-norm-mul-square", benefit=2)
class RmsNormMulSquare(_Normalize):
    """The square written Mul(x, x) ==> mdoc.rms_norm(x, ones)."""

    def square(self, op, x):
        return op.Mul(x, x)


@rewrite_rule("rms-norm-mul-square-reciprocal", benefit=2)
class RmsNormMulSquareReciprocal(RmsNormReciprocal):
    """Mul(x, x) and Mul(x, Reciprocal(Sqrt(...))) ==> mdoc.rms_norm(x, ones)."""

    def square(self, op, x):
        return op.Mul(x, x)


@rewrite_rule("rms-norm-scale", benefit=2)
class RmsNormScale(Rule):
    """Mul(mdoc.rms_norm(x, g), gamma) ==> mdoc.rms_norm(x, g * gamma), gamma a constant over the last axis."""

    commute = True

    def pattern(self, op, x, g, k):
        return op.Mul(op.mdoc.rms_norm(x, g, _name="rms"), k)

    def check(self, m):
        length = shape_of(m["x"])[-1]
        g, k = m.const("g"), m.const("k")
        if g is None or k is None:
            return "the RMSNorm's gamma or the Mul operand is not constant"
        if np.asarray(k).ndim > len(shape_of(m["x"])) or last_axis_vector(k, length) is None:
            return f"the Mul operand has shape {list(np.shape(k))}, not a vector over the last axis"
        if np.asarray(k).dtype != np.asarray(g).dtype:
            return f"the Mul operand is {np.asarray(k).dtype}, the RMSNorm {np.asarray(g).dtype}"
        return None

    def rewrite(self, op, m):
        length = shape_of(m["x"])[-1]
        g = last_axis_vector(m.const("g"), length).astype(np.float64)
        k = last_axis_vector(m.const("k"), length).astype(np.float64)
        return op.mdoc.rms_norm(m["x"], op.constant((g * k).astype(np.asarray(m.const("g")).dtype)),
                                **m.attrs("rms"))


@rewrite_rule("rms-norm-from-onnx")
class RmsNormFromOnnx(Rule):
    """onnx.RMSNormalization(x, g) over the last axis, float32 statistics ==> mdoc.rms_norm(x, g)."""

    def pattern(self, op, x, g):
        return op.RMSNormalization(x, g, _name="rms")

    def check(self, m):
        if (why := float_tensor(m["x"])) is not None:
            return f"x: {why}"
        shape = shape_of(m["x"])
        axis = int(m.attr("rms", "axis", -1))
        if shape is None or axis not in (-1, len(shape) - 1):
            return f"axis {axis} is not the last axis"
        if int(m.attr("rms", "stash_type", 1)) != 1:
            return "stash_type is not 1 (float32 statistics)"
        return None

    def rewrite(self, op, m):
        return op.mdoc.rms_norm(m["x"], m["g"], epsilon=float(m.attr("rms", "epsilon", 1e-5)))


@register_pass("fuse-rms-norm")
@dataclass(frozen=True)
class FuseRmsNorm(RewritePass):
    """RMSNorm as exporters write it (Pow/ReduceMean/Add/Sqrt/Div, Reciprocal/Mul or 1/x Mul, or onnx.RMSNormalization) ==> mdoc.rms_norm."""

    rule_names = (RmsNorm, RmsNormReciprocal, RmsNormOneOver, RmsNormMulSquare, RmsNormMulSquareReciprocal, RmsNormScale,
                  RmsNormFromOnnx)
