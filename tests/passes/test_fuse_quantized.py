"""fuse-quantized: golden IR for the QDQ products and their tail, refusals, the integer ops of ONNX and
onnxruntime imported onto mdoc.qconv / mdoc.qmatmul, numerics against onnxruntime, and a float graph
left alone by -O2."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS, PassManager, parse_pipeline
from mdoc.reference import run_onnxruntime
from mdoc.rewrite import explain
from pass_testing import apply, assert_golden

from mdoc.passes.fuse_quantized import QConv

QDQ_CONV = """
graph @g(%x: u8[1,2,4,4]) -> (%y: u8[1,2,4,4]) {
  %xs = onnx.Constant() {value = dense<0.5>} : f32[]
  %xz = onnx.Constant() {value = dense<3>} : u8[]
  %w = onnx.Constant() {value = dense<[[[[1]], [[2]]], [[[3]], [[-4]]]]>} : i8[2,2,1,1]
  %ws = onnx.Constant() {value = dense<[0.25, 0.125]>} : f32[2]
  %xf = onnx.DequantizeLinear(%x, %xs, %xz) : f32[1,2,4,4]
  %wf = onnx.DequantizeLinear(%w, %ws) {axis = AXIS} : f32[2,2,1,1]
  %c = onnx.Conv(%xf, %wf) {kernel_shape = [1, 1]} : f32[1,2,4,4]
  %r = onnx.Relu(%c) : f32[1,2,4,4]
  %y = onnx.QuantizeLinear(%r, %xs, %xz) : u8[1,2,4,4]
  return %y
}"""


def test_dq_conv_relu_q_becomes_one_requantizing_qconv():
    assert_golden("fuse-quantized,dce", QDQ_CONV.replace("AXIS", "0"), """
graph @g(%x: u8[1,2,4,4]) -> (%y: u8[1,2,4,4]) {
  %xs = onnx.Constant() {value = dense<0.5>} : f32[]
  %xz = onnx.Constant() {value = dense<3>} : u8[]
  %w = onnx.Constant() {value = dense<[[[[1]], [[2]]], [[[3]], [[-4]]]]>} : i8[2,2,1,1]
  %ws = onnx.Constant() {value = dense<[0.25, 0.125]>} : f32[2]
  %y = mdoc.qconv(%x, %xs, %xz, %w, %ws, none, none, none, %xs, %xz) {activation = "relu", kernel_shape = [1, 1]} : u8[1,2,4,4] from("q-requantize")
  return %y
}""")


def test_weight_scales_along_another_axis_are_refused_with_the_reason():
    model, changed = apply(QDQ_CONV.replace("AXIS", "1"), "fuse-quantized")
    assert not changed
    assert "runs along another axis" in " ".join(explain(model.graph, QConv, model))


def _cnn(batch: int | str = 1) -> onnx.ModelProto:
    """Conv -> Relu -> Conv + 1x1 Conv (residual) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
             for name, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 3, 3)), ("w3", (8, 8, 1, 1)),
                             ("fw", (10, 8)), ("fb", (10,)))]
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             N("Conv", ["r1", "w3"], ["c3"], name="conv3"), N("Add", ["c2", "c3"], ["s"]),
             N("GlobalAveragePool", ["s"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int = 8):
    return [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)} for i in range(n)]


def _ort_quantized(tmp_path, fmt: str) -> onnx.ModelProto:
    """onnxruntime's quantize_static of the CNN: S8S8, per channel, QDQ or QOperator."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(_samples())

        def get_next(self):
            return next(self.it, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_cnn(), src)
    quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return onnx.load(dst)


def _ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def _fused_agrees(proto: onnx.ModelProto, atol: float) -> dict[str, int]:
    model = import_model(proto)
    PassManager(parse_pipeline(OPT_LEVELS[2])).run(model)
    x = _samples(1)[0]
    want, got = run_onnxruntime(proto, x)["y"], run_onnxruntime(export_model(model), x)["y"]
    assert np.abs(got - want).max() <= atol
    return _ops(model)


def test_mdoc_quantize_output_becomes_integer_products_that_agree(tmp_path):
    from mdoc.quantize import quantize_static

    qdq, _ = quantize_static(import_model(_cnn()), _samples())
    ops = _fused_agrees(export_model(qdq), 1e-5)
    assert ops.get("mdoc.qconv") == 3 and ops.get("mdoc.qmatmul") == 1
    assert "onnx.Conv" not in ops and "onnx.DequantizeLinear" not in ops


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_onnxruntime_static_int8_imports_onto_the_same_ops(tmp_path, fmt):
    ops = _fused_agrees(_ort_quantized(tmp_path, fmt), 1e-5)
    assert ops.get("mdoc.qconv") == 3, ops
    assert not any(op in ops for op in ("onnx.Conv", "onnx.QLinearConv"))


def test_onnxruntime_dynamic_matmul_integer_imports_as_qmatmul(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 24)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                              "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    proto = onnx.load(tmp_path / "q.onnx")
    model = import_model(proto)
    PassManager(parse_pipeline(OPT_LEVELS[2])).run(model)
    ops = _ops(model)
    assert ops.get("mdoc.qmatmul") == 1 and "onnx.MatMulInteger" not in ops and "onnx.Add" not in ops, ops
    x = {"x": rng.standard_normal((3, 16)).astype(np.float32)}
    np.testing.assert_allclose(run_onnxruntime(export_model(model), x)["y"], run_onnxruntime(proto, x)["y"], atol=1e-5)


def test_a_float_graph_is_left_alone():
    model = import_model(_cnn())
    records = PassManager(parse_pipeline(OPT_LEVELS[2])).run(model)
    assert not any(r.changed for r in records if r.name == "fuse-quantized")
    assert not any(op.startswith("mdoc.q") for op in _ops(model))
