"""fuse-skip-layer-norm: the residual Add before a LayerNorm ==> one `mdoc.skip_layer_norm`.

    mdoc.layer_norm(Add(x, skip), gamma, beta?)            -> mdoc.skip_layer_norm(x, skip, gamma, beta?)
    mdoc.layer_norm(Add(Add(x, bias), skip), gamma, beta?) -> mdoc.skip_layer_norm(x, skip, gamma, beta?, bias)

It runs after fuse-layer-norm and before fuse-epilogue (which would take the Adds into
the MatMul before them). The LayerNorm must be over the last axis, x and
skip of one static shape (no broadcasting), the bias a constant vector over the
last axis, and the sums read by nothing else. Not in -O2: fuse-epilogue fuses the
residual Add (and the bias) into the dense kernel before it instead, which saves
the pass over the sum that skip_layer_norm's kernel makes; this is for exports to
onnxruntime (`mdoc opt -p ...,fuse-skip-layer-norm,fuse-epilogue,dce
--onnx-runtime-ops` writes com.microsoft.SkipLayerNormalization).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fusion_util import last_axis_vector, shape_of


class _Skip(Rule):
    commute = True

    def check(self, m):
        shape = shape_of(m["x"])
        if shape is None or int(m.node("ln").attrs.get("axis", -1)) not in (-1, len(shape) - 1):
            return "the LayerNorm is not over the last axis only"
        if shape_of(m["skip"]) != shape or not all(isinstance(d, int) for d in shape):
            return f"x {list(shape)} and skip {shape_of(m['skip'])} are not of one static shape"
        if "bias" in m and last_axis_vector(m.const("bias"), shape[-1]) is None:
            return "the bias is not a constant vector over the last axis"
        return None


@rewrite_rule("skip-layer-norm", benefit=1)
class SkipLayerNorm(_Skip):
    """mdoc.layer_norm(Add(x, skip), g, b?) ==> mdoc.skip_layer_norm(x, skip, g, b?)."""

    def pattern(self, op, x, skip, g, b):
        return op.mdoc.layer_norm(op.Add(x, skip), g, op.optional(b), _name="ln")

    def rewrite(self, op, m):
        inputs = [m["x"], m["skip"], m["g"]] + ([m["b"]] if m["b"] is not None else [])
        return op.mdoc.skip_layer_norm(*inputs, epsilon=m.node("ln").attrs.get("epsilon", 1e-5))


@rewrite_rule("skip-layer-norm-bias", benefit=2)
class SkipLayerNormBias(_Skip):
    """mdoc.layer_norm(Add(Add(x, bias), skip), g, b?) ==> mdoc.skip_layer_norm(x, skip, g, b?, bias)."""

    def pattern(self, op, x, bias, skip, g, b):
        return op.mdoc.layer_norm(op.Add(op.Add(x, bias), skip), g, op.optional(b), _name="ln")

    def rewrite(self, op, m):
        length = shape_of(m["x"])[-1]
        beta = m["b"] if m["b"] is not None else op.constant(np.zeros(length, m["x"].type.dtype.numpy))
        bias = op.constant(last_axis_vector(m.const("bias"), length))
        return op.mdoc.skip_layer_norm(m["x"], m["skip"], m["g"], beta, bias,
                                       epsilon=m.node("ln").attrs.get("epsilon", 1e-5))


@register_pass("fuse-skip-layer-norm")
@dataclass(frozen=True)
class FuseSkipLayerNorm(RewritePass):
    """Add (+ bias) before an mdoc.layer_norm ==> mdoc.skip_layer_norm (for onnxruntime exports; not in -O2)."""

    rule_names = (SkipLayerNormBias, SkipLayerNorm)
