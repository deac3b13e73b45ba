"""quantize-static: calibrated observers become QuantizeLinear / DequantizeLinear pairs; weights int8.

After calibration (`mdoc.calibration.calibrate`) every mdoc.observe holds the range
of its activation. This pass writes the model in ONNX's QDQ form, the form that
onnxruntime, TensorRT and mdoc's own fusion passes read:

- each observer becomes Q(x) -> DQ with an affine uint8 (or int8) scale and zero
  point whose grid covers [min, max] and holds 0 exactly (zero padding and ReLU's
  zeros stay exact);
- the constant weight of each Conv / MatMul / Gemm that reads an observed activation
  becomes an int8 constant and a DQ: symmetric (zero point 0, range [-127, 127]),
  per output channel by default (Conv's axis 0, MatMul's axis 1, Gemm's by transB),
  so a channel of small weights keeps its precision. The model's weight bytes drop
  about 4x; biases stay float.

An observer without a range is an error naming it: run calibration first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.errors import MdocError
from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.quant_ops import OBSERVE
from mdoc.types import DType, TensorType

from .insert_observers import quantizable

_ACTIVATIONS = {"u8": (np.uint8, 0, 255), "s8": (np.int8, -128, 127)}


def activation_qparams(lo: float, hi: float, kind: str) -> tuple[np.float32, np.integer]:
    """Scale and zero point of an affine `kind` grid over [lo, hi], widened to hold 0."""
    dtype, qmin, qmax = _ACTIVATIONS[kind]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zero = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return np.float32(scale), dtype(zero)


def weight_axis(node: Node) -> int:
    """The axis of the output channels in the weight of `node`."""
    if node.op == "onnx.Conv":
        return 0
    if node.op == "onnx.Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return 1


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of `w`, per slice along `axis` (None: one scale); (int8 values, float32 scales)."""
    reduce = tuple(a for a in range(w.ndim) if a != axis) if axis is not None else None
    peak = np.max(np.abs(w), axis=reduce).astype(np.float64)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


@register_pass("quantize-static")
@dataclass(frozen=True)
class QuantizeStatic(GraphPass):
    """Calibrated mdoc.observe ops to Q/DQ pairs, and the weights of the ops they feed to per-channel int8."""

    activations: str = "u8"
    per_channel: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.activations not in _ACTIVATIONS:
            raise MdocError(f"quantize-static: activations={self.activations}; expected u8 or s8")
        if self.per_channel and ctx.model.opset < 13:
            raise MdocError(f"quantize-static: per-channel weights need opset 13 or later (the model has "
                            f"{ctx.model.opset}); use per-channel=false")
        quantized: dict[Value, Value] = {}
        changed = False
        for node in graph.nodes():
            if node.op == OBSERVE.name:
                self._activation(graph, node)
                changed = True
        for node in graph.nodes():
            x = node.input(0) if node.inputs else None
            fed = x is not None and x.producer() is not None and x.producer().op == "onnx.DequantizeLinear"
            if fed and quantizable(node):
                w = node.input(1)
                if w not in quantized:
                    quantized[w] = self._weight(graph, node, w)
                node.set_input(1, quantized[w])
                changed = True
        return changed

    def _activation(self, graph: Graph, obs: Node) -> None:
        if "min" not in obs.attrs:
            raise MdocError(f"quantize-static: observer '{obs.name}' has no range; calibrate the model first "
                            f"(mdoc quantize --calib DATA)")
        scale, zero = activation_qparams(obs.attrs["min"], obs.attrs["max"], self.activations)
        x = obs.input(0)
        s, z = graph.constant(scale, before=obs), graph.constant(np.asarray(zero), before=obs)
        qtype = TensorType(DType.from_numpy(zero.dtype), x.type.shape if isinstance(x.type, TensorType) else None)
        q = graph.add("onnx.QuantizeLinear", [x, s, z], outputs=[qtype], name=f"{obs.name}/quantize",
                      provenance=self.name, before=obs)
        dq = graph.add("onnx.DequantizeLinear", [q.output, s, z], outputs=[obs.output.type],
                       name=f"{obs.name}/dequantize", provenance=self.name, before=obs)
        graph.replace_node(obs, [dq.output])

    def _weight(self, graph: Graph, node: Node, w: Value) -> Value:
        array = w.const_value.astype(np.float32)
        axis = weight_axis(node) if self.per_channel else None
        q, scale = quantize_weight(array, axis)
        first = graph.nodes()[0]
        qv = graph.constant(q, name=f"{w.name}_quantized", before=first)
        sv = graph.constant(scale if axis is not None else scale.reshape(()), before=first)
        zv = graph.constant(np.zeros(scale.shape if axis is not None else (), np.int8), before=first)
        attrs = {"axis": axis} if axis is not None else {}
        dq = graph.add("onnx.DequantizeLinear", [qv, sv, zv], attrs, outputs=[w.type],
                       name=f"{w.name}/dequantize", provenance=self.name, before=first)
        return dq.output
