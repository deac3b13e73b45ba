"""fuse-silu: SiLU (swish) as exporters write it, x * Sigmoid(x) ==> one `mdoc.silu`.

torch.onnx writes `nn.SiLU` (YOLO-style detectors, EfficientNet, LLaMA's MLP) as
Mul(x, Sigmoid(x)), in either operand order. As one op it is an activation the
CPU backend fuses into the conv or matmul before it, like Relu; as two ops x
has two readers and no kernel epilogue takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fusion_util import float_tensor


@rewrite_rule("silu")
class Silu(Rule):
    """Mul(x, Sigmoid(x)) ==> mdoc.silu(x)."""

    commute = True

    def pattern(self, op, x):
        return op.Mul(x, op.Sigmoid(x))

    def check(self, m):
        if (why := float_tensor(m["x"])) is not None:
            return f"x: {why}"
        return None

    def rewrite(self, op, m):
        return op.mdoc.silu(m["x"])


@register_pass("fuse-silu")
@dataclass(frozen=True)
class FuseSilu(RewritePass):
    """x * Sigmoid(x) ==> mdoc.silu(x)."""

    rule_names = (Silu,)
