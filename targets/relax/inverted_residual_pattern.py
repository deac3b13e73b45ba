"""Where the graph holds an inverted residual block that `cpu_kernels.inverted_residual` fuses.

Why here: the layout plan must see the block as one NCHWc kernel (its inner activations never
exist, so they cost no copies) and `CpuKernels` must emit that kernel when it reaches the
block's first conv; both ask this one structural match, on the mdoc graph, so they agree.

A block is three Convs with constant weights (and constant biases, or none), each result
read only by the next, the activations already fused into them (`fuse-epilogue`):

    mdoc.conv (expand: one group, 1x1 in MobileNetV2's blocks, the 3x3 stride-2 stem before its
      first depthwise conv) {activation?} -> mdoc.conv kxk depthwise (group = channels) {activation?}
      -> Conv 1x1 (project, one group) {residual? activation?}

(any of them may be a plain onnx.Conv: no tail), with static float32 NCHW shapes, explicit
pads (no auto_pad), no dilation, no residual but the project's, and rows that
`plan_inverted_residual` splits into bands (else the three convs stay separate kernels).
The kernel reads each conv's activation and residual from its attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.ir import Graph, Node, Value

from ..cpu_kernels import CpuSpec
from ..cpu_kernels.inverted_residual import plan_inverted_residual
from .values import activation_shape as _shape

CONVS = ("onnx.Conv", "mdoc.conv")


@dataclass(frozen=True)
class InvertedResidualMatch:
    expand: Node
    depthwise: Node
    project: Node

    @property
    def convs(self) -> tuple[Node, Node, Node]:
        return (self.expand, self.depthwise, self.project)


def match_inverted_residual(graph: Graph, node: Node, spec: CpuSpec) -> InvertedResidualMatch | None:
    """The block that starts at `node` (its expand conv), or None."""
    x = _shape(node.inputs[0]) if node.op in CONVS else None
    if x is None or len(x) != 4 or not _plain_conv(node) or int(node.attrs.get("group", 1)) != 1 or _residual(node):
        return None
    depthwise = _next_conv(graph, node)
    if depthwise is None or not _depthwise(depthwise, _weight(node).shape[0]) or _residual(depthwise):
        return None
    project = _next_conv(graph, depthwise)
    if project is None or not _pointwise(project):
        return None
    w = _weight(depthwise)
    plan = plan_inverted_residual(x, w.shape[0], _weight(project).shape[0], w.shape[2:], _ints(depthwise, "strides"),
                                  _ints(depthwise, "pads", 4, 0), spec, expand_kernel=_weight(node).shape[2:],
                                  expand_strides=_ints(node, "strides"), expand_padding=_ints(node, "pads", 4, 0))
    return InvertedResidualMatch(node, depthwise, project) if plan is not None else None


def _next_conv(graph: Graph, node: Node) -> Node | None:
    """The conv that alone reads `node`'s result, as its data."""
    user = _sole_user(graph, node.output)
    return user if user is not None and user.op in CONVS and user.inputs[0] is node.output else None


def _residual(node: Node) -> bool:
    return node.op == "mdoc.conv" and node.input(3) is not None


def _sole_user(graph: Graph, value: Value) -> Node | None:
    uses = value.uses()
    if len(uses) != 1 or any(o is value for o in graph.outputs):
        return None
    return uses[0][0]


def _plain_conv(node: Node) -> bool:
    """Constant weight and bias, explicit pads, no dilation, static float32 data and result."""
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return (_weight(node) is not None and _weight(node).ndim == 4 and (bias is None or bias.const_value is not None)
            and auto_pad == "NOTSET" and all(d == 1 for d in _ints(node, "dilations"))
            and _shape(node.inputs[0]) is not None and _shape(node.output) is not None)


def _pointwise(node: Node) -> bool:
    return (_plain_conv(node) and int(node.attrs.get("group", 1)) == 1 and _weight(node).shape[2:] == (1, 1)
            and all(s == 1 for s in _ints(node, "strides")) and not any(_ints(node, "pads", 4, 0)))


def _depthwise(node: Node, channels: int) -> bool:
    w = _weight(node) if _plain_conv(node) else None
    return (w is not None and int(node.attrs.get("group", 1)) == channels == w.shape[0] and w.shape[1] == 1
            and _shape(node.output)[1] == channels)


def _weight(node: Node):
    return node.inputs[1].const_value


def _ints(node: Node, attr: str, n: int = 2, default: int = 1) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attrs.get(attr, [default] * n))
