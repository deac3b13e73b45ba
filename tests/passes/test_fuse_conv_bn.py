"""fuse-conv-bn: golden IR, numerics against onnxruntime for every rule, refusals with their reasons, zoo counts."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from conftest import LIGHT_DIR, light_inputs
from mdoc.ir import Graph, Model
from mdoc.models import ZOO, build, example_inputs
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS
from mdoc.rewrite import explain
from mdoc.types import DType, TensorType
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs

RNG = np.random.default_rng(0)


def rand(*shape, low=-1.0, high=1.0, dtype=np.float32):
    return RNG.uniform(low, high, shape).astype(dtype)


def model_of(shape, build_fn, opset: int = 17, dtype=DType.F32) -> Model:
    """A one-input model: `build_fn(g, x)` returns the output value; types come from infer-shapes.
    The random weights are the same on every call (the properties build the model twice)."""
    global RNG
    RNG = np.random.default_rng(0)
    g = Graph("g")
    x = g.add_input(TensorType(dtype, shape), "x")
    out = build_fn(g, x)
    out.name = "y"
    g.outputs.append(out)
    model = Model(g, {"": opset})
    apply(model, "infer-shapes")
    return model


def bn(g, y, channels, eps=1e-5, dtype=np.float32, **attrs):
    params = [rand(channels, low=0.5, high=2.0, dtype=dtype), rand(channels, dtype=dtype),
              rand(channels, dtype=dtype), rand(channels, low=0.1, high=2.0, dtype=dtype)]
    return g.add("onnx.BatchNormalization", [y, *(g.constant(p) for p in params)], {"epsilon": eps, **attrs}).output


def ops(model: Model) -> list[str]:
    return [n.op for n in model.graph if n.op != "onnx.Constant"]


def assert_fuses(make, pipeline="fuse-conv-bn", want=None):
    """The pass is idempotent with an honest changed flag, leaves `want` ops, and keeps the outputs."""
    original, model = assert_properties(make, pipeline)
    if want is not None:
        assert ops(model) == want, ops(model)
    assert_same_outputs(export_model(original), model)
    return model


def misses(model: Model, rule: str) -> str:
    return "\n".join(explain(model.graph, rule, model))


# -- golden ---------------------------------------------------------------------------------
def test_conv_bn_folds_into_weights_and_a_new_bias():
    # a = scale / sqrt(var + 0) = [0.5, 2]; d = bias - mean * a = [0.75, -3]
    assert_golden("fuse-conv-bn", """
graph @g(%x: f32[1,2,4,4]) -> (%z: f32[1,2,4,4]) {
  %w = onnx.Constant() {value = dense<[[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]>} : f32[2,2,1,1]
  %s = onnx.Constant() {value = dense<[1.0, 8.0]>} : f32[2]
  %b = onnx.Constant() {value = dense<[1.0, -1.0]>} : f32[2]
  %m = onnx.Constant() {value = dense<[0.5, 1.0]>} : f32[2]
  %v = onnx.Constant() {value = dense<[4.0, 16.0]>} : f32[2]
  %y = onnx.Conv(%x, %w) {kernel_shape = [1, 1]} : f32[1,2,4,4]
  %z = onnx.BatchNormalization(%y, %s, %b, %m, %v) {epsilon = 0.0} : f32[1,2,4,4]
  return %z
}""", """
graph @g(%x: f32[1,2,4,4]) -> (%z: f32[1,2,4,4]) {
  %0 = onnx.Constant() {value = dense<[[[[0.5]], [[1.0]]], [[[6.0]], [[8.0]]]]>} : f32[2,2,1,1] from("fuse-conv-bn")
  %1 = onnx.Constant() {value = dense<[0.75, -3.0]>} : f32[2] from("fuse-conv-bn")
  %z = onnx.Conv(%x, %0, %1) {kernel_shape = [1, 1]} : f32[1,2,4,4] from("fuse-conv-bn")
  return %z
}""")


def test_conv_bias_is_scaled_and_shifted():
    # b' = b * a + d = [2 * 0.5 + 0.75, 1 * 2 - 3]
    assert_golden("fuse-conv-bn", """
graph @g(%x: f32[1,2,4,4]) -> (%z: f32[1,2,4,4]) {
  %w = onnx.Constant() {value = dense<[[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]>} : f32[2,2,1,1]
  %c = onnx.Constant() {value = dense<[2.0, 1.0]>} : f32[2]
  %s = onnx.Constant() {value = dense<[1.0, 8.0]>} : f32[2]
  %b = onnx.Constant() {value = dense<[1.0, -1.0]>} : f32[2]
  %m = onnx.Constant() {value = dense<[0.5, 1.0]>} : f32[2]
  %v = onnx.Constant() {value = dense<[4.0, 16.0]>} : f32[2]
  %y = onnx.Conv(%x, %w, %c) {kernel_shape = [1, 1]} : f32[1,2,4,4]
  %z = onnx.BatchNormalization(%y, %s, %b, %m, %v) {epsilon = 0.0} : f32[1,2,4,4]
  return %z
}""", """
graph @g(%x: f32[1,2,4,4]) -> (%z: f32[1,2,4,4]) {
  %0 = onnx.Constant() {value = dense<[[[[0.5]], [[1.0]]], [[[6.0]], [[8.0]]]]>} : f32[2,2,1,1] from("fuse-conv-bn")
  %1 = onnx.Constant() {value = dense<[1.75, -1.0]>} : f32[2] from("fuse-conv-bn")
  %z = onnx.Conv(%x, %0, %1) {kernel_shape = [1, 1]} : f32[1,2,4,4] from("fuse-conv-bn")
  return %z
}""")


def test_splat_weights_stay_splats():
    # ConstantOfShape weights (the light models' kind) fold into ConstantOfShape weights: nothing grows.
    assert_golden("fuse-conv-bn", """
graph @g(%x: f32[1,3,8,8]) -> (%z: f32[1,4,8,8]) {
  %ws = onnx.Constant() {value = dense<[4, 3, 3, 3]>} : i64[4]
  %w = onnx.ConstantOfShape(%ws) {value = dense<[0.5]> : f32[1]} : f32[4,3,3,3]
  %ps = onnx.Constant() {value = dense<[4]>} : i64[1]
  %p = onnx.ConstantOfShape(%ps) {value = dense<[0.25]> : f32[1]} : f32[4]
  %y = onnx.Conv(%x, %w) {kernel_shape = [3, 3], pads = [1, 1, 1, 1]} : f32[1,4,8,8]
  %z = onnx.BatchNormalization(%y, %p, %p, %p, %p) {epsilon = 0.0} : f32[1,4,8,8]
  return %z
}""", """
graph @g(%x: f32[1,3,8,8]) -> (%z: f32[1,4,8,8]) {
  %0 = onnx.Constant() {value = dense<[4, 3, 3, 3]>} : i64[4] from("fuse-conv-bn")
  %1 = onnx.ConstantOfShape(%0) {value = dense<[0.25]> : f32[1]} : f32[4,3,3,3] from("fuse-conv-bn")
  %2 = onnx.Constant() {value = dense<[4]>} : i64[1] from("fuse-conv-bn")
  %3 = onnx.ConstantOfShape(%2) {value = dense<[0.125]> : f32[1]} : f32[4] from("fuse-conv-bn")
  %z = onnx.Conv(%x, %1, %3) {kernel_shape = [3, 3], pads = [1, 1, 1, 1]} : f32[1,4,8,8] from("fuse-conv-bn")
  return %z
}""")


# -- numerics --------------------------------------------------------------------------------
@pytest.mark.parametrize("group,bias", [(1, False), (1, True), (2, True), (6, False)])
def test_conv_bn_numerics(group, bias):
    def make():
        def body(g, x):
            w = g.constant(rand(6, 6 // group, 3, 3))
            inputs = [x, w] + ([g.constant(rand(6))] if bias else [])
            y = g.add("onnx.Conv", inputs, {"group": group, "pads": (1, 1, 1, 1), "strides": (2, 2)}).output
            return bn(g, y, 6)
        return model_of(("N", 6, 9, 9), body)
    assert_fuses(make, want=["onnx.Conv"])


@pytest.mark.parametrize("group,bias", [(1, True), (2, False)])
def test_convtranspose_bn_numerics(group, bias):
    def make():
        def body(g, x):
            w = g.constant(rand(4, 6 // group, 3, 3))  # [Cin, Cout/group, k, k]: Cout = 6
            inputs = [x, w] + ([g.constant(rand(6))] if bias else [])
            y = g.add("onnx.ConvTranspose", inputs, {"group": group, "strides": (2, 2)}).output
            return bn(g, y, 6)
        return model_of((2, 4, 5, 5), body)
    assert_fuses(make, want=["onnx.ConvTranspose"])


@pytest.mark.parametrize("trans_b,c_shape", [(0, None), (1, (5,)), (0, (1, 5)), (1, (3, 5))])
def test_gemm_bn_numerics(trans_b, c_shape):
    def make():
        def body(g, x):
            b = g.constant(rand(5, 4) if trans_b else rand(4, 5))
            inputs = [x, b] + ([g.constant(rand(*c_shape))] if c_shape else [])
            y = g.add("onnx.Gemm", inputs, {"transB": trans_b, "alpha": 0.5, "beta": 2.0}).output
            return bn(g, y, 5)
        return model_of((3, 4), body)
    assert_fuses(make, want=["onnx.Gemm"])


@pytest.mark.parametrize("add", [False, True])
def test_matmul_bn_becomes_gemm(add):
    def make():
        def body(g, x):
            y = g.add("onnx.MatMul", [x, g.constant(rand(4, 5))]).output
            if add:
                y = g.add("onnx.Add", [g.constant(rand(5)), y]).output  # the bias on either side
            return bn(g, y, 5)
        return model_of(("N", 4), body)
    assert_fuses(make, want=["onnx.Gemm"])


def test_weights_keep_their_dtype_and_fold_in_float64():
    def body(g, x):
        y = g.add("onnx.Conv", [x, g.constant(rand(4, 3, 1, 1, dtype=np.float16))]).output
        return bn(g, y, 4, dtype=np.float16)
    model = model_of((1, 3, 4, 4), body, dtype=DType.F16)
    w = model.graph.nodes()[0].attrs["value"].astype(np.float64)
    s, b, m, v = (n.attrs["value"].astype(np.float64) for n in model.graph.nodes()[2:6])
    apply(model, "fuse-conv-bn")
    conv = next(n for n in model.graph if n.op == "onnx.Conv")
    w2, b2 = conv.inputs[1].const_value, conv.inputs[2].const_value
    assert w2.dtype == b2.dtype == np.float16
    a = s / np.sqrt(v + 1e-5)
    np.testing.assert_array_equal(w2, (w * a.reshape(-1, 1, 1, 1)).astype(np.float16))
    np.testing.assert_array_equal(b2, (b - m * a).astype(np.float16))


# -- refusals ----------------------------------------------------------------------------------
def conv_bn_model(*, weight_input=False, bn_outputs=1, opset=17, shared=False, **bn_attrs) -> Model:
    def body(g, x):
        w = g.add_input(TensorType(DType.F32, (4, 3, 1, 1)), "w") if weight_input else g.constant(rand(4, 3, 1, 1))
        y = g.add("onnx.Conv", [x, w]).output
        params = [g.constant(rand(4, low=0.5, high=2)) for _ in range(4)]
        z = g.add("onnx.BatchNormalization", [y, *params], bn_attrs, outputs=bn_outputs).outputs[0]
        if shared:
            z = g.add("onnx.Add", [z, g.add("onnx.Relu", [y]).output]).output
        return z
    return model_of((2, 3, 4, 4), body, opset=opset)


@pytest.mark.parametrize("kwargs,reason", [
    ({"bn_outputs": 5, "opset": 9}, "5 results (training mode"),
    ({"training_mode": 1, "opset": 15}, "training_mode=1"),
    ({"weight_input": True}, "w is not constant"),
    ({"shared": True}, "is also used by"),
])
def test_refusals_say_why(kwargs, reason):
    model = conv_bn_model(**kwargs)
    before = ops(model)
    _, changed = apply(model, "fuse-conv-bn")
    assert not changed and ops(model) == before
    assert reason in misses(model, "fuse-conv-bn")


def test_a_fold_that_would_grow_the_model_is_refused():
    # A splat weight times dense per-channel statistics would become a dense weight.
    def body(g, x):
        w = g.add("onnx.ConstantOfShape", [g.constant(np.array([8, 3, 3, 3], np.int64))],
                  {"value": np.array([0.02], np.float32)}).output
        y = g.add("onnx.Conv", [x, w], {"pads": (1, 1, 1, 1)}).output
        return bn(g, y, 8)
    model = model_of((1, 3, 6, 6), body)
    _, changed = apply(model, "fuse-conv-bn")
    assert not changed
    # a dense weight (8*3*3*3 floats) and bias (8) created, four dense [8] statistics freed: 864 + 32 - 128
    assert "grow the model's constants by 768 bytes (budget left: 0)" in misses(model, "fuse-conv-bn")
    _, changed = apply(model, "fuse-conv-bn{max-bytes=1000}")
    assert changed and "onnx.BatchNormalization" not in ops(model)


# -- models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "sample", "detector_head"])
def test_zoo_every_batchnorm_folds_under_o2(name):
    proto = build(name, **ZOO[name].test_kwargs)
    model = import_model(proto)
    n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert n_bn > 0
    _, changed = apply(model, OPT_LEVELS[2])
    assert changed and "onnx.BatchNormalization" not in ops(model)
    assert_same_outputs(proto, model, example_inputs(proto, dims={"N": 3}))
    out = export_model(model)
    assert len(out.graph.node) <= len(proto.graph.node) - n_bn


def test_light_resnet50_folds_what_does_not_grow():
    proto = onnx.load(os.path.join(LIGHT_DIR, "light_resnet50.onnx"))
    model = import_model(proto)
    apply(model, OPT_LEVELS[2])
    bns = [n for n in model.graph if n.op == "onnx.BatchNormalization"]
    assert len(bns) == 7  # of 53: their statistics are dense, their conv weights splats: folding would grow
    out = export_model(model)
    del out.graph.value_info[:]
    assert out.ByteSize() <= proto.ByteSize()
    assert_same_outputs(proto, model, light_inputs(proto))
