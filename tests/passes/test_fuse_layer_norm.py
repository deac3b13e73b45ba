"""fuse-layer-norm: golden IR, every exporter form against onnxruntime, refusals with their reasons."""

from __future__ import annotations

import numpy as np
import pytest

from mdoc.ir import Graph, Model
from mdoc.rewrite import explain
from mdoc.types import DType, TensorType
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of

NINE_OPS = """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %g = onnx.Constant() {value = dense<[1.0, 2.0, 3.0, 4.0]>} : f32[4]
  %b = onnx.Constant() {value = dense<[0.5, 0.5, 0.5, 0.5]>} : f32[4]
  %two = onnx.Constant() {value = dense<2.0>} : f32[]
  %eps = onnx.Constant() {value = dense<0.5>} : f32[]
  %mean = onnx.ReduceMean(%x) {axes = [-1]} : f32[2,1]
  %d = onnx.Sub(%x, %mean) : f32[2,4]
  %sq = onnx.Pow(%d, %two) : f32[2,4]
  %var = onnx.ReduceMean(%sq) {axes = [-1]} : f32[2,1]
  %ve = onnx.Add(%eps, %var) : f32[2,1]
  %std = onnx.Sqrt(%ve) : f32[2,1]
  %n = onnx.Div(%d, %std) : f32[2,4]
  %s = onnx.Mul(%g, %n) : f32[2,4]
  %y = onnx.Add(%s, %b) : f32[2,4]
  return %y
}"""


def test_nine_ops_become_one_layer_norm_with_gamma_and_beta():
    # operands in either order (Add(eps, var), Mul(g, n)): the rules commute
    assert_golden("fuse-layer-norm", NINE_OPS, """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %0 = onnx.Constant() {value = dense<[1.0, 2.0, 3.0, 4.0]>} : f32[4] from("layer-norm-shift")
  %1 = onnx.Constant() {value = dense<[0.5, 0.5, 0.5, 0.5]>} : f32[4] from("layer-norm-shift")
  %y = mdoc.layer_norm(%x, %0, %1) {axis = -1, epsilon = 0.5} : f32[2,4] from("layer-norm-shift")
  return %y
}""")


def test_onnx_layer_normalization_becomes_mdoc_layer_norm():
    assert_golden("fuse-layer-norm", """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %g = onnx.Constant() {value = dense<[1.0, 2.0, 3.0, 4.0]>} : f32[4]
  %y = onnx.LayerNormalization(%x, %g) {epsilon = 0.25} : f32[2,4]
  return %y
}""", """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %g = onnx.Constant() {value = dense<[1.0, 2.0, 3.0, 4.0]>} : f32[4]
  %y = mdoc.layer_norm(%x, %g) {axis = -1, epsilon = 0.25} : f32[2,4] from("layer-norm-from-onnx")
  return %y
}""")


# -- numerics: each form the exporters write -----------------------------------------------
RNG = np.random.default_rng(0)


def model_of(shape, body, opset: int = 17) -> Model:
    g = Graph("g")
    x = g.add_input(TensorType(DType.F32, shape), "x")
    y = body(g, x)
    y.name = "y"
    g.outputs.append(y)
    model = Model(g, {"": opset})
    apply(model, "infer-shapes")
    return model


def decomposed(square="pow", divide="div", affine=True, axes=(-1,), axes_input=False, eps=1e-5):
    """LayerNorm the way exporters spell it; `axes_input` is opset 18's ReduceMean(x, axes)."""
    def body(g, x):
        def mean(v):
            if axes_input:
                return g.add("onnx.ReduceMean", [v, g.constant(np.array(axes, np.int64))]).output
            return g.add("onnx.ReduceMean", [v], {"axes": tuple(axes)}).output

        c = lambda a: g.constant(np.asarray(a, np.float32))  # noqa: E731
        d = g.add("onnx.Sub", [x, mean(x)]).output
        sq = g.add("onnx.Pow", [d, c(2.0)]) if square == "pow" else g.add("onnx.Mul", [d, d])
        std = g.add("onnx.Sqrt", [g.add("onnx.Add", [mean(sq.output), c(eps)]).output]).output
        if divide == "div":
            n = g.add("onnx.Div", [d, std]).output
        else:
            n = g.add("onnx.Mul", [g.add("onnx.Reciprocal", [std]).output, d]).output
        if not affine:
            return n
        length = x.type.shape[-1]
        s = g.add("onnx.Mul", [n, c(RNG.uniform(0.5, 1.5, length))]).output
        return g.add("onnx.Add", [c(RNG.normal(0, 0.1, length)), s]).output
    return body


FORMS = {
    "torchscript": dict(),
    "mul-square": dict(square="mul"),
    "reciprocal": dict(divide="reciprocal"),
    "tf2onnx": dict(square="mul", divide="reciprocal"),
    "no-affine": dict(affine=False),
    "two-axes": dict(axes=(-2, -1), affine=False),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_fuses_and_keeps_the_outputs(form):
    make = copies_of(lambda: model_of((3, 5, 8), decomposed(**FORMS[form])))
    original, model = assert_properties(make, "fuse-layer-norm")
    assert [n.op for n in model.graph if n.op != "onnx.Constant"] == ["mdoc.layer_norm"]
    assert_same_outputs(original, model)


def test_opset_18_axes_operand_and_opset_17_export():
    make = copies_of(lambda: model_of((2, 6), decomposed(axes_input=True), opset=18))
    original, model = assert_properties(make, "fuse-layer-norm")
    assert [n.op for n in model.graph if n.op != "onnx.Constant"] == ["mdoc.layer_norm"]
    assert_same_outputs(original, model)


def test_onnx_layer_normalization_numerics_at_opset_17():
    def body(g, x):
        scale, bias = (g.constant(RNG.normal(1, 0.1, 8).astype(np.float32)) for _ in range(2))
        return g.add("onnx.LayerNormalization", [x, scale, bias], {"epsilon": 1e-3}).output
    make = copies_of(lambda: model_of((4, 8), body))
    original, model = assert_properties(make, "fuse-layer-norm")
    assert_same_outputs(original, model)


# -- refusals ------------------------------------------------------------------------------
def misses(model: Model, rule: str) -> str:
    return "\n".join(explain(model.graph, rule, model))


def test_means_over_different_axes_are_refused_with_the_reason():
    def body(g, x):
        d = g.add("onnx.Sub", [x, g.add("onnx.ReduceMean", [x], {"axes": (-1,)}).output]).output
        var = g.add("onnx.ReduceMean", [g.add("onnx.Mul", [d, d]).output], {"axes": (-2, -1)}).output
        eps = g.constant(np.float32(1e-5))
        return g.add("onnx.Div", [d, g.add("onnx.Sqrt", [g.add("onnx.Add", [var, eps]).output]).output]).output
    model = model_of((2, 3, 4), body)
    _, changed = apply(model, "fuse-layer-norm")
    assert not changed
    assert "check refused: the means reduce different axes ([2] and [1, 2])" in misses(model, "layer-norm-mul-square")


def test_a_leading_axis_mean_is_not_a_layer_norm():
    model = model_of((4, 6), decomposed(axes=(0,), affine=False))
    apply(model, "fuse-layer-norm")
    assert "the means reduce axes [0], not the trailing axes" in misses(model, "layer-norm")


def test_a_centered_value_read_elsewhere_keeps_the_pattern():
    def body(g, x):
        n = decomposed(affine=False)(g, x)
        d = n.producer().inputs[0]
        return g.add("onnx.Add", [n, d]).output
    model = model_of((2, 4), body)
    _, changed = apply(model, "fuse-layer-norm")
    assert not changed
    assert "is also used by" in misses(model, "layer-norm")


def test_a_run_time_gamma_stays_a_mul():
    def body(g, x):
        n = decomposed(affine=False)(g, x)
        return g.add("onnx.Mul", [n, x]).output
    model = model_of((2, 4), body)
    apply(model, "fuse-layer-norm")
    assert [n.op for n in model.graph if n.op != "onnx.Constant"] == ["mdoc.layer_norm", "onnx.Mul"]
    assert "check refused: the Mul operand is not constant" in misses(model, "layer-norm-scale")
