"""fuse-inverted-residual{target=x86}: MobileNet-style blocks ==> one `mdoc.inverted_residual` each.

A target's pass (it asks the target's CPU description whether the block's rows split into
bands that pay, `cpu_kernels.plan_inverted_residual`); `TvmBackend.lower` runs it for CPU
targets after the generic pipeline (it registers with the TVM backend's modules, so a pipeline can
name it once they are imported: `PassManager([FuseInvertedResidual(target="x86")])`).

    mdoc.conv (expand: one group; MobileNetV2's 1x1, or its 3x3 stride-2 stem) {activation?}
      -> mdoc.conv kxk depthwise (group = channels) {activation?}
      -> mdoc.conv 1x1 (project, one group, stride 1, no pads) {residual? activation?}
    ==> mdoc.inverted_residual(x, expand_weight, expand_bias?, dw_weight, dw_bias?, weight, bias?, residual?)

Any conv may be a plain onnx.Conv (no tail). Each result is read only by the next conv
(the driver refuses otherwise); weights and biases are constants, shapes static float32
NCHW with batch 1, explicit pads (no auto_pad), no dilation, no residual but the project's.
The block's kernel runs NCHWc only: where the layout plan leaves the block NCHW, the backend
lowers it as its three convs (`converters/fused.py`), what the separate nodes would have given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from ..cpu_kernels import CpuSpec, KernelError
from ..cpu_kernels.inverted_residual import plan_inverted_residual
from ..presets import resolve_target
from .values import activation_shape as _shape

CONVS = ("onnx.Conv", "mdoc.conv")


@rewrite_rule("inverted-residual")
class InvertedResidual(Rule):
    """Conv -> depthwise Conv -> 1x1 Conv, each read only by the next ==> mdoc.inverted_residual."""

    def __init__(self, spec: CpuSpec | None = None):
        self._spec = spec  # None: the host's (the "x86" preset), as `explain(graph, "inverted-residual")` asks

    @property
    def spec(self) -> CpuSpec | None:
        if self._spec is None:
            try:
                self._spec = resolve_target("x86").cpu
            except KernelError:
                return None
        return self._spec

    def pattern(self, op, x, we, be, wd, bd, wp, bp):
        expand = op.call(CONVS, x, we, op.optional(be), _name="expand", _allow_other_inputs=True)
        dw = op.call(CONVS, expand, wd, op.optional(bd), _name="dw", _allow_other_inputs=True)
        return op.call(CONVS, dw, wp, op.optional(bp), _name="project", _allow_other_inputs=True)

    def check(self, m):
        if self.spec is None:
            return "the target has no vector width worth the block's kernel"
        expand, dw, project = (m.node(n) for n in ("expand", "dw", "project"))
        for node in (expand, dw, project):
            if (why := _plain_conv(node)) is not None:
                return why
        for node in (expand, dw):
            if _residual(node) is not None:
                return f"{node.op} '{node.name}' adds a residual; only the project conv may"
        x, we, wd, wp = _shape(m["x"]), _weight(expand), _weight(dw), _weight(project)
        if len(x) != 4 or int(expand.attrs.get("group", 1)) != 1:
            return "the expand conv is not a dense 2-D conv"
        if not (int(dw.attrs.get("group", 1)) == we.shape[0] == wd.shape[0] and wd.shape[1] == 1):
            return "the middle conv is not depthwise over the expanded channels"
        if (int(project.attrs.get("group", 1)) != 1 or wp.shape[2:] != (1, 1) or any(_ints(project, "pads", 4, 0))
                or any(s != 1 for s in _ints(project, "strides"))):
            return "the last conv is not a 1x1 stride-1 projection"
        plan = plan_inverted_residual(x, wd.shape[0], wp.shape[0], wd.shape[2:], _ints(dw, "strides"),
                                      _ints(dw, "pads", 4, 0), self.spec, expand_kernel=we.shape[2:],
                                      expand_strides=_ints(expand, "strides"),
                                      expand_padding=_ints(expand, "pads", 4, 0))
        return None if plan is not None else "its rows do not split into bands that pay for one kernel"

    def rewrite(self, op, m):
        expand, dw, project = (m.node(n) for n in ("expand", "dw", "project"))
        attrs = {"expand_strides": list(_ints(expand, "strides")), "expand_pads": list(_ints(expand, "pads", 4, 0)),
                 "strides": list(_ints(dw, "strides")), "pads": list(_ints(dw, "pads", 4, 0))}
        for stage, node in (("expand", expand), ("dw", dw), ("project", project)):
            attrs.update({f"{stage}_{k}": v for k, v in node.attrs.items() if k.startswith("activation")})
        inputs = [m["x"], m["we"], m["be"], m["wd"], m["bd"], m["wp"], m["bp"], _residual(project)]
        while inputs[-1] is None:
            inputs.pop()
        return op.mdoc.inverted_residual(*inputs, **attrs)


@register_pass("fuse-inverted-residual")
@dataclass(frozen=True)
class FuseInvertedResidual(RewritePass):
    """Conv -> depthwise -> 1x1 Conv blocks that pay as one kernel on `target` ==> mdoc.inverted_residual."""

    target: str = "x86"  # a preset name or a JSON target dict (`presets.resolve_target`)

    def selected_rules(self):
        try:
            return [InvertedResidual(resolve_target(self.target).cpu)]
        except KernelError:  # no vector width worth a hand kernel: nothing to fuse for
            return []


def _residual(node):
    return node.input(3) if node.op == "mdoc.conv" else None


def _plain_conv(node) -> str | None:
    """Why `node` is not a conv the block's kernel takes (constant weight and bias, explicit pads, no
    dilation, static float32 NCHW data and result of batch 1), or None."""
    w, bias = _weight(node), node.input(2)
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    x, out = _shape(node.inputs[0]), _shape(node.outputs[0])
    if w is None or w.ndim != 4 or (bias is not None and bias.const_value is None):
        return f"{node.op} '{node.name}' has weights or a bias computed at run time"
    if auto_pad != "NOTSET" or any(d != 1 for d in _ints(node, "dilations")):
        return f"{node.op} '{node.name}' pads automatically or dilates"
    if x is None or out is None or len(x) != 4 or x[0] != 1:
        return f"{node.op} '{node.name}' is not on static float32 NCHW data of batch 1"
    return None


def _weight(node) -> np.ndarray | None:
    return node.inputs[1].const_value


def _ints(node, attr: str, n: int = 2, default: int = 1) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attrs.get(attr, [default] * n))
