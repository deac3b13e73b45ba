"""fuse-conv-affine: golden IR, numerics against onnxruntime for every rule, refusals with their reasons, light models."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LIGHT_DIR, light_inputs
from mdoc.ir import Graph, Model
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.parser import parse_model
from mdoc.pass_manager import OPT_LEVELS
from mdoc.printer import print_model
from mdoc.rewrite import explain
from mdoc.types import DType, TensorType
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of, drawer

RNG = np.random.default_rng(0)


def rand(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


def model_of(shape, build_fn, opset: int = 17) -> Model:
    """A one-input model: `build_fn(g, x)` returns the output value; types come from infer-shapes.
    The random weights are the same on every call (the properties build the model twice)."""
    global RNG
    RNG = np.random.default_rng(0)
    g = Graph("g")
    x = g.add_input(TensorType(DType.F32, shape), "x")
    out = build_fn(g, x)
    out.name = "y"
    g.outputs.append(out)
    model = Model(g, {"": opset})
    apply(model, "infer-shapes")
    return model


def ops(model: Model) -> list[str]:
    return [n.op for n in model.graph if n.op != "onnx.Constant"]


def assert_fuses(make, want, pipeline="fuse-conv-affine"):
    original, model = assert_properties(make, pipeline)
    assert ops(model) == want, ops(model)
    assert_same_outputs(export_model(original), model)


def assert_refuses(model: Model, rule: str, reason: str):
    before = ops(model)
    _, changed = apply(model, "fuse-conv-affine")
    assert not changed and ops(model) == before
    text = "\n".join(explain(model.graph, rule, model))
    assert reason in text, text


# -- golden ---------------------------------------------------------------------------------
def test_mul_and_add_after_conv_fold_into_weights_and_bias():
    assert_golden("fuse-conv-affine", """
graph @g(%x: f32[1,2,4,4]) -> (%z: f32[1,2,4,4]) {
  %w = onnx.Constant() {value = dense<[[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]>} : f32[2,2,1,1]
  %k = onnx.Constant() {value = dense<[[[2.0]], [[0.5]]]>} : f32[2,1,1]
  %c = onnx.Constant() {value = dense<[[[[1.0]], [[-1.0]]]]>} : f32[1,2,1,1]
  %y = onnx.Conv(%x, %w) {kernel_shape = [1, 1]} : f32[1,2,4,4]
  %s = onnx.Mul(%k, %y) : f32[1,2,4,4]
  %z = onnx.Add(%s, %c) : f32[1,2,4,4]
  return %z
}""", """
graph @g(%x: f32[1,2,4,4]) -> (%z: f32[1,2,4,4]) {
  %0 = onnx.Constant() {value = dense<[[[[2.0]], [[4.0]]], [[[1.5]], [[2.0]]]]>} : f32[2,2,1,1] from("fuse-conv-mul")
  %1 = onnx.Constant() {value = dense<[1.0, -1.0]>} : f32[2] from("fuse-conv-add")
  %z = onnx.Conv(%x, %0, %1) {kernel_shape = [1, 1]} : f32[1,2,4,4] from("fuse-conv-add")
  return %z
}""")


def test_mul_and_add_after_a_standalone_batchnorm_fold_into_it():
    # scale' = s * k = [2, 6]; bias' = b * k + c = [1.25, -2.75]; one node stays
    assert_golden("fuse-conv-affine", """
graph @g(%x: f32[N,2,4,4]) -> (%z: f32[N,2,4,4]) {
  %s = onnx.Constant() {value = dense<[1.0, 2.0]>} : f32[2]
  %b = onnx.Constant() {value = dense<[0.5, -1.0]>} : f32[2]
  %m = onnx.Constant() {value = dense<[0.0, 1.0]>} : f32[2]
  %v = onnx.Constant() {value = dense<[1.0, 4.0]>} : f32[2]
  %k = onnx.Constant() {value = dense<[[[2.0]], [[3.0]]]>} : f32[2,1,1]
  %c = onnx.Constant() {value = dense<0.25>} : f32[]
  %y = onnx.BatchNormalization(%x, %s, %b, %m, %v) : f32[N,2,4,4]
  %p = onnx.Mul(%y, %k) : f32[N,2,4,4]
  %z = onnx.Add(%p, %c) : f32[N,2,4,4]
  return %z
}""", """
graph @g(%x: f32[N,2,4,4]) -> (%z: f32[N,2,4,4]) {
  %m = onnx.Constant() {value = dense<[0.0, 1.0]>} : f32[2]
  %v = onnx.Constant() {value = dense<[1.0, 4.0]>} : f32[2]
  %0 = onnx.Constant() {value = dense<[2.0, 6.0]>} : f32[2] from("fuse-bn-mul")
  %1 = onnx.Constant() {value = dense<[1.25, -2.75]>} : f32[2] from("fuse-bn-add")
  %z = onnx.BatchNormalization(%x, %0, %1, %m, %v) : f32[N,2,4,4] from("fuse-bn-add")
  return %z
}""")


def test_batchnorm_before_an_unpadded_conv_folds_per_input_channel():
    # a = s / sqrt(v) = [2, 1], d = b - m * a = [0.5, -3]: W' = W * a = [4, 3]; b' = sum(W * d) = 1 - 9 = -8
    assert_golden("fuse-conv-affine", """
graph @g(%x: f32[N,2,4,4]) -> (%z: f32[N,1,4,4]) {
  %s = onnx.Constant() {value = dense<[2.0, 2.0]>} : f32[2]
  %b = onnx.Constant() {value = dense<[0.5, -1.0]>} : f32[2]
  %m = onnx.Constant() {value = dense<[0.0, 2.0]>} : f32[2]
  %v = onnx.Constant() {value = dense<[1.0, 4.0]>} : f32[2]
  %w = onnx.Constant() {value = dense<[[[[2.0]], [[3.0]]]]>} : f32[1,2,1,1]
  %y = onnx.BatchNormalization(%x, %s, %b, %m, %v) {epsilon = 0.0} : f32[N,2,4,4]
  %z = onnx.Conv(%y, %w) {kernel_shape = [1, 1]} : f32[N,1,4,4]
  return %z
}""", """
graph @g(%x: f32[N,2,4,4]) -> (%z: f32[N,1,4,4]) {
  %0 = onnx.Constant() {value = dense<[[[[4.0]], [[3.0]]]]>} : f32[1,2,1,1] from("fuse-bn-conv")
  %1 = onnx.Constant() {value = dense<[-8.0]>} : f32[1] from("fuse-bn-conv")
  %z = onnx.Conv(%x, %0, %1) {kernel_shape = [1, 1]} : f32[N,1,4,4] from("fuse-bn-conv")
  return %z
}""")


def test_zero_pads_fold_into_conv_and_averagepool():
    # Pad [b_h, b_w] = [1, 2], [e_h, e_w] = [1, 0] plus the Conv's own [0, 0, 1, 1]
    assert_golden("fuse-conv-affine", """
graph @g(%x: f32[N,1,6,6]) -> (%y: f32[N,1,7,7], %z: f32[N,1,6,6]) {
  %pads = onnx.Constant() {value = dense<[0, 0, 1, 2, 0, 0, 1, 0]>} : i64[8]
  %w = onnx.Constant() {value = dense<[[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]]>} : f32[1,1,3,3]
  %px = onnx.Pad(%x, %pads) : f32[N,1,8,8]
  %y = onnx.Conv(%px, %w) {kernel_shape = [3, 3], pads = [0, 0, 1, 1]} : f32[N,1,7,7]
  %one = onnx.Constant() {value = dense<[0, 0, 1, 1, 0, 0, 1, 1]>} : i64[8]
  %qx = onnx.Pad(%x, %one) : f32[N,1,8,8]
  %z = onnx.AveragePool(%qx) {kernel_shape = [3, 3]} : f32[N,1,6,6]
  return %y, %z
}""", """
graph @g(%x: f32[N,1,6,6]) -> (%y: f32[N,1,7,7], %z: f32[N,1,6,6]) {
  %w = onnx.Constant() {value = dense<[[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]]>} : f32[1,1,3,3]
  %y = onnx.Conv(%x, %w) {kernel_shape = [3, 3], pads = [1, 2, 2, 1]} : f32[N,1,7,7] from("fuse-pad-conv")
  %z = onnx.AveragePool(%x) {count_include_pad = 1, kernel_shape = [3, 3], pads = [1, 1, 1, 1]} : f32[N,1,6,6] from("fuse-pad-averagepool")
  return %y, %z
}""")


# -- numerics --------------------------------------------------------------------------------
K_SHAPES = [(6, 1, 1), (1, 6, 1, 1), (1,), ()]


@pytest.mark.parametrize("conv", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("arith", ["Mul", "Div", "Add", "Sub"])
@pytest.mark.parametrize("k_shape", K_SHAPES)
def test_arith_after_conv_numerics(conv, arith, k_shape):
    def make():
        def body(g, x):
            w = rand(6, 2, 3, 3) if conv == "Conv" else rand(4, 3, 3, 3)  # Conv group 2 / ConvTranspose group 2
            b = g.constant(rand(6))
            y = g.add(f"onnx.{conv}", [x, g.constant(w), b], {"group": 2, "strides": (2, 2)}).output
            k = g.constant(rand(*k_shape, low=0.5, high=2.0))
            operands = [k, y] if arith in ("Mul", "Add") else [y, k]
            return g.add(f"onnx.{arith}", operands).output
        return model_of(("N", 4, 7, 7), body)
    assert_fuses(make, [f"onnx.{conv}"])


@pytest.mark.parametrize("arith", ["Mul", "Div", "Add", "Sub", "BatchNormalization"])
@pytest.mark.parametrize("group", [1, 2])
def test_affine_before_unpadded_conv_numerics(arith, group):
    def make():
        def body(g, x):
            if arith == "BatchNormalization":
                params = [rand(4, low=0.5, high=2), rand(4), rand(4), rand(4, low=0.5, high=2)]
                y = g.add("onnx.BatchNormalization", [x, *(g.constant(p) for p in params)]).output
            else:
                y = g.add(f"onnx.{arith}", [x, g.constant(rand(4, 1, 1, low=0.5, high=2.0))]).output
            w = g.constant(rand(6, 4 // group, 3, 3))
            return g.add("onnx.Conv", [y, w, g.constant(rand(6))], {"group": group, "strides": (2, 1),
                                                                   "dilations": (1, 2)}).output
        return model_of(("N", 4, 9, 9), body)
    assert_fuses(make, ["onnx.Conv"])


@pytest.mark.parametrize("arith", ["Mul", "Div", "Add", "Sub"])
def test_arith_after_standalone_batchnorm_numerics(arith):
    def make():
        def body(g, x):
            params = [rand(3, low=0.5, high=2), rand(3), rand(3), rand(3, low=0.5, high=2)]
            y = g.add("onnx.BatchNormalization", [x, *(g.constant(p) for p in params)]).output
            return g.add(f"onnx.{arith}", [y, g.constant(rand(1, 3, 1, low=0.5, high=2))]).output
        return model_of(("N", 3, 5), body)
    assert_fuses(make, ["onnx.BatchNormalization"])


@pytest.mark.parametrize("opset,axes", [(9, False), (13, False), (18, True)])
def test_pad_into_conv_numerics(opset, axes):
    def make():
        def body(g, x):
            if opset < 11:
                p = g.add("onnx.Pad", [x], {"pads": (0, 0, 1, 0, 0, 0, 2, 3)}).output
            elif axes:
                p = g.add("onnx.Pad", [x, g.constant(np.array([2, 1, 0, 3], np.int64)), None,
                                       g.constant(np.array([3, -2], np.int64))]).output
            else:
                p = g.add("onnx.Pad", [x, g.constant(np.array([0, 0, 1, 0, 0, 0, 2, 3], np.int64)),
                                       g.constant(np.array(0.0, np.float32))]).output
            return g.add("onnx.Conv", [p, g.constant(rand(3, 2, 3, 3))], {"pads": (1, 1, 0, 0)}).output
        return model_of((2, 2, 6, 7), body, opset=opset)
    assert_fuses(make, ["onnx.Conv"])


@pytest.mark.parametrize("count_include_pad,own_pads", [(0, (0, 0, 0, 0)), (1, (1, 0, 0, 1))])
def test_pad_into_averagepool_numerics(count_include_pad, own_pads):
    def make():
        def body(g, x):
            p = g.add("onnx.Pad", [x, g.constant(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))]).output
            return g.add("onnx.AveragePool", [p], {"kernel_shape": (3, 3), "strides": (2, 2), "pads": own_pads,
                                                   "count_include_pad": count_include_pad}).output
        return model_of((1, 2, 7, 7), body)
    assert_fuses(make, ["onnx.AveragePool"])


# -- refusals ----------------------------------------------------------------------------------
def conv_then(arith_shape, k=None, op="Mul", opset=17):
    def body(g, x):
        y = g.add("onnx.Conv", [x, g.constant(rand(4, 3, 1, 1))]).output
        kv = g.constant(rand(*arith_shape, low=0.5, high=2.0) if k is None else k)
        return g.add(f"onnx.{op}", [y, kv]).output
    return model_of((2, 3, 5, 5), body, opset=opset)


@pytest.mark.parametrize("model,rule,reason", [
    (lambda: conv_then((1, 4, 5, 5)), "fuse-conv-mul", "varies along an axis other than the channels"),
    (lambda: conv_then((2, 4, 1, 1)), "fuse-conv-mul", "varies along an axis other than the channels"),
    (lambda: conv_then((1, 1, 4, 1, 1)), "fuse-conv-mul", "more dims than the 4-d tensor"),
    (lambda: conv_then((4, 1, 1), k=np.array([1, 0, 2, 3], np.float32).reshape(4, 1, 1), op="Div"),
     "fuse-conv-div", "the divisor has a zero"),
])
def test_arith_refusals(model, rule, reason):
    assert_refuses(model(), rule, reason)


def test_non_constant_scale_is_refused():
    g = Graph("g")
    x = g.add_input(TensorType(DType.F32, (1, 3, 4, 4)), "x")
    k = g.add_input(TensorType(DType.F32, (4, 1, 1)), "k")
    y = g.add("onnx.Conv", [x, g.constant(rand(4, 3, 1, 1))]).output
    g.outputs.append(g.add("onnx.Mul", [y, k], output_names=["y"]).output)
    model = Model(g, {"": 17})
    apply(model, "infer-shapes")
    assert_refuses(model, "fuse-conv-mul", "k is not constant")


def test_affine_before_a_padded_conv_is_refused():
    def body(g, x):
        y = g.add("onnx.Add", [x, g.constant(rand(3, 1, 1))]).output
        return g.add("onnx.Conv", [y, g.constant(rand(4, 3, 3, 3))], {"pads": (1, 1, 1, 1)}).output
    assert_refuses(model_of((1, 3, 5, 5), body), "fuse-add-conv", "the Conv pads its input (pads=[1, 1, 1, 1])")


@pytest.mark.parametrize("pads,attrs,reason", [
    ([0, 1, 0, 0, 0, 0, 0, 0], {}, "pads the batch or channel axis"),
    ([0, 0, 1, 1, 0, 0, 1, 1], {"mode": "reflect"}, "mode is reflect"),
    ([0, 0, 1, 1, 0, 0, -1, 0], {}, "the Pad crops"),
    ([0, 0, 1, 1, 0, 0, 1, 1], {"value": 1.0}, "fills with 1.0, not zero"),
])
def test_pad_refusals(pads, attrs, reason):
    def body(g, x):
        value = [g.constant(np.array(attrs.pop("value"), np.float32))] if "value" in attrs else []
        p = g.add("onnx.Pad", [x, g.constant(np.array(pads, np.int64)), *value], attrs).output
        return g.add("onnx.Conv", [p, g.constant(rand(2, 3, 3, 3))]).output
    assert_refuses(model_of((1, 3, 6, 6), body), "fuse-pad-conv", reason)


@pytest.mark.parametrize("attrs,reason", [
    ({"ceil_mode": 1}, "ceil_mode=1"),
    ({"pads": (1, 1, 1, 1)}, "without counting padding (count_include_pad=0)"),
])
def test_averagepool_refusals(attrs, reason):
    def body(g, x):
        p = g.add("onnx.Pad", [x, g.constant(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]).output
        return g.add("onnx.AveragePool", [p], {"kernel_shape": (3, 3), "strides": (2, 2), **attrs}).output
    assert_refuses(model_of((1, 3, 6, 6), body), "fuse-pad-averagepool", reason)


# -- light models ----------------------------------------------------------------------------------
def test_light_densenet_affine_after_batchnorm_collapses_without_growing():
    # densenet121's BatchNormalization -> Mul -> Add (pre-activation ones too) become one node each;
    # its weights are ConstantOfShape splats, and they stay splats.
    proto = onnx.load(os.path.join(LIGHT_DIR, "light_densenet121.onnx"))
    model = import_model(proto)
    apply(model, OPT_LEVELS[2])
    left = ops(model)
    assert "onnx.Mul" not in left and "onnx.Add" not in left
    assert left.count("onnx.BatchNormalization") == 63  # 62 pre-activation, and one whose fold would grow
    out = export_model(model)
    del out.graph.value_info[:]
    assert out.ByteSize() <= proto.ByteSize()
    assert_same_outputs(proto, model, light_inputs(proto))


# -- random chains -----------------------------------------------------------------------------
def random_chain(draw) -> Model:
    """x: f32[2,4,6,6] through a random chain of Convs, BatchNormalizations, per-channel arithmetic, Pads,
    pools and Relus; sometimes an intermediate is an output too (so some folds must refuse)."""
    g = Graph("chain")
    x = g.add_input(TensorType(DType.F32, (2, 4, 6, 6)), "x")
    rng = np.random.default_rng(draw([0, 1, 2]))
    v, c, h, w, values = x, 4, 6, 6, []

    def const(*shape, low=-1.0, high=1.0):
        return g.constant(rng.uniform(low, high, shape).astype(np.float32))

    for _ in range(draw([3, 4, 5, 6])):
        kind = draw(["conv", "conv", "bn", "arith", "arith", "pad", "pool", "relu"])
        if kind == "conv":
            out, group = draw([2, 4]), draw([1, 2])
            k, pad = draw([(1, 0), (3, 0), (3, 1)]) if min(h, w) >= 3 else (1, 0)
            h, w = h - k + 1 + 2 * pad, w - k + 1 + 2 * pad
            inputs = [v, const(out, c // group, k, k)] + ([const(out)] if draw([True, False]) else [])
            v = g.add("onnx.Conv", inputs, {"group": group, "pads": (pad,) * 4}).output
            c = out
        elif kind == "bn":
            params = [const(c, low=0.5, high=2), const(c), const(c), const(c, low=0.1, high=2)]
            v = g.add("onnx.BatchNormalization", [v, *params]).output
        elif kind == "arith":
            op = draw(["Mul", "Div", "Add", "Sub"])
            k = const(*draw([(c, 1, 1), (1, c, 1, 1), (1,), (), (1, c, 1, w)]), low=0.5, high=2)
            v = g.add(f"onnx.{op}", [k, v] if op in ("Mul", "Add") and draw([True, False]) else [v, k]).output
        elif kind == "pad":
            pads = [0, 0, draw([0, 1]), draw([0, 1]), 0, 0, draw([0, 1]), draw([0, 1])]
            v = g.add("onnx.Pad", [v, g.constant(np.array(pads, np.int64))]).output
            h, w = h + pads[2] + pads[6], w + pads[3] + pads[7]
        elif kind == "pool" and min(h, w) >= 2:
            h, w = h - 1, w - 1
            v = g.add("onnx.AveragePool", [v], {"kernel_shape": (2, 2), "count_include_pad": draw([0, 1])}).output
        elif kind in ("pool", "relu"):
            v = g.add("onnx.Relu", [v]).output
        values.append(v)
    g.outputs.append(v)
    extra = draw(values)
    if extra is not v and draw([True, False]):
        g.outputs.append(extra)
    for i, o in enumerate(g.outputs):
        o.name = f"out{i}"
    model = Model(g, {"": 17})
    apply(model, "infer-shapes")
    return model


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_random_chains_keep_their_outputs(data):
    make = copies_of(lambda: random_chain(drawer(data)))

    # Each pass is idempotent on its own; together they may enable each other (a Sub folded into a Conv
    # puts it right before a BatchNormalization), which is why -O2 runs both twice.
    original, after_bn = assert_properties(make, "fuse-conv-bn")
    _, model = assert_properties(lambda: parse_model(print_model(after_bn, {}, inline_limit=10**6)),
                                 "fuse-conv-affine")
    apply(model, "fuse-conv-bn,fuse-conv-affine")
    assert_same_outputs(export_model(original), model)
