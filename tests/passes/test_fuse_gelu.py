"""fuse-gelu: golden IR, every grouping exporters write against onnxruntime, refusals with their reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mdoc.ir import Graph, Model
from mdoc.rewrite import explain
from mdoc.types import DType, TensorType
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of


def test_torchscript_erf_gelu_becomes_mdoc_gelu():
    assert_golden("fuse-gelu", """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %sqrt2 = onnx.Constant() {value = dense<1.4142135381698608>} : f32[]
  %one = onnx.Constant() {value = dense<1.0>} : f32[]
  %half = onnx.Constant() {value = dense<0.5>} : f32[]
  %d = onnx.Div(%x, %sqrt2) : f32[2,4]
  %e = onnx.Erf(%d) : f32[2,4]
  %p = onnx.Add(%e, %one) : f32[2,4]
  %m = onnx.Mul(%x, %p) : f32[2,4]
  %y = onnx.Mul(%m, %half) : f32[2,4]
  return %y
}""", """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %y = mdoc.gelu(%x) {approximate = "none"} : f32[2,4] from("gelu-erf")
  return %y
}""")


def test_onnx_gelu_becomes_mdoc_gelu():
    assert_golden("fuse-gelu", """
module {opset_imports = {"" = 20}}
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %y = onnx.Gelu(%x) {approximate = "tanh"} : f32[2,4]
  return %y
}""", """
module {opset_imports = {"" = 20}}
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %y = mdoc.gelu(%x) {approximate = "tanh"} : f32[2,4] from("gelu-from-onnx")
  return %y
}""")


# -- numerics: the groupings ----------------------------------------------------------------
def model_of(body, shape=(3, 16)) -> Model:
    g = Graph("g")
    x = g.add_input(TensorType(DType.F32, shape), "x")
    y = body(g, x)
    y.name = "y"
    g.outputs.append(y)
    model = Model(g, {"": 17})
    apply(model, "infer-shapes")
    return model


def gelu(kind="erf", group="x*phi, *half", scale="div", cube="pow", half=0.5, swap=False):
    """GELU as an exporter spells it; `swap` puts every constant first."""
    def body(g, x):
        c = lambda a: g.constant(np.float32(a))  # noqa: E731

        def op(name, a, b):
            return g.add(f"onnx.{name}", [b, a] if swap and name in ("Mul", "Add") else [a, b]).output

        if kind == "erf":
            arg = op("Div", x, c(math.sqrt(2))) if scale == "div" else op("Mul", x, c(1 / math.sqrt(2)))
            phi = g.add("onnx.Erf", [arg]).output
        else:
            x3 = op("Pow", x, c(3.0)) if cube == "pow" else op("Mul", op("Mul", x, x), x)
            inner = op("Add", x, op("Mul", x3, c(0.044715)))
            phi = g.add("onnx.Tanh", [op("Mul", inner, c(math.sqrt(2 / math.pi)))]).output
        one_plus = op("Add", phi, c(1.0))
        if group == "x*phi, *half":
            return op("Mul", op("Mul", x, one_plus), c(half))
        if group == "x*half, *phi":
            return op("Mul", op("Mul", x, c(half)), one_plus)
        return op("Mul", x, op("Mul", one_plus, c(half)))
    return body


GROUPS = ["x*phi, *half", "x*half, *phi", "x, *(phi*half)"]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("variant", [dict(kind="erf"), dict(kind="erf", scale="mul", swap=True),
                                     dict(kind="tanh"), dict(kind="tanh", cube="mul", swap=True)])
def test_each_grouping_fuses_and_keeps_the_outputs(group, variant):
    make = copies_of(lambda: model_of(gelu(group=group, **variant)))
    original, model = assert_properties(make, "fuse-gelu")
    (node,) = [n for n in model.graph if n.op != "onnx.Constant"]
    assert node.op == "mdoc.gelu" and node.attrs["approximate"] == ("none" if variant["kind"] == "erf" else "tanh")
    assert_same_outputs(original, model)


def test_a_wrong_half_is_refused_with_the_reason():
    model = model_of(gelu(half=0.6))
    _, changed = apply(model, "fuse-gelu")
    assert not changed
    assert "check refused: the outer factor is not 0.5" in "\n".join(explain(model.graph, "gelu-erf", model))


def test_a_scale_other_than_sqrt2_is_refused():
    def body(g, x):
        e = g.add("onnx.Erf", [g.add("onnx.Div", [x, g.constant(np.float32(2.0))]).output]).output
        p = g.add("onnx.Add", [e, g.constant(np.float32(1.0))]).output
        return g.add("onnx.Mul", [g.add("onnx.Mul", [x, p]).output, g.constant(np.float32(0.5))]).output
    model = model_of(body)
    apply(model, "fuse-gelu")
    assert "the Erf's argument is x / 2, not x / sqrt(2)" in "\n".join(explain(model.graph, "gelu-erf", model))
