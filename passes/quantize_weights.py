"""quantize-weights: MatMul / Gemm with a constant weight ==> mdoc.matmul_nbits (weight-only int4 / int8).

    %y = onnx.MatMul(%x, %w)        # w: f32[2048, 5632], a constant
==>
    %y = mdoc.matmul_nbits(%x, %w_q4, %w_scales) {bits = 4, block_size = 32, k = 2048, n = 5632}

The path large decoders need: their decode step is bound by reading the weights, so
storing them in 4 bits (plus one scale per block of `block-size` values along K) cuts
what every token reads about 7x, with no calibration data (activations stay float).
Blocks follow K, as in onnxruntime's MatMulNBits; a K that is not a multiple of the
block is padded (the ONNX spec's partial last block). `symmetric=true` stores no zero
points (2^(bits-1) stands for 0); `symmetric=false` stores one per block, for weights
whose blocks are lopsided. `scale-type=f16` (the default) keeps the scales in float16
wherever they fit one (exact in float32, half the scales' bytes: at block 32 this is
what brings int4 under 0.15x of the float32 weight); `f32` keeps them in float32.

MatMuls smaller than `min-elements` weights stay float (their weights are not worth the
kernel's overhead), as do the nodes named in `exclude` (separated by ';'), a Gemm with
transA, and weights that are not 2-D. Gemm's transB transposes the weight now, alpha
and C (times beta) stay as a Mul and an Add after the product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.errors import MdocError
from mdoc.ir import Graph, Node
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.types import TensorType
from mdoc.weight_quant_ops import BITS, MATMUL_NBITS, quantize_blocks

_SCALE_TYPES = {"f16": np.float16, "f32": np.float32}


def weight_of(node: Node) -> np.ndarray | None:
    """The [K, N] float weight that `node` multiplies by, when it is a constant the pass can take."""
    x = node.input(0) if node.inputs else None
    if x is None or not isinstance(x.type, TensorType) or x.type.dtype.text not in ("f32", "f16"):
        return None
    w = node.input(1) if len(node.inputs) > 1 else None
    if w is None or w.const_value is None:
        return None
    array = np.asarray(w.const_value)
    if node.op == "onnx.MatMul":
        if array.ndim > 2 and all(d == 1 for d in array.shape[:-2]):
            array = array.reshape(array.shape[-2:])
        shape = x.type.shape
        if array.ndim != 2 or shape is None or len(shape) < 1:
            return None
        return array
    if node.op == "onnx.Gemm" and not node.attrs.get("transA", 0) and array.ndim == 2:
        return array.T if node.attrs.get("transB", 0) else array
    return None


@register_pass("quantize-weights")
@dataclass(frozen=True)
class QuantizeWeights(GraphPass):
    """MatMul / Gemm with constant weights to mdoc.matmul_nbits: block-quantized int4 / int8 weights, float activations."""

    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    scale_type: str = "f16"
    min_elements: int = 16384
    exclude: str = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.bits not in BITS:
            raise MdocError(f"quantize-weights: bits={self.bits}; expected 4 or 8")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise MdocError(f"quantize-weights: block-size={self.block_size}; expected a power of 2, at least 16 "
                            f"(32 to 128 are usual)")
        if self.scale_type not in _SCALE_TYPES:
            raise MdocError(f"quantize-weights: scale-type={self.scale_type}; expected f16 or f32")
        skip = {n for n in self.exclude.split(";") if n}
        changed = False
        for node in graph.nodes():
            if node.name in skip or node.op not in ("onnx.MatMul", "onnx.Gemm"):
                continue
            w = weight_of(node)
            if w is None or w.size < self.min_elements:
                continue
            self._replace(graph, node, w)
            changed = True
        return changed

    def _replace(self, graph: Graph, node: Node, w: np.ndarray) -> None:
        k, n = w.shape
        b, scales, zp = quantize_blocks(w, self.bits, self.block_size, self.symmetric, _SCALE_TYPES[self.scale_type])
        first = graph.nodes()[0]
        base = node.input(1).name or node.name or "weight"
        operands = [node.input(0), graph.constant(b, name=f"{base}_q{self.bits}", before=first),
                    graph.constant(scales, name=f"{base}_scales", before=first)]
        if zp is not None:
            operands.append(graph.constant(zp, name=f"{base}_zero_points", before=first))
        y_type = node.output.type
        q = graph.add(MATMUL_NBITS.name, operands, {"bits": self.bits, "block_size": self.block_size, "k": k, "n": n},
                      outputs=[y_type], name=node.name, provenance=self.name, before=node)
        y = q.output
        if node.op == "onnx.Gemm":
            dtype = np.dtype(w.dtype)
            alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
            if alpha != 1.0:
                y = graph.add("onnx.Mul", [y, graph.constant(np.asarray(alpha, dtype), before=node)],
                              outputs=[y_type], name=f"{node.name}/alpha", provenance=self.name, before=node).output
            c = node.input(2) if len(node.inputs) > 2 else None
            if c is not None and beta != 0.0:
                if beta != 1.0:
                    c = graph.add("onnx.Mul", [c, graph.constant(np.asarray(beta, dtype), before=node)],
                                  outputs=[c.type], name=f"{node.name}/beta", provenance=self.name,
                                  before=node).output
                y = graph.add("onnx.Add", [y, c], outputs=[y_type], name=f"{node.name}/bias", provenance=self.name,
                              before=node).output
        graph.replace_node(node, [y])
