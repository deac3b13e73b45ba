"""fuse-bias-gelu: the bias Add before a GELU ==> `mdoc.gelu(x, bias)`.

    mdoc.gelu(Add(x, bias))  -> mdoc.gelu(x, bias)      bias a constant vector over the last axis

It runs after fuse-gelu. Not in -O2: the CPU backend fuses the bias and the GELU
into the dense kernel before them as two epilogue stages already; this is for
exports to onnxruntime (`mdoc opt -p ...,fuse-bias-gelu --onnx-runtime-ops`
writes com.microsoft.BiasGelu, or FastGelu with its bias for the tanh form).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fusion_util import last_axis_vector, shape_of


@rewrite_rule("bias-gelu")
class BiasGelu(Rule):
    """mdoc.gelu(Add(x, bias)) ==> mdoc.gelu(x, bias)."""

    commute = True

    def pattern(self, op, x, bias):
        return op.mdoc.gelu(op.Add(x, bias), _name="gelu")

    def check(self, m):
        shape = shape_of(m["x"])
        bias = m.const("bias")
        if shape is None or not shape or bias is None or bias.ndim > len(shape) \
                or last_axis_vector(bias, shape[-1]) is None or bias.size == 1:
            return "the Add's other operand is not a constant vector over the last axis"
        return None

    def rewrite(self, op, m):
        bias = last_axis_vector(m.const("bias"), shape_of(m["x"])[-1])
        return op.mdoc.gelu(m["x"], op.constant(bias), **m.attrs("gelu"))


@register_pass("fuse-bias-gelu")
@dataclass(frozen=True)
class FuseBiasGelu(RewritePass):
    """Add of a bias before mdoc.gelu ==> mdoc.gelu(x, bias) (for onnxruntime exports; not in -O2)."""

    rule_names = (BiasGelu,)
