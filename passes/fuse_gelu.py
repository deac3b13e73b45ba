"""fuse-gelu: GELU as exporters write it ==> one `mdoc.gelu`.

    x * 0.5 * (1 + Erf(x / sqrt(2)))                           -> mdoc.gelu(x)                    (gelu-erf*)
    x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))    -> mdoc.gelu(x) {approximate = "tanh"} (gelu-tanh*)
    onnx.Gelu(x)                                               -> mdoc.gelu(x)                    (gelu-from-onnx)

Exporters multiply the three factors x, 0.5 and (1 + ...) in any grouping:
torch.onnx's TorchScript exporter writes (x * (1 + erf)) * 0.5, Hugging Face's
`gelu_new` (x * 0.5) * (1 + tanh); each grouping is one rule, and every Mul and
Add in it matches either operand order. x / sqrt(2) may be x * (1 / sqrt(2)),
x^3 may be Pow(x, 3) or x * x * x. Constants are compared with a relative
tolerance of 1e-4 (exporters write them in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fusion_util import float_tensor, near, scalar

SQRT2 = math.sqrt(2.0)
TANH_C = math.sqrt(2.0 / math.pi)


class _Gelu(Rule):
    """The three factors x, 0.5 and (1 + phi(x)) in the grouping `group`; phi is erf or tanh."""

    commute = True
    group = "x*phi, *half"  # or "x*half, *phi" or "x, *(phi*half)"

    def phi(self, op, x):
        raise NotImplementedError

    def pattern(self, op, x):
        one_plus = op.Add(self.phi(op, x), op.constant(_name="one"))
        half = op.constant(_name="half")
        if self.group == "x*phi, *half":
            return op.Mul(op.Mul(x, one_plus), half)
        if self.group == "x*half, *phi":
            return op.Mul(op.Mul(x, half), one_plus)
        return op.Mul(x, op.Mul(one_plus, half))

    def check(self, m):
        if (why := float_tensor(m["x"])) is not None:
            return f"x: {why}"
        if not near(scalar(m, "one"), 1.0):
            return "the Add's constant is not 1"
        if not near(scalar(m, "half"), 0.5):
            return "the outer factor is not 0.5"
        return self.check_phi(m)

    def check_phi(self, m):
        return None


class _Erf(_Gelu):
    def phi(self, op, x):
        return op.Erf(op.call(f"onnx.{self.scale_op}", x, op.constant(_name="c")))

    scale_op = "Div"

    def check_phi(self, m):
        c = scalar(m, "c")
        if c is None:
            return "the Erf's scale is not a scalar constant"
        if not near(c if self.scale_op == "Div" else 1.0 / c if c else 0.0, SQRT2):
            return f"the Erf's argument is x {'/' if self.scale_op == 'Div' else '*'} {c:g}, not x / sqrt(2)"
        return None

    def rewrite(self, op, m):
        return op.mdoc.gelu(m["x"], approximate="none")


class _Tanh(_Gelu):
    cube = "Pow"

    def phi(self, op, x):
        x3 = op.Pow(x, 3.0) if self.cube == "Pow" else op.Mul(op.Mul(x, x), x)
        inner = op.Add(x, op.Mul(x3, op.constant(_name="a")))
        return op.Tanh(op.Mul(inner, op.constant(_name="c")))

    def check_phi(self, m):
        if not near(scalar(m, "a"), 0.044715):
            return "the cubic coefficient is not 0.044715"
        if not near(scalar(m, "c"), TANH_C):
            return "the Tanh's scale is not sqrt(2 / pi)"
        return None

    def rewrite(self, op, m):
        return op.mdoc.gelu(m["x"], approximate="tanh")


def _erf_rule(name: str, group: str, scale_op: str):
    cls = type(f"GeluErf_{name}", (_Erf,), {
        "group": group, "scale_op": scale_op, "__module__": __name__,
        "__doc__": f"x, 0.5, 1 + Erf(x {'/ sqrt 2' if scale_op == 'Div' else '* (1 / sqrt 2)'}) grouped as "
                   f"{group} ==> mdoc.gelu(x)"})
    return rewrite_rule(name, benefit=2)(cls)


def _tanh_rule(name: str, group: str, cube: str):
    cls = type(f"GeluTanh_{name}", (_Tanh,), {
        "group": group, "cube": cube, "__module__": __name__,
        "__doc__": f"x, 0.5, 1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3)) grouped as {group}, x^3 by {cube} "
                   "==> mdoc.gelu(x, approximate=tanh)"})
    return rewrite_rule(name, benefit=2)(cls)


_GROUPS = {"": "x*phi, *half", "-half-first": "x*half, *phi", "-phi-half": "x, *(phi*half)"}
ERF_RULES = tuple(_erf_rule(f"gelu-erf{suffix}{'-mul' if op == 'Mul' else ''}", group, op)
                  for suffix, group in _GROUPS.items() for op in ("Div", "Mul"))
TANH_RULES = tuple(_tanh_rule(f"gelu-tanh{suffix}{'-mul-cube' if cube == 'Mul' else ''}", group, cube)
                   for suffix, group in _GROUPS.items() for cube in ("Pow", "Mul"))


@rewrite_rule("gelu-from-onnx")
class GeluFromOnnx(Rule):
    """onnx.Gelu(x) (opset 20) ==> mdoc.gelu(x) with the same approximation."""

    def pattern(self, op, x):
        return op.Gelu(x, _name="gelu")

    def rewrite(self, op, m):
        return op.mdoc.gelu(m["x"], approximate=str(m.attr("gelu", "approximate", "none")))


@register_pass("fuse-gelu")
@dataclass(frozen=True)
class FuseGelu(RewritePass):
    """GELU as exporters write it (through Erf or Tanh, any grouping, or onnx.Gelu) ==> mdoc.gelu."""

    rule_names = ERF_RULES + TANH_RULES + (GeluFromOnnx,)
