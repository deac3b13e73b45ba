"""mdoc's transformer ops (compiler/transformer_ops.py): verifier checks, text round trip, the numpy
semantics against onnxruntime through every export rule (standard op, contrib op, expansion)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mdoc.errors import VerifyError
from mdoc.evaluator import try_fold
from mdoc.ir import Graph, Model
from mdoc.onnx_export import export_model
from mdoc.ops import MDOC_OPS
from mdoc.parser import parse_model
from mdoc.printer import print_model
from mdoc.reference import run_onnxruntime
from mdoc.shape_inference import infer_types
from mdoc.types import DType, TensorType
from mdoc.verifier import verify

RNG = np.random.default_rng(0)


def one_op(op, shapes, attrs, consts=(), outputs=1, opset=17) -> Model:
    """A model of one `op` node: operand i is a graph input, or a random constant when i is in `consts`."""
    g = Graph("g")
    inputs = []
    for i, shape in enumerate(shapes):
        if shape is None:
            inputs.append(None)
        elif i in consts:
            inputs.append(g.constant(RNG.standard_normal(shape).astype(np.float32)))
        else:
            inputs.append(g.add_input(TensorType(DType.F32, shape), f"in{i}"))
    node = g.add(op, inputs, attrs, outputs=outputs, output_names=[f"y{j}" for j in range(outputs)])
    g.outputs.extend(node.outputs)
    model = Model(g, {"": opset})
    infer_types(model)  # through the export rule: the types ONNX infers for the expansion
    verify(model)
    return model


CASES = {
    "layer_norm": ("mdoc.layer_norm", [(2, 5, 8), (8,), (8,)], {"epsilon": 1e-5}, {1, 2}, 1),
    "layer_norm-no-beta": ("mdoc.layer_norm", [(2, 5, 8), (8,)], {"epsilon": 1e-3}, {1}, 1),
    "layer_norm-two-axes": ("mdoc.layer_norm", [(2, 5, 8), (5, 8)], {"axis": 1, "epsilon": 1e-5}, {1}, 1),
    "skip_layer_norm": ("mdoc.skip_layer_norm", [(2, 5, 8), (2, 5, 8), (8,), (8,), (8,)], {"epsilon": 1e-5},
                        {2, 3, 4}, 2),
    "skip_layer_norm-plain": ("mdoc.skip_layer_norm", [(2, 5, 8), (2, 5, 8), (8,)], {}, {2}, 1),
    "gelu-bias": ("mdoc.gelu", [(2, 5, 8), (8,)], {"approximate": "none"}, {1}, 1),
    "gelu-tanh": ("mdoc.gelu", [(2, 5, 8)], {"approximate": "tanh"}, set(), 1),
    "gelu-tanh-bias": ("mdoc.gelu", [(2, 5, 8), (8,)], {"approximate": "tanh"}, {1}, 1),
    "attention-mask": ("mdoc.attention", [(2, 5, 8), (2, 6, 8), (2, 6, 8), (2, 1, 1, 6)],
                       {"num_heads": 2, "scale": 0.5}, set(), 1),
    "attention": ("mdoc.attention", [(2, 5, 8), (2, 5, 8), (2, 5, 12)], {"num_heads": 4, "scale": 0.7}, set(), 1),
    "silu": ("mdoc.silu", [(2, 5, 8)], {}, set(), 1),
}


@pytest.mark.parametrize("runtime_ops", [False, True])
@pytest.mark.parametrize("opset", [13, 17, 20, 23])
@pytest.mark.parametrize("case", sorted(CASES))
def test_export_runs_in_onnxruntime_with_the_evaluator_outputs(case, opset, runtime_ops):
    op, shapes, attrs, consts, outputs = CASES[case]
    model = one_op(op, shapes, attrs, consts, outputs, opset)
    feeds = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in model.graph.inputs}
    (node,) = [n for n in model.graph if n.domain == "mdoc"]
    arrays = [None if v is None else feeds[v.name] if v.is_graph_input else v.const_value for v in node.inputs]
    want = MDOC_OPS[op].evaluate(node, arrays)
    proto = export_model(model, runtime_ops=runtime_ops)
    if not runtime_ops:
        onnx.checker.check_model(proto, full_check=True)
    got = run_onnxruntime(proto, feeds, optimize=False)
    for j in range(outputs):
        np.testing.assert_allclose(got[f"y{j}"], want[j], rtol=1e-4, atol=2e-5, err_msg=f"result {j}")


@pytest.mark.parametrize("opset,runtime_ops,want", [
    (17, False, {"LayerNormalization", "Gelu?", "Softmax"}),
    (23, False, {"LayerNormalization", "Attention"}),
    (17, True, {"LayerNormalization", "com.microsoft.FastGelu", "com.microsoft.MultiHeadAttention"}),
])
def test_export_picks_the_standard_op_then_the_contrib_op_then_the_expansion(opset, runtime_ops, want):
    ops = set()
    for case in ("layer_norm", "gelu-tanh", "attention"):
        op, shapes, attrs, consts, outputs = CASES[case]
        proto = export_model(one_op(op, shapes, attrs, consts, outputs, opset), runtime_ops=runtime_ops)
        ops |= {f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in proto.graph.node}
    present = {w for w in want if not w.endswith("?")}
    assert present <= ops, ops
    if opset < 20 and not runtime_ops:
        assert "Gelu" not in ops and "Tanh" in ops  # no Gelu before opset 20: the expansion


def test_the_text_form_round_trips():
    for case in sorted(CASES):
        op, shapes, attrs, consts, outputs = CASES[case]
        text = print_model(one_op(op, shapes, attrs, consts, outputs), {}, inline_limit=10**6)
        assert print_model(parse_model(text), {}, inline_limit=10**6) == text


def test_constant_operands_fold_through_the_evaluator():
    model = one_op("mdoc.gelu", [(3, 4)], {"approximate": "none"}, consts={0})
    (node,) = [n for n in model.graph if n.domain == "mdoc"]
    (y,) = try_fold(node, 17)
    x = node.inputs[0].const_value.astype(np.float64)
    from math import erf
    np.testing.assert_allclose(y, 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2))), rtol=1e-6)


@pytest.mark.parametrize("text,message", [
    ('%y = mdoc.attention(%x, %x, %x) {num_heads = 3, scale = 1.0} : f32[2,5,8]',
     "q's last dim 8 is not a multiple of num_heads = 3"),
    ('%y = mdoc.attention(%x, %x, %x) {scale = 1.0} : f32[2,5,8]', "required attribute 'num_heads' is missing"),
    ('%y = mdoc.gelu(%x) {approximate = "fast"} : f32[2,5,8]', "approximate = 'fast'; it must be 'none' or 'tanh'"),
    ('%y = mdoc.layer_norm(%x, %g) {axis = 3} : f32[2,5,8]', "axis 3 is out of range for x of rank 3"),
    ('%y = mdoc.layer_norm(%x, %g) {eps = 0.1} : f32[2,5,8]', "has unknown attribute 'eps'"),
    ('%y = mdoc.layer_norm(%x, %w) : f32[2,5,8]', "gamma has shape [5]; it must be a vector over the last axis (8)"),
    ('%y = mdoc.layer_norm(%i, %g) : f32[2,5,8]', "operand 0 (x) has type i64; it must be a float"),
])
def test_the_verifier_names_what_is_wrong(text, message):
    graph = f"""
graph @g(%x: f32[2,5,8], %i: i64[2,5,8]) -> (%y: f32[2,5,8]) {{
  %g = onnx.Constant() {{value = dense<[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]>}} : f32[8]
  %w = onnx.Constant() {{value = dense<[1.0, 1.0, 1.0, 1.0, 1.0]>}} : f32[5]
  {text}
  return %y
}}"""
    with pytest.raises(VerifyError) as e:
        verify(parse_model(graph))
    assert message in str(e.value)
