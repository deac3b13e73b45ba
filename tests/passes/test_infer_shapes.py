"""infer-shapes: types come back from ONNX inference by the exporter's names, and never lose what mdoc knew."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mdoc.ir import Graph, Model
from mdoc.shape_inference import merge
from mdoc.types import UNKNOWN, DType, TensorType
from pass_testing import apply, assert_golden, assert_properties, copies_of, drawer, random_model


def test_unknown_types_are_filled_in():
    # a dim ONNX cannot name gets its fresh symbol (unk__0); the same symbol means the same size
    assert_golden("infer-shapes", """
graph @g(%x: f32[N,3,4]) -> (%y: ?) {
  %t = onnx.Transpose(%x) {perm = [0, 2, 1]}
  %s = onnx.Shape(%t)
  %k = onnx.Constant() {value = dense<[-1, 12]>} : i64[2]
  %r = onnx.Reshape(%t, %k)
  %y = onnx.ReduceSum(%r) {keepdims = 0}
  return %y
}""", """
graph @g(%x: f32[N,3,4]) -> (%y: f32[]) {
  %t = onnx.Transpose(%x) {perm = [0, 2, 1]} : f32[N,4,3]
  %s = onnx.Shape(%t) : i64[3]
  %k = onnx.Constant() {value = dense<[-1, 12]>} : i64[2]
  %r = onnx.Reshape(%t, %k) : f32[unk__0,12]
  %y = onnx.ReduceSum(%r) {keepdims = 0} : f32[]
  return %y
}""")


def test_shapes_computed_from_shapes_propagate():
    # data propagation: the Reshape target is computed from Shape(%x), so N reaches the result
    assert_golden("infer-shapes", """
graph @g(%x: f32[N,3,4]) -> (%y: ?) {
  %s = onnx.Shape(%x)
  %st = onnx.Constant() {value = dense<[0]>} : i64[1]
  %en = onnx.Constant() {value = dense<[1]>} : i64[1]
  %n = onnx.Slice(%s, %st, %en)
  %rest = onnx.Constant() {value = dense<[12]>} : i64[1]
  %target = onnx.Concat(%n, %rest) {axis = 0}
  %y = onnx.Reshape(%x, %target)
  return %y
}""", """
graph @g(%x: f32[N,3,4]) -> (%y: f32[N,12]) {
  %s = onnx.Shape(%x) : i64[3]
  %st = onnx.Constant() {value = dense<[0]>} : i64[1]
  %en = onnx.Constant() {value = dense<[1]>} : i64[1]
  %n = onnx.Slice(%s, %st, %en) : i64[1]
  %rest = onnx.Constant() {value = dense<[12]>} : i64[1]
  %target = onnx.Concat(%n, %rest) {axis = 0} : i64[2]
  %y = onnx.Reshape(%x, %target) : f32[N,12]
  return %y
}""")


def test_dims_mdoc_knew_are_kept():
    # ONNX cannot see through a shape fed as a graph input; mdoc's [2,6] (from an earlier analysis) stays.
    assert_golden("infer-shapes", """
graph @g(%x: f32[2,3,4], %shape: i64[2]) -> (%y: f32[2,6,2]) {
  %r = onnx.Reshape(%x, %shape) : f32[2,12]
  %k = onnx.Constant() {value = dense<[0, 6, 2]>} : i64[3]
  %y = onnx.Reshape(%r, %k) : f32[2,6,2]
  return %y
}""", """
graph @g(%x: f32[2,3,4], %shape: i64[2]) -> (%y: f32[2,6,2]) {
  %r = onnx.Reshape(%x, %shape) : f32[2,12]
  %k = onnx.Constant() {value = dense<[0, 6, 2]>} : i64[3]
  %y = onnx.Reshape(%r, %k) : f32[2,6,2]
  return %y
}""", changed=False)


def test_bodies_get_types_too():
    assert_golden("infer-shapes", """
graph @g(%c: bool[], %x: f32[2,3]) -> (%y: f32[2,3]) {
  %y = onnx.If(%c) {else_branch = graph @e() -> (f32[2,3]) {
    %n = onnx.Neg(%x)
    return %n
  }, then_branch = graph @t() -> (f32[2,3]) {
    %a = onnx.Abs(%x)
    %b = onnx.Neg(%a)
    return %b
  }} : f32[2,3]
  return %y
}""", """
graph @g(%c: bool[], %x: f32[2,3]) -> (%y: f32[2,3]) {
  %y = onnx.If(%c) {else_branch = graph @e() -> (f32[2,3]) {
    %n = onnx.Neg(%x) : f32[2,3]
    return %n
  }, then_branch = graph @t() -> (f32[2,3]) {
    %a = onnx.Abs(%x) : f32[2,3]
    %b = onnx.Neg(%a) : f32[2,3]
    return %b
  }} : f32[2,3]
  return %y
}""")


def test_merge_rules():
    f = DType.F32
    assert merge(TensorType(f, (2, None, "N")), TensorType(f, (None, 3, "unk__0"))) == TensorType(f, (2, 3, "N"))
    assert merge(TensorType(f, (2, 3)), TensorType(f, None)) == TensorType(f, (2, 3))
    assert merge(UNKNOWN, TensorType(f, (1,))) == TensorType(f, (1,))
    assert merge(TensorType(f, (1,)), UNKNOWN) == TensorType(f, (1,))
    assert merge(TensorType(f, (None,)), TensorType(f, ("S",))) == TensorType(f, ("S",))


def test_constants_and_inputs_keep_their_types():
    g = Graph()
    x = g.add_input(TensorType(DType.F32, ("N",)), "x")
    c = g.constant(np.zeros(3, np.float32), "c")
    g.outputs.append(g.add("onnx.Add", [x, c], outputs=1).output)
    model = Model(g)
    _, changed = apply(model, "infer-shapes")
    assert changed and x.type == TensorType(DType.F32, ("N",)) and c.type == TensorType(DType.F32, (3,))
    assert g.outputs[0].type.dtype is DType.F32


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_properties(data):
    copy = copies_of(lambda: random_model(drawer(data)))

    def make():
        model = copy()
        for node in model.graph:  # forget every type but the constants'
            if node.op != "onnx.Constant":
                for o in node.outputs:
                    o.type = UNKNOWN
        return model

    assert_properties(make, "infer-shapes")
