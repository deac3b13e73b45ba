"""QuantizeLinear / DequantizeLinear in every mode, DynamicQuantizeLinear and the integer kernels
(MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv), against onnx's reference and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("tvm")

from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.targets.presets import resolve_target  # noqa: E402
from mdoc.targets.relax import build, lower, run  # noqa: E402

TARGET = resolve_target("x86").tvm
RNG = np.random.default_rng(0)


def model(op: str, inputs: dict, consts: dict, out_type: int, opset: int = 25, **attrs) -> onnx.ModelProto:
    """One `op` node over graph inputs (name -> array) and initializers (name -> array, '' for omitted)."""
    names = list(inputs) + list(consts)
    node = helper.make_node(op, [n if not n.startswith("_") else "" for n in names], ["y"], **attrs)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                     for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items() if not k.startswith("_")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compiled(m: onnx.ModelProto, feeds: dict) -> np.ndarray:
    mdl = import_model(m)
    return run(build(lower(mdl), TARGET), feeds, mdl)["y"]


def check_reference(m: onnx.ModelProto, feeds: dict, atol: float = 0.0):
    want = ReferenceEvaluator(m).run(None, feeds)[0]
    got = compiled(m, feeds)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=atol, rtol=0)


def check_onnxruntime(m: onnx.ModelProto, feeds: dict):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    want = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = compiled(m, feeds)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


X = (RNG.standard_normal((2, 4, 6)) * 40).astype(np.float32)


@pytest.mark.parametrize("qtype", ["int8", "uint8", "int16", "uint16", "int4", "uint4", "int2", "uint2"])
def test_quantize_dequantize_integer_types_per_tensor_axis_and_block(qtype):
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(getattr(TensorProto, qtype.upper())))
    lo = -1 if "u" not in qtype else 0
    scales = {
        "tensor": (np.array([0.7], np.float32), np.array([lo + 1], dtype), {}),  # shape [1]: per tensor
        "axis": (np.array([0.5, 2.0, 8.0, 30.0], np.float32), np.array([lo, 1, 0, lo + 1], dtype), {"axis": 1}),
        "block": (np.abs(RNG.standard_normal((2, 4, 2))).astype(np.float32) + 0.1,
                  np.full((2, 4, 2), lo + 1, dtype), {"axis": 2, "block_size": 4}),  # 6 = 4 + a partial block
    }
    for mode, (scale, zp, attrs) in scales.items():
        q = model("QuantizeLinear", {"x": X}, {"s": scale, "z": zp}, getattr(TensorProto, qtype.upper()), **attrs)
        check_reference(q, {"x": X})
        xq = ReferenceEvaluator(q).run(None, {"x": X})[0]
        dq = model("DequantizeLinear", {"q": xq}, {"s": scale, "z": zp}, TensorProto.FLOAT, **attrs)
        check_reference(dq, {"q": xq}, atol=1e-6)


def test_quantize_rounds_half_to_even_and_saturates_uint8_by_default():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0, 127.5], np.float32)
    check_reference(model("QuantizeLinear", {"x": x}, {"s": np.float32(1.0)}, TensorProto.UINT8), {"x": x})
    check_reference(model("QuantizeLinear", {"x": x}, {"s": np.float32(1.0)}, TensorProto.INT16,
                          output_dtype=TensorProto.INT16), {"x": x})


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("qtype", ["FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1"])
def test_quantize_dequantize_float8_and_float4(qtype, saturate):
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(getattr(TensorProto, qtype)))
    x = np.concatenate([X.reshape(-1), [1e6, -1e6, np.inf, np.nan]]).astype(np.float32)
    scale = np.float32(0.37)
    attrs = {"saturate": saturate} if qtype != "FLOAT4E2M1" else {}
    q = model("QuantizeLinear", {"x": x}, {"s": scale, "z": np.zeros((), dtype)}, getattr(TensorProto, qtype), **attrs)
    want = ReferenceEvaluator(q).run(None, {"x": x})[0]
    got = compiled(q, {"x": x})
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    for out in (TensorProto.FLOAT, TensorProto.FLOAT16):
        dq = model("DequantizeLinear", {"q": want}, {"s": np.float16(0.37)}, out, output_dtype=out)
        check_reference(dq, {"q": want})


def test_dequantize_per_axis_of_a_float16_scale():
    q = RNG.integers(-128, 128, (3, 5)).astype(np.int8)
    m = model("DequantizeLinear", {"q": q}, {"s": np.array([0.1, 0.2, 0.3], np.float16),
                                             "z": np.array([1, -2, 3], np.int8)}, TensorProto.FLOAT16, axis=0)
    check_reference(m, {"q": q}, atol=1e-3)


@pytest.mark.parametrize("scale", [1.0, 3.0, -1.0])
def test_dynamic_quantize_linear_matches_onnxruntime(scale):
    x = (RNG.standard_normal((3, 7)) * scale + (scale > 2) * 5).astype(np.float32)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, x.shape),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("z", TensorProto.UINT8, [])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    mdl = import_model(m)
    got = run(build(lower(mdl), TARGET), {"x": x}, mdl)
    np.testing.assert_array_equal(got["y"], want[0])
    np.testing.assert_allclose(got["s"], want[1], rtol=1e-6)
    np.testing.assert_array_equal(got["z"], want[2])


def u8(*shape):
    return RNG.integers(0, 256, shape).astype(np.uint8)


def i8(*shape):
    return RNG.integers(-128, 128, shape).astype(np.int8)


def test_matmul_integer_per_row_and_per_column_zero_points_in_int32():
    a, b = u8(2, 5, 7), i8(7, 6)
    m = model("MatMulInteger", {"a": a}, {"b": b, "za": np.array(3, np.uint8),
                                          "zb": RNG.integers(-5, 5, 6).astype(np.int8)}, TensorProto.INT32, opset=10)
    check_onnxruntime(m, {"a": a})
    ir = lower(import_model(m)).script()
    assert 'R.matmul(' in ir and "float" not in ir  # the product is integer arithmetic, not float emulation
    a2, b2, za = u8(5, 7), u8(7, 3), u8(5)  # per-row zero points: neither reference takes them
    per_row = model("MatMulInteger", {"a": a2}, {"b": b2, "za": za, "zb": np.array(9, np.uint8)},
                    TensorProto.INT32, opset=10)
    want = (a2.astype(np.int32) - za[:, None]) @ (b2.astype(np.int32) - 9)
    np.testing.assert_array_equal(compiled(per_row, {"a": a2}), want)


@pytest.mark.parametrize("atype", ["uint8", "int8"])
def test_qlinear_matmul_per_tensor_and_per_column_matches_onnxruntime(atype):
    a = u8(3, 4, 8) if atype == "uint8" else i8(3, 4, 8)
    zp = np.array(120 if atype == "uint8" else -3, a.dtype)
    for b_scale, b_zp in ((np.float32(0.02), np.array(4, np.int8)),
                          (np.linspace(0.01, 0.05, 5).astype(np.float32), np.zeros(5, np.int8))):
        consts = {"sa": np.float32(0.05), "za": zp, "b": i8(8, 5), "sb": b_scale, "zb": b_zp,
                  "sy": np.float32(0.9), "zy": np.array(7, a.dtype)}
        m = model("QLinearMatMul", {"a": a}, consts, helper.np_dtype_to_tensor_dtype(a.dtype), opset=10)
        (check_onnxruntime if b_scale.ndim == 0 else check_reference)(m, {"a": a})


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
                                   {"group": 2, "dilations": [2, 1]}])
def test_qlinear_conv_per_channel_with_bias_matches_onnxruntime(attrs):
    x = u8(1, 4, 7, 6)
    groups = attrs.get("group", 1)
    consts = {"sx": np.float32(0.03), "zx": np.array(100, np.uint8), "w": i8(6, 4 // groups, 3, 3),
              "sw": np.linspace(0.002, 0.01, 6).astype(np.float32), "zw": np.zeros(6, np.int8),
              "sy": np.float32(0.2), "zy": np.array(10, np.uint8), "B": RNG.integers(-500, 500, 6).astype(np.int32)}
    m = model("QLinearConv", {"x": x}, consts, TensorProto.UINT8, opset=10, **attrs)
    check_onnxruntime(m, {"x": x})


def test_conv_integer_pads_with_the_zero_point():
    x = u8(1, 3, 5, 5)
    m = model("ConvInteger", {"x": x}, {"w": u8(2, 3, 3, 3), "zx": np.array(7, np.uint8), "zw": np.array(3, np.uint8)},
              TensorProto.INT32, opset=10, pads=[1, 1, 1, 1])
    check_onnxruntime(m, {"x": x})
