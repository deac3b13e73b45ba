"""Which convs and pools run on NCHWc activations: the CPU layout choice, by a cost model.

Why: the hand-scheduled conv kernels read NCHW activations one input channel at a time,
a row `H * W * 4` bytes away from the last: 16 cache lines and pages per 16 channels,
where NCHWc (`cpu_kernels.common.blocked_shape`) reads the same 16 channels from one
line.  Measured on this host (2 Zen 4 cores, best tile each, weights flushed as in a
model run): MobileNetV2's
pointwise convs on 14x14 and 7x7 run 15-25% faster NCHWc, on 56x56 5-15%; ResNet-18's
3x3 convs 3-8%, and their stride-1 ones can use Winograd only on NCHWc (2-3x, `winograd.py`).
But a layout change costs a copy of the tensor, so NCHWc only pays
where neighbours share it: a chain of convs converted once at each end.

The model.  A candidate is a node whose kernel has an NCHWc form: a 2-D Conv (or mdoc.conv)
with constant weights and static float32 shapes, dense (one group; any channel count, the last vector
padded: `blocked_shape`) or depthwise (C == groups == output channels, in whole vectors),
and 2-D MaxPool / AveragePool over whole vectors; an mdoc.inverted_residual block
(`fuse_inverted_residual`), whose fused kernel runs NCHWc only.  Its gain
is `GAIN[kind]` times its estimated time (FLOPs at `RATE` per core).  Candidates are
joined by the activations they pass each other: the data input, and the residual an
mdoc.conv adds in its epilogue (`fuse-epilogue`).  Each
joined group is one decision: it runs NCHWc when its gains exceed its copies, one per
tensor that crosses between layouts (`COPY_BYTES_PER_S`, read and write):

  * an input from an NCHW producer: packed once, except into a dense conv, which reads
    NCHW and writes NCHWc itself (the stem conv over an image's 3 channels);
  * a result that an NCHW node reads or the graph returns: unpacked once.

The plan is advice with no effect on numbers: `CpuKernels` packs and unpacks wherever
a kernel's neighbour disagrees, and an unpack nobody reads is removed by the build.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdoc.ir import Graph, Node, Value

from ..cpu_kernels import CpuSpec
from ..cpu_kernels.common import planned
from ..cpu_kernels.conv import is_depthwise, winograd_eligible
from .values import activation_shape as _shape

RATE = 100e9  # FLOP/s per core of the conv kernels (ResNet-18's layers, AVX-512)
COPY_BYTES_PER_S = 20e9  # a layout copy, read + write, cold
# an inverted residual block (mdoc.inverted_residual) has only an NCHWc kernel, 1.4-2x faster than
# its three convs apart: its whole time counts as the gain
GAIN = {"pointwise": 0.15, "conv": 0.04, "winograd": 0.5, "depthwise": 0.10, "pool": 0.0, "inverted_residual": 1.0}
CONVS = ("onnx.Conv", "mdoc.conv")


@dataclass
class Group:
    """Candidates joined by the activations they pass each other, and the decision on them."""

    nodes: list[Node]
    gain_s: float
    copy_s: float

    @property
    def blocked(self) -> bool:
        return self.gain_s > self.copy_s


@dataclass
class LayoutPlan:
    blocked: set[Node] = field(default_factory=set)  # nodes whose kernels run NCHWc
    groups: list[Group] = field(default_factory=list)


def plan_layouts(graph: Graph, spec: CpuSpec) -> LayoutPlan:
    """The layout of every candidate of `graph`'s top level (see the module docstring)."""
    kinds = {node: kind for node in graph.nodes() if (kind := candidate_kind(node, spec.lanes)) is not None}
    made_by = {node.output: node for node in kinds}
    parent = {node: node for node in kinds}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in kinds:
        for value in _activation_inputs(node):
            if value in made_by:
                parent[find(node)] = find(made_by[value])
    members: dict[Node, list[Node]] = {}
    for node in kinds:
        members.setdefault(find(node), []).append(node)

    plan = LayoutPlan()
    rate = RATE * spec.cores
    for nodes in members.values():
        inside = set(nodes)
        gain = sum(GAIN[kinds[n]] * _flops(n, kinds[n]) / rate for n in nodes)
        packed, unpacked = set(), set()
        for n in nodes:
            for i, value in enumerate(_activation_inputs(n)):
                # they read NCHW themselves
                dense_data = i == 0 and kinds[n] in ("conv", "pointwise", "inverted_residual")
                if made_by.get(value) not in inside and not dense_data:
                    packed.add(value)
            end = n.output
            if any(user not in inside for user, _ in end.uses()) or any(o is end for o in graph.outputs):
                unpacked.add(end)
        copies = sum(_bytes(v) for v in packed | unpacked) * 2 / COPY_BYTES_PER_S
        group = Group(nodes, gain, copies)
        plan.groups.append(group)
        if group.blocked:
            plan.blocked |= inside
    return plan


def candidate_kind(node: Node, lanes: int) -> str | None:
    """The kind of NCHWc kernel `node` has (a key of GAIN), or None."""
    if node.op == "mdoc.inverted_residual":
        return "inverted_residual"
    if node.op in ("onnx.MaxPool", "onnx.AveragePool"):
        shape = _shape(node.inputs[0])
        ok = shape is not None and len(shape) == 4 and shape[1] % lanes == 0 and len(node.outputs) == 1
        return "pool" if ok and len(node.attrs.get("kernel_shape", ())) == 2 else None
    if node.op not in CONVS:
        return None
    x, w = _shape(node.inputs[0]), node.inputs[1].const_value
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = _shape(node.output)
    if x is None or out is None or w is None or w.ndim != 4 or len(x) != 4:
        return None
    if bias is not None and bias.const_value is None:
        return None
    groups = int(node.attrs.get("group", 1))
    if is_depthwise(x, w.shape, groups):
        return "depthwise" if out[1] == groups and x[1] % lanes == 0 else None
    if groups == 1:
        if w.shape[2:] == (1, 1):
            # a shallow reduction (16 or 24 input channels) leaves the NCHWc register tile
            # mostly loading and storing: 16x112x112 -> 96 took 365 us NCHWc against 226 us
            # on the NCHW kernel's GEMM path, 24x56x56 -> 144 185 against 120
            return "pointwise" if x[1] >= 4 * lanes else None
        # Winograd's NCHWc kernel can take it: its gain counts (the builder decides, `conv_family`)
        strides, dilations = node.attrs.get("strides", [1, 1]), node.attrs.get("dilations", [1, 1])
        return "winograd" if winograd_eligible(x, w.shape, strides, dilations, groups, lanes) else "conv"
    return None


def _activation_inputs(node: Node) -> list[Value]:
    """The activations a kernel for `node` reads: its data, then the residual of an mdoc.conv or block."""
    residual = {"mdoc.conv": node.input(3), "mdoc.inverted_residual": node.input(7)}.get(node.op)
    return [node.inputs[0]] + ([residual] if residual is not None else [])


def _flops(node: Node, kind: str) -> float:
    out = _shape(node.output)
    if kind == "pool":
        return 0.0
    if kind == "inverted_residual":
        return _block_flops(node)
    w = node.inputs[1].const_value
    return 2.0 * planned(out[0]) * out[1] * out[2] * out[3] * w.shape[1] * w.shape[2] * w.shape[3]


def _block_flops(node: Node) -> float:
    """An mdoc.inverted_residual's three convs, as `_flops` counts each."""
    n, _, h, w = _shape(node.inputs[0])
    flops = 0.0
    for stage, (wi, strides, pads) in {"expand": (1, "expand_strides", "expand_pads"),
                                       "dw": (3, "strides", "pads"), "project": (5, None, None)}.items():
        weight = node.inputs[wi].const_value
        kh, kw = weight.shape[2:]
        (sh, sw) = node.attrs.get(strides, (1, 1)) if strides else (1, 1)
        top, left, bottom, right = node.attrs.get(pads, (0, 0, 0, 0)) if pads else (0, 0, 0, 0)
        h, w = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
        flops += 2.0 * planned(n) * weight.shape[0] * h * w * weight.shape[1] * kh * kw
    return flops


def _bytes(value: Value) -> int:
    shape = _shape(value)
    size = 1
    for d in shape or ():
        size *= planned(d)
    return 4 * size
