"""fuse-attention: the BERT self-attention block (as torch.onnx writes it) becomes one mdoc.attention;
numerics against onnxruntime for every export form; refusals with their reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mdoc.models.builder import FLOAT, GraphBuilder
from mdoc.models.layers import self_attention
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.reference import compare_outputs, run_onnxruntime
from mdoc.rewrite import explain
from pass_testing import apply

CLEANUP = "infer-shapes,fold-constants{max-bytes=0},simplify,cse,dce,infer-shapes"


def attention_model(hidden=16, heads=2, mask=True, batch="N", seq="S") -> onnx.ModelProto:
    """One self-attention block of `mdoc.models.layers` (run-time Shape chains, K's merged transpose)."""
    b = GraphBuilder("attn", seed=0)
    x = b.input("x", FLOAT, [batch, seq, hidden])
    m = b.input("mask", FLOAT, [batch, 1, 1, seq]) if mask else None
    y = self_attention(b, x, "attn", hidden, heads, mask=m)
    return b.model([(b.rename(y, "y"), FLOAT, [batch, seq, hidden])], doc="one attention block")


def feeds_for(n=2, s=5, hidden=16, mask=True):
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((n, s, hidden)).astype(np.float32)}
    if mask:
        keep = rng.integers(0, 2, (n, 1, 1, s)).astype(np.float32)
        keep[..., 0] = 1
        feeds["mask"] = (1.0 - keep) * -10000.0
    return feeds


def fused(proto: onnx.ModelProto):
    model = import_model(proto)
    apply(model, CLEANUP + ",fuse-attention,dce")
    return model


@pytest.mark.parametrize("mask", [True, False])
def test_the_block_becomes_one_attention_with_the_projections_kept(mask):
    model = fused(attention_model(mask=mask))
    ops = [n.op for n in model.graph if n.op != "onnx.Constant"]
    # Q, K, V and output projections stay (MatMul + bias Add); the heads split/merge is inside the op
    assert ops.count("mdoc.attention") == 1 and "onnx.Softmax" not in ops and "onnx.Transpose" not in ops
    (node,) = [n for n in model.graph if n.op == "mdoc.attention"]
    assert node.attrs == {"num_heads": 2, "scale": pytest.approx(1 / np.sqrt(8))}
    assert len(node.inputs) == (4 if mask else 3)
    assert node.provenance == ("attention" if mask else "attention-unmasked")


@pytest.mark.parametrize("runtime_ops,opset", [(False, 17), (True, 17), (False, 23)])
def test_fused_outputs_match_the_original_in_onnxruntime(runtime_ops, opset):
    proto = attention_model()
    model = fused(proto)
    model.opset_imports[""] = opset  # the export rule picks the expansion, MultiHeadAttention or Attention
    out = export_model(model, runtime_ops=runtime_ops)
    kinds = {(n.domain, n.op_type) for n in out.graph.node}
    want = {(False, 17): ("", "Softmax"), (True, 17): ("com.microsoft", "MultiHeadAttention"),
            (False, 23): ("", "Attention")}[(runtime_ops, opset)]
    assert want in kinds
    feeds = feeds_for()
    bad = [d for d in compare_outputs(run_onnxruntime(proto, feeds, optimize=False), run_onnxruntime(out, feeds),
                                      rtol=1e-4, atol=1e-5) if not d.ok]
    assert not bad, bad


def test_k_transposed_twice_and_mul_scale_fuse_too():
    """The dynamo exporter's form: K split with [0, 2, 1, 3] then transposed [0, 1, 3, 2]; the scale a Mul."""
    proto = attention_model(mask=False, batch=2, seq=5)  # static: the shape chains fold without simplify
    nodes = list(proto.graph.node)
    for i, node in enumerate(nodes):
        if node.op_type == "Transpose" and list(node.attribute[0].ints) == [0, 2, 3, 1]:
            node.attribute[0].ints[:] = [0, 2, 1, 3]
            out = node.output[0]
            node.output[0] = out + "_heads"
            nodes.insert(i + 1, onnx.helper.make_node("Transpose", [out + "_heads"], [out], perm=[0, 1, 3, 2]))
        if node.op_type == "Div" and "self" in node.name:
            node.op_type = "Mul"  # by sqrt(head_dim): a scale of sqrt(8), not 1 / sqrt(8)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    model = import_model(proto)
    apply(model, "infer-shapes,fold-constants,dce,fuse-attention,dce")  # simplify would merge K's transposes
    (node,) = [n for n in model.graph if n.op == "mdoc.attention"]
    assert node.provenance == "attention-unmasked-mul-kt2" and node.attrs["scale"] == pytest.approx(np.sqrt(8))
    feeds = feeds_for(mask=False)
    got = run_onnxruntime(export_model(model), feeds)
    assert not [d for d in compare_outputs(run_onnxruntime(proto, feeds), got, rtol=1e-4, atol=1e-5) if not d.ok]


def test_a_softmax_over_another_axis_is_refused_with_the_reason():
    proto = attention_model()
    for node in proto.graph.node:
        if node.op_type == "Softmax":
            node.attribute[0].i = 2
    model = fused(proto)
    assert not any(n.op == "mdoc.attention" for n in model.graph)
    lines = "\n".join(explain(model.graph, "attention", model))
    assert "check refused: the Softmax is over axis 2, not the key axis" in lines


def test_a_run_time_scale_is_refused_with_the_reason():
    proto = attention_model()
    proto.graph.input.append(onnx.helper.make_tensor_value_info("c", FLOAT, []))
    (div,) = [n for n in proto.graph.node if n.op_type == "Div" and "self" in n.name]
    div.input[1] = "c"
    model = fused(proto)
    assert not any(n.op == "mdoc.attention" for n in model.graph)
    lines = "\n".join(explain(model.graph, "attention", model))
    assert "operand 1 of '/attn/self/Div' (onnx.Div), %c, is not a constant" in lines
