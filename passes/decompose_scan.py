"""decompose-scan: a Scan whose number of iterations is static becomes one copy of its body per iteration.

TVM has no Scan. Iteration t reads slice t of every scan input (the last slice
first for a reverse input) with a Gather, and the states the previous copy
returned; the scan outputs are the per-iteration values, each Unsqueezed on its
output axis and Concatenated in iteration order (reversed for a reverse
output). The body's constants are copied once and shared by all iterations.

A Scan stays as it is (with a note in the pass log) when the iteration count is
not a static size, is 0, or is above `max-iterations`, and for the opset 8 form
of Scan (batched, with sequence_lens); the TVM lowering then reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.clone import clone_constants, clone_graph_into, erase_unused_constants, replace_results
from mdoc.errors import MdocError
from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.passes.decompose_util import Builder, describe, normalize_axis, shape_of, unroll_all
from mdoc.shape_inference import merge


@register_pass("decompose-scan")
@dataclass(frozen=True)
class DecomposeScan(GraphPass):
    """Unroll every Scan with a static iteration count into copies of its body."""

    max_iterations: int = 1024

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return unroll_all(graph, ctx, "onnx.Scan", _unroll, "decompose-scan", self.max_iterations)


def _unroll(node: Node, ctx: PassContext, limit: int) -> str:
    """Unroll `node`; return why not instead when it cannot."""
    opset = ctx.model.opset_of("onnx.Scan")
    if opset < 9:
        return f"opset {opset} Scan (with a batch axis and sequence_lens) is not unrolled; use opset 9 or later"
    body: Graph = node.attrs["body"]
    m = node.attrs["num_scan_inputs"]
    inputs = node.inputs
    n = len(inputs) - m
    k = len(body.outputs) - n
    if n < 0 or k < 0 or len(body.inputs) != n + m:
        raise MdocError(f"decompose-scan: {describe(node)}: {len(inputs)} inputs, {m} scan inputs, body with "
                        f"{len(body.inputs)} inputs and {len(body.outputs)} outputs do not fit together")
    in_axes = node.attrs.get("scan_input_axes", (0,) * m)
    in_dirs = node.attrs.get("scan_input_directions", (0,) * m)
    out_axes = node.attrs.get("scan_output_axes", (0,) * k)
    out_dirs = node.attrs.get("scan_output_directions", (0,) * k)

    # The iteration count: the scan axis of any scan input whose size is static.
    axes, count = [], None
    for j, x in enumerate(inputs[n:]):
        shape = shape_of(x)
        if shape is None:
            if in_axes[j] < 0:
                return f"scan input {j} has unknown rank, so its axis {in_axes[j]} cannot be resolved"
            axes.append(in_axes[j])
            continue
        axis = normalize_axis(in_axes[j], len(shape))
        axes.append(axis)
        if isinstance(shape[axis], int):
            if count is not None and count != shape[axis]:
                raise MdocError(f"decompose-scan: {describe(node)}: scan inputs have {count} and {shape[axis]} "
                                "slices along their scan axes; they must agree")
            count = shape[axis]
    if count is None:
        sizes = [shape_of(x)[a] if shape_of(x) is not None else "?" for x, a in zip(inputs[n:], axes)]
        return f"the number of iterations is not static (scan axis sizes: {', '.join(map(str, sizes))})"
    if count == 0:
        return "it runs 0 iterations (the scan outputs' shapes are unknown)"
    if count > limit:
        return f"it runs {count} iterations, more than max-iterations={limit}"
    ranks = []
    for j, out in enumerate(body.outputs[n:]):
        shape = shape_of(out)
        if shape is None and out_axes[j] < 0:
            return f"scan output {j} has unknown rank, so its axis {out_axes[j]} cannot be resolved"
        ranks.append(None if shape is None else len(shape) + 1)

    graph = node.graph
    b = Builder(graph, node, ctx.model.opset, "decompose-scan", node.name)
    shared = clone_constants(body, graph, node)
    states = list(inputs[:n])
    slices = [[None] * count for _ in range(k)]
    for t in range(count):
        vm = dict(shared)
        for i, s in enumerate(states):
            vm[body.inputs[i]] = s
        for j, x in enumerate(inputs[n:]):
            piece = b.gather(x, count - 1 - t if in_dirs[j] else t, axes[j])
            if isinstance(piece, Value):
                piece.type = merge(body.inputs[n + j].type, piece.type)
            vm[body.inputs[n + j]] = b.value(piece)
        results = clone_graph_into(body, graph, node, vm, name_prefix=f"{node.name}/{t}/" if node.name else "",
                                   provenance="decompose-scan")
        states = results[:n]
        for j in range(k):
            slices[j][count - 1 - t if out_dirs[j] else t] = results[n + j]
    outs = []
    for j in range(k):
        axis = out_axes[j] if ranks[j] is None else normalize_axis(out_axes[j], ranks[j])
        out = b.concat([b.unsqueeze(v, axis) for v in slices[j]], axis)
        if isinstance(out, Value):
            out.type = merge(node.outputs[n + j].type, out.type)
        outs.append(b.value(out))
    operands = node.inputs
    replace_results(node, states + outs, provenance="decompose-scan")
    erase_unused_constants(operands)
    return ""
