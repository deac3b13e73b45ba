"""decompose-scan: a Scan whose number of iterations is static becomes one copy of its body per iteration.

TVM has no Scan. Iteration t reads slice t of every scan input (the last slice
first for a reverse input) with a Gather, and the states the previous copy
returned; the scan outputs are the per-iteration values, each Unsqueezed on its
output axis and Concatenated in iteration order (reversed for a reverse
output). The body's constants are copied once and shared by all iterations.

A Scan whose iteration count is known only at run time becomes an onnx.Loop
over its body instead (see `_as_loop`), which the TVM target lowers to a Relax
while loop. A Scan stays as it is (with a note in the pass log) when it runs 0
or more than `max-iterations` iterations, and for the opset 8 form of Scan
(batched, with sequence_lens); the TVM lowering then reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.clone import clone_constants, clone_graph_into, erase_unused_constants, replace_results
from mdoc.errors import MdocError
from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.passes.decompose_util import Builder, describe, normalize_axis, shape_of, unroll_all
from mdoc.shape_inference import merge
from mdoc.types import DType, TensorType


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
    if count == 0:
        return "it runs 0 iterations (the scan outputs' shapes are unknown)"
    if count is not None and count > limit:
        return f"it runs {count} iterations, more than max-iterations={limit}"
    ranks = []
    for j, out in enumerate(body.outputs[n:]):
        shape = shape_of(out)
        if shape is None and out_axes[j] < 0:
            return f"scan output {j} has unknown rank, so its axis {out_axes[j]} cannot be resolved"
        ranks.append(None if shape is None else len(shape) + 1)
    if count is None:
        return _as_loop(node, ctx, n, axes, in_dirs, out_axes, out_dirs, ranks)

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


def _as_loop(node: Node, ctx: PassContext, n: int, axes: list[int], in_dirs, out_axes, out_dirs,
             ranks: list[int | None]) -> str:
    """A Scan of a run-time length becomes an onnx.Loop (which the TVM target lowers); return why not instead.

    The trip count is the first scan input's size along its axis, read at run time;
    iteration i binds the Scan body's slices to row i of each scan input (inputs
    read in reverse are reversed first, by a Gather of last - Range(0, count)), and
    the Loop stacks each scan output on axis 0, which is then reversed or moved to
    its output axis.
    """
    opset = ctx.model.opset
    reverse = any(in_dirs) or any(out_dirs)
    if reverse and opset < 11:
        return (f"the number of iterations is known only at run time, and reversing a scan input or output "
                f"needs Range (opset 11); the model is opset {opset}")
    for j, axis in enumerate(out_axes):
        if axis != 0 and ranks[j] is None:
            return f"scan output {j} has unknown rank, so it cannot be moved to its axis {axis}"
    body: Graph = node.attrs["body"]
    graph, inputs = node.graph, node.inputs
    b = Builder(graph, node, opset, "decompose-scan", node.name)
    first, i64 = inputs[n], DType.I64
    dims = shape_of(first)
    shape = b.emit("onnx.Shape", [first], {}, TensorType(i64, (None if dims is None else len(dims),)))
    count = b.gather(shape, axes[0], 0)
    length = None if dims is None else dims[axes[0]]
    backwards = None
    if reverse:
        ahead = b.emit("onnx.Range", [b.i64(0), count, b.i64(1)], {}, TensorType(i64, (length,)))
        backwards = b.sub(b.sub(count, b.i64(1)), ahead)
    scanned = [b.emit("onnx.Gather", [x, backwards], {"axis": axes[j]}, x.type) if in_dirs[j] else x
               for j, x in enumerate(inputs[n:])]

    loop_body = Graph(f"{body.name}_loop")
    i = loop_body.add_input(TensorType(i64, ()), "i")
    cond = loop_body.add_input(TensorType(DType.BOOL, ()), "cond")
    vm = {v: loop_body.add_input(v.type, v.name) for v in body.inputs[:n]}
    inner = Builder(loop_body, None, opset, "decompose-scan", f"{node.name}/step" if node.name else "")
    for j, x in enumerate(scanned):
        piece = inner.gather(x, i, axes[j])
        piece.type = merge(body.inputs[n + j].type, piece.type)
        vm[body.inputs[n + j]] = piece
    results = clone_graph_into(body, loop_body, None, vm, name_prefix=f"{node.name}/" if node.name else "",
                               provenance="decompose-scan")
    loop_body.outputs = [cond, *results]
    stacked = [TensorType(t.dtype, None if t.shape is None else (length, *t.shape)) if isinstance(t, TensorType)
               else t for t in (v.type for v in body.outputs[n:])]
    loop = b.emit("onnx.Loop", [count, None, *inputs[:n]], {"body": loop_body},
                  [v.type for v in node.outputs[:n]] + stacked)
    loop = list(loop) if isinstance(loop, tuple) else [loop]
    outs = list(loop[:n])
    for j, v in enumerate(loop[n:]):
        if out_dirs[j]:
            v = b.emit("onnx.Gather", [v, backwards], {"axis": 0}, v.type)
        axis = normalize_axis(out_axes[j], ranks[j]) if ranks[j] is not None else out_axes[j]
        if axis != 0:
            v = b.transpose(v, [*range(1, axis + 1), 0, *range(axis + 1, ranks[j])])
        v.type = merge(node.outputs[n + j].type, v.type)
        outs.append(v)
    operands = node.inputs
    replace_results(node, outs, provenance="decompose-scan")
    erase_unused_constants(operands)
    return ""
