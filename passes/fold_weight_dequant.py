"""fold-weight-dequant: weight-only quantized MatMuls from other tools ==> mdoc.matmul_nbits.

Two forms reach mdoc from onnxruntime's `MatMulNBitsQuantizer` (and onnxruntime-genai's
model builder), and both land on the op that `quantize-weights` makes, so one kernel
serves them all:

    %y = com.microsoft.MatMulNBits(%a, %b, %scales, %zp?, %g_idx?, %bias?) {K, N, bits, block_size}
==> %y = mdoc.matmul_nbits(%a, %b, %scales, %zp?) {bits, block_size, k, n}  (+ onnx.Add of the bias)

    %w = onnx.DequantizeLinear(%q, %scales, %zp?) {axis = 0, block_size = B}   # q: int4/uint4/int8/uint8 [K, N]
    %y = onnx.MatMul(%a, %w)
==> %y = mdoc.matmul_nbits(%a, <q repacked>, <scales^T>, <zp repacked>?) {...}

The operands must be constants (they are the weights). A signed weight is stored as
its unsigned code q + 2^(bits-1), so a symmetric one (zero point 0) needs no zero points.
accuracy_level (onnxruntime's licence to quantize `a` to int8) is dropped: mdoc computes in
float. What does not fit is refused with the node's name (g_idx / act-order, 2 bits, float
zero points) or, for DequantizeLinear forms mdoc's op does not express (per-channel, other
axes, block sizes that are not a power of 2 from 16, a Cast between), left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.errors import MdocError
from mdoc.ir import Graph, Node
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.weight_quant_ops import MATMUL_NBITS, k_blocks, pack_rows

_QTYPES = {"i4": (4, True), "u4": (4, False), "i8": (8, True), "u8": (8, False)}


@register_pass("fold-weight-dequant")
@dataclass(frozen=True)
class FoldWeightDequant(GraphPass):
    """MatMulNBits and blocked DequantizeLinear -> MatMul (constant weights) to mdoc.matmul_nbits."""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        for node in graph.nodes():
            if node.op == "com.microsoft.MatMulNBits":
                self._matmul_nbits(graph, node)
                changed = True
            elif node.op == "onnx.DequantizeLinear":
                changed |= self._dequantize(graph, node)
        return changed

    def _matmul_nbits(self, graph: Graph, node: Node) -> None:
        where = f"fold-weight-dequant: MatMulNBits node '{node.name}'"
        bits, bs = int(node.attrs.get("bits", 4)), int(node.attrs["block_size"])
        k, n = int(node.attrs["K"]), int(node.attrs["N"])
        if bits not in (4, 8):
            raise MdocError(f"{where} has bits={bits}; mdoc runs 4 and 8 bits")
        if len(node.inputs) > 4 and node.input(4) is not None:
            raise MdocError(f"{where} has g_idx (act-order groups); mdoc runs blocks in K order only")
        operands = [node.input(i) if i < len(node.inputs) else None for i in range(4)]
        for i, what in ((1, "b"), (2, "scales"), (3, "zero_points")):
            v = operands[i]
            if v is not None and v.const_value is None:
                raise MdocError(f"{where}: operand {i} ({what}) is not a constant; mdoc needs the weights at "
                                f"compile time")
        zp = operands[3]
        if zp is not None and np.asarray(zp.const_value).dtype != np.uint8:
            raise MdocError(f"{where} has {np.asarray(zp.const_value).dtype} zero points; mdoc reads uint8 "
                            f"(packed) zero points")
        kb = k_blocks(k, bs)
        b = graph.constant(np.asarray(operands[1].const_value, np.uint8).reshape(n, kb, -1), before=node)
        s = graph.constant(np.asarray(operands[2].const_value).reshape(n, kb), before=node)
        inputs = [node.input(0), b, s]
        if zp is not None:
            inputs.append(graph.constant(np.asarray(zp.const_value).reshape(n, -1), before=node))
        y = graph.add(MATMUL_NBITS.name, inputs, {"bits": bits, "block_size": bs, "k": k, "n": n},
                      outputs=[node.output.type], name=node.name, provenance=self.name, before=node).output
        bias = node.input(5) if len(node.inputs) > 5 else None
        if bias is not None:
            y = graph.add("onnx.Add", [y, bias], outputs=[node.output.type], name=f"{node.name}/bias",
                          provenance=self.name, before=node).output
        graph.replace_node(node, [y])

    def _dequantize(self, graph: Graph, dq: Node) -> bool:
        q, s = dq.input(0), dq.input(1)
        zp = dq.input(2) if len(dq.inputs) > 2 else None
        bs = int(dq.attrs.get("block_size", 0))
        if (q.const_value is None or s.const_value is None or (zp is not None and zp.const_value is None)
                or q.type.dtype.text not in _QTYPES or q.const_value.ndim != 2 or bs < 16 or bs & (bs - 1)
                or int(dq.attrs.get("axis", 1)) not in (0, -2) or dq.attrs.get("output_dtype", 0)):
            return False
        users = [u for u, _ in dq.output.uses()]
        w_type = dq.output.type
        if not users or any(u.op != "onnx.MatMul" or u.input(1) is not dq.output or u.input(0) is dq.output
                            or u.input(0).type.dtype is not w_type.dtype for u in users):
            return False
        bits, signed = _QTYPES[q.type.dtype.text]
        k, n = q.const_value.shape
        kb = k_blocks(k, bs)
        off = (1 << (bits - 1)) if signed else 0
        code = (np.asarray(q.const_value).astype(np.int16) + off).astype(np.uint8)  # [K, N]
        zero = (np.zeros((kb, n), np.int16) if zp is None else np.asarray(zp.const_value).astype(np.int16)) + off
        padded = np.zeros((kb * bs, n), np.uint8)
        padded[:k] = code
        padded[k:] = np.repeat(zero.astype(np.uint8), bs, axis=0)[k:]  # padding codes dequantize to 0
        b = pack_rows(padded.T.reshape(n, kb, bs), bits)
        scales = np.ascontiguousarray(np.asarray(s.const_value).reshape(kb, n).T)
        symmetric = bool(np.all(zero == (1 << (bits - 1))))
        weights = [graph.constant(b, name=f"{q.name}_q{bits}", before=dq),
                   graph.constant(scales, name=f"{s.name}_scales", before=dq)]
        if not symmetric:
            weights.append(graph.constant(pack_rows(zero.T.astype(np.uint8), bits), before=dq))
        for user in users:
            inputs = [user.input(0), *weights]
            y = graph.add(MATMUL_NBITS.name, inputs, {"bits": bits, "block_size": bs, "k": k, "n": n},
                          outputs=[user.output.type], name=user.name, provenance=self.name, before=user).output
            graph.replace_node(user, [y])
        return True  # the DequantizeLinear, now unread, is dce's
