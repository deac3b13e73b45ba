"""Declarative rewriting: rules (pattern, check, rewrite) applied by a worklist driver to a fixpoint.

This module is the front door; import from here.

    from mdoc.rewrite import Rule, rewrite_rule

    @rewrite_rule("fuse-conv-bn", benefit=2)
    class ConvBatchNorm(Rule):
        \"\"\"Conv -> BatchNormalization  ==>  Conv with folded weights (inference).\"\"\"
        def pattern(self, op, x, w, b, scale, bias, mean, var):
            return op.BatchNormalization(op.Conv(x, w, op.optional(b), _name="conv"),
                                         scale, bias, mean, var, _name="bn")
        def check(self, m):
            return m.all_constant("w", "scale", "bias", "mean", "var")
        def rewrite(self, op, m):
            w2, b2 = fold(m)  # numpy
            return op.Conv(m["x"], op.constant(w2), op.constant(b2), **m.attrs("conv"))

A family of rules becomes a pass by subclassing `RewritePass`:

    @register_pass("fuse-conv-bn")
    class FuseConvBn(RewritePass):
        \"\"\"Fold BatchNormalization into the Conv before it.\"\"\"
        rule_names = ("fuse-conv-bn",)

and any registered rules can be run from a pipeline: `apply-rules{rules=fuse-a;fuse-b}`.

Where things live: the op builder and patterns in `mdoc.rewrite_pattern`, the
matcher and `Match` (the `m` of check and rewrite) in `mdoc.rewrite_match`,
`Rule` and the registry in `mdoc.rewrite_rules`, the driver, `explain` and
tracing in `mdoc.rewrite_driver`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import MdocError
from .ir import Graph
from .pass_manager import GraphPass, PassContext, register_pass
from .rewrite_driver import RewriteTrace, apply_rules, explain, trace_rewrites
from .rewrite_match import Match
from .rewrite_pattern import COMMUTATIVE, PatternBuilder, RewriteBuilder
from .rewrite_rules import RULES, Rule, get_rule, resolve_rules, rewrite_rule

__all__ = [
    "COMMUTATIVE", "RULES", "ApplyRules", "Match", "PatternBuilder", "RewriteBuilder", "RewritePass",
    "RewriteTrace", "Rule", "apply_rules", "explain", "get_rule", "resolve_rules", "rewrite_rule",
    "trace_rewrites",
]


@dataclass(frozen=True)
class RewritePass(GraphPass):
    """Base of passes that apply a family of rewrite rules to a fixpoint: set `rule_names`
    (names or Rule classes); `run` reports whether any rule fired."""

    rule_names: ClassVar[tuple[Any, ...]] = ()

    def selected_rules(self) -> Sequence[Any]:
        return self.rule_names

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        limit = getattr(self, "max_iterations", 0) or None
        return apply_rules(graph, self.selected_rules(), ctx, max_iterations=limit) > 0


@register_pass("apply-rules")
@dataclass(frozen=True)
class ApplyRules(RewritePass):
    """Apply the named rewrite rules to a fixpoint: apply-rules{rules=fuse-a;fuse-b}."""

    rules: str = ""
    max_iterations: int = 0

    def selected_rules(self) -> Sequence[Any]:
        names = [n.strip() for n in self.rules.split(";") if n.strip()]
        if not names:
            raise MdocError("pass 'apply-rules' needs rules=NAME;NAME (known rules: "
                            f"{', '.join(sorted(RULES)) or 'none registered'})")
        return names
