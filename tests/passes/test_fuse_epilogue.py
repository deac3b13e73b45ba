"""fuse-epilogue: golden IR for each stage, refusals with their reasons, numerics (reference evaluator and the
export, plain and with onnxruntime's contrib ops) against onnxruntime, and the zoo's counts."""

from __future__ import annotations

import numpy as np
import pytest

from mdoc.evaluator import try_fold
from mdoc.ir import Graph, Model
from mdoc.models import ZOO, build
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS
from mdoc.reference import run_onnxruntime
from mdoc.rewrite import explain
from mdoc.types import DType, TensorType
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of

CONV_W = "dense<[[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]>"


def test_conv_residual_and_relu_become_one_op():
    assert_golden("fuse-epilogue", f"""
graph @g(%x: f32[1,2,4,4]) -> (%y: f32[1,2,4,4]) {{
  %w = onnx.Constant() {{value = {CONV_W}}} : f32[2,2,1,1]
  %c = onnx.Conv(%x, %w) {{kernel_shape = [1, 1]}} : f32[1,2,4,4]
  %s = onnx.Add(%x, %c) : f32[1,2,4,4]
  %y = onnx.Relu(%s) : f32[1,2,4,4]
  return %y
}}""", f"""
graph @g(%x: f32[1,2,4,4]) -> (%y: f32[1,2,4,4]) {{
  %w = onnx.Constant() {{value = {CONV_W}}} : f32[2,2,1,1]
  %y = mdoc.conv(%x, %w, none, %x) {{activation = "relu", kernel_shape = [1, 1]}} : f32[1,2,4,4] from("conv-activation")
  return %y
}}""")


def test_clip_keeps_its_bounds_as_params():
    assert_golden("fuse-epilogue", f"""
graph @g(%x: f32[1,2,4,4]) -> (%y: f32[1,2,4,4]) {{
  %w = onnx.Constant() {{value = {CONV_W}}} : f32[2,2,1,1]
  %lo = onnx.Constant() {{value = dense<0.0>}} : f32[]
  %hi = onnx.Constant() {{value = dense<6.0>}} : f32[]
  %c = onnx.Conv(%x, %w) {{group = 1}} : f32[1,2,4,4]
  %y = onnx.Clip(%c, %lo, %hi) : f32[1,2,4,4]
  return %y
}}""", f"""
graph @g(%x: f32[1,2,4,4]) -> (%y: f32[1,2,4,4]) {{
  %w = onnx.Constant() {{value = {CONV_W}}} : f32[2,2,1,1]
  %y = mdoc.conv(%x, %w) {{activation = "clip", activation_params = [0.0, 6.0], group = 1}} : f32[1,2,4,4] from("conv-activation")
  return %y
}}""")


def test_matmul_takes_scale_bias_residual_and_gelu_in_order():
    assert_golden("fuse-epilogue", """
graph @g(%a: f32[3,2]) -> (%y: f32[3,2]) {
  %b = onnx.Constant() {value = dense<[[1.0, 2.0], [3.0, 4.0]]>} : f32[2,2]
  %k = onnx.Constant() {value = dense<2.0>} : f32[]
  %c = onnx.Constant() {value = dense<[[0.5, -0.5]]>} : f32[1,2]
  %m = onnx.MatMul(%a, %b) : f32[3,2]
  %d = onnx.Div(%m, %k) : f32[3,2]
  %e = onnx.Add(%c, %d) : f32[3,2]
  %r = onnx.Add(%e, %a) : f32[3,2]
  %y = mdoc.gelu(%r) {approximate = "none"} : f32[3,2]
  return %y
}""", """
graph @g(%a: f32[3,2]) -> (%y: f32[3,2]) {
  %b = onnx.Constant() {value = dense<[[1.0, 2.0], [3.0, 4.0]]>} : f32[2,2]
  %0 = onnx.Constant() {value = dense<[0.5, -0.5]>} : f32[2] from("matmul-bias")
  %y = mdoc.matmul(%a, %b, %0, %a) {activation = "gelu", scale = 0.5} : f32[3,2] from("matmul-activation")
  return %y
}""")


def test_a_stage_out_of_order_stops_the_tail():
    """A scale after the bias is not the kernels' order: it stays an onnx.Mul."""
    model, _ = apply("""
graph @g(%a: f32[3,2]) -> (%y: f32[3,2]) {
  %b = onnx.Constant() {value = dense<[[1.0, 2.0], [3.0, 4.0]]>} : f32[2,2]
  %k = onnx.Constant() {value = dense<2.0>} : f32[]
  %c = onnx.Constant() {value = dense<[0.5, -0.5]>} : f32[2]
  %m = onnx.MatMul(%a, %b) : f32[3,2]
  %e = onnx.Add(%m, %c) : f32[3,2]
  %y = onnx.Mul(%e, %k) : f32[3,2]
  return %y
}""", "fuse-epilogue")
    assert [n.op for n in model.graph if n.op != "onnx.Constant"] == ["mdoc.matmul", "onnx.Mul"]


def test_refusals_say_why():
    model, changed = apply("""
graph @g(%x: f32[1,2,4,4], %z: f32[1,2,4,4]) -> (%y: f32[1,2,4,4], %c: f32[1,2,4,4]) {
  %w = onnx.Constant() {value = dense<[[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]>} : f32[2,2,1,1]
  %c = onnx.Conv(%x, %w) : f32[1,2,4,4]
  %l = onnx.Relu(%z) : f32[1,2,4,4]
  %y = onnx.Add(%c, %l) : f32[1,2,4,4]
  return %y, %c
}""", "fuse-epilogue")
    assert not changed
    lines = " ".join(explain(model.graph, "conv-residual", model))
    assert "computed after onnx.Conv" in lines or "used outside" in lines or "graph output" in lines, lines


def _conv_model(act: str) -> Model:
    """x -> Conv(3x3, bias) -> + residual (a computed value) -> act, and a MatMul chain on the result."""
    rng = np.random.default_rng(0)
    g = Graph("g")
    x = g.add_input(TensorType(DType.F32, (1, 4, 6, 6)), "x")
    const = lambda a: g.constant(np.asarray(a, np.float32))  # noqa: E731
    early = g.add("onnx.Relu", [x]).output
    conv = g.add("onnx.Conv", [x, const(rng.normal(0, 0.3, (4, 4, 3, 3))), const(rng.normal(0, 1, 4))],
                 {"pads": (1, 1, 1, 1)}).output
    y = g.add("onnx.Add", [conv, early]).output
    if act == "clip":
        y = g.add("onnx.Clip", [y, const(-0.5), const(0.5)]).output
    elif act == "leaky":
        y = g.add("onnx.LeakyRelu", [y], {"alpha": 0.2}).output
    else:
        y = g.add(act, [y]).output
    m = g.add("onnx.MatMul", [y, const(rng.normal(0, 0.3, (6, 6)))]).output
    m = g.add("onnx.Mul", [const(0.7), m]).output
    m = g.add("onnx.Add", [m, const(rng.normal(0, 1, 6))]).output
    m = g.add("onnx.Add", [m, y]).output
    out = g.add("onnx.Sigmoid", [m]).output
    out.name = "y"
    g.outputs.append(out)
    model = Model(g, {"": 17})
    apply(model, "infer-shapes")
    return model


@pytest.mark.parametrize("act", ["onnx.Relu", "clip", "leaky", "onnx.Tanh", "onnx.HardSwish"])
@pytest.mark.parametrize("runtime_ops", [False, True])
def test_fused_ops_evaluate_and_export_like_the_original(act, runtime_ops):
    original, model = assert_properties(copies_of(lambda: _conv_model(act)), "fuse-epilogue")
    ops = [n.op for n in model.graph if n.op != "onnx.Constant"]
    assert ops == ["onnx.Relu", "mdoc.conv", "mdoc.matmul"], ops
    feeds = {"x": np.random.default_rng(1).normal(0, 1, (1, 4, 6, 6)).astype(np.float32)}
    want = run_onnxruntime(export_model(original), feeds)["y"]
    exported = export_model(model, runtime_ops=runtime_ops)
    got = run_onnxruntime(exported, feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    types = {n.op_type for n in exported.graph.node}
    if runtime_ops and act in ("onnx.Relu", "clip", "leaky", "onnx.Tanh"):
        assert {"FusedConv", "FusedMatMul"} <= types, types
    # the reference evaluator's meaning of each fused op, node by node
    values = {model.graph.inputs[0]: feeds["x"]}
    for node in (n for n in model.graph if n.op != "onnx.Constant"):
        arrays = [None if v is None else (values[v] if v in values else v.const_value) for v in node.inputs]
        for v, r in zip(node.outputs, try_fold(node, 17, arrays)):
            values[v] = r
    np.testing.assert_allclose(values[model.graph.outputs[0]], want, rtol=1e-4, atol=1e-5)


def test_zoo_models_fuse_at_O2():
    counts = {}
    for name in ("resnet18", "mobilenetv2", "bert_encoder"):
        proto = build(name, **ZOO[name].test_kwargs)
        model = import_model(proto)
        apply(model, OPT_LEVELS[2])
        counts[name] = {op: sum(n.op == op for n in model.graph) for op in ("mdoc.conv", "mdoc.matmul")}
        if name == "resnet18":
            assert_same_outputs(proto, model)
    assert counts["resnet18"]["mdoc.conv"] == 17, counts  # every conv but the downsampling ones
    assert counts["mobilenetv2"]["mdoc.conv"] > 20, counts
    assert counts["bert_encoder"]["mdoc.matmul"] >= 8, counts
