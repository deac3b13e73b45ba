"""What `mdoc inspect` reports: signature, opsets, op histogram, parameters and a FLOPs estimate.

FLOPs count multiply-adds as two operations for Conv, ConvTranspose, Gemm and
MatMul, and one operation per output element for everything else whose output
shape is known; symbolic dims count as 1 (so a batch dim N gives FLOPs per
item), and ops with unknown dims are listed rather than guessed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .ir import CONSTANT, Model, Node
from .types import TensorType


@dataclass
class ModelStats:
    inputs: list[tuple[str, str]]
    outputs: list[tuple[str, str]]
    opsets: dict[str, int]
    ops: dict[str, int]
    nodes: int
    parameters: int
    parameter_bytes: int
    flops: int
    flops_unknown: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "inputs": [{"name": n, "type": t} for n, t in self.inputs],
            "outputs": [{"name": n, "type": t} for n, t in self.outputs],
            "opsets": self.opsets, "ops": self.ops, "nodes": self.nodes,
            "parameters": self.parameters, "parameter_bytes": self.parameter_bytes,
            "flops": self.flops, "flops_unknown": self.flops_unknown,
        }


def model_stats(model: Model) -> ModelStats:
    g = model.graph
    hist: Counter[str] = Counter()
    params = nbytes = flops = 0
    unknown: Counter[str] = Counter()
    for node in g.walk():
        if node.op == CONSTANT:
            value = node.attrs["value"]
            params += int(value.size)
            nbytes += int(value.nbytes)
            continue
        hist[node.op] += 1
        f = node_flops(node)
        if f is None:
            unknown[node.op] += 1
        else:
            flops += f
    return ModelStats(
        inputs=[(v.name, str(v.type)) for v in g.inputs],
        outputs=[(v.name, str(v.type)) for v in g.outputs],
        opsets=dict(model.opset_imports), ops=dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        nodes=sum(hist.values()), parameters=params, parameter_bytes=nbytes, flops=flops,
        flops_unknown=[f"{op} x{n}" for op, n in sorted(unknown.items())],
    )


def _numel(t) -> int | None:
    """Elements of a tensor type, counting each symbolic dim as 1 (FLOPs per batch item, say)."""
    if not isinstance(t, TensorType) or t.shape is None or any(d is None for d in t.shape):
        return None
    return int(np.prod([d if isinstance(d, int) else 1 for d in t.shape], dtype=np.int64))


def node_flops(node: Node) -> int | None:
    """Estimated floating-point operations of one node, or None when its shapes are unknown."""
    outs = [_numel(o.type) for o in node.outputs]
    if any(n is None for n in outs):
        return None
    out = sum(outs)
    op = node.op
    if op in ("onnx.Conv", "onnx.ConvTranspose", "mdoc.conv"):
        w = node.input(1)
        if w is None or not isinstance(w.type, TensorType) or not w.type.is_static:
            return None
        per_out = int(np.prod(w.type.shape[1:]))  # Cin/groups * kh * kw  # Cin/groups * kh * kw
        if op == "onnx.ConvTranspose":
            x = _numel(node.input(0).type)
            return None if x is None else 2 * x * int(np.prod(w.type.shape[1:]))
        return 2 * out * per_out
    if op in ("onnx.MatMul", "onnx.Gemm", "mdoc.matmul"):
        a = node.input(0)
        if a is None or not isinstance(a.type, TensorType) or not a.type.shape or not isinstance(a.type.shape[-1], int):
            return None
        k = a.type.shape[-2] if op == "onnx.Gemm" and node.attrs.get("transA", 0) else a.type.shape[-1]
        if not isinstance(k, int):
            return None
        return 2 * out * k
    if op in ("mdoc.inverted_residual", "mdoc.attention"):
        return None  # products inside the fused op that its result's size does not tell
    return out
