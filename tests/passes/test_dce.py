"""dce: golden IR for dead nodes, constants, bodies, optional trailing results, unused inputs; properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mdoc.onnx_export import export_model
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of, drawer, random_model


def test_dead_nodes_and_constants_go():
    assert_golden("dce", """
graph @g(%x: f32[2]) -> (%y: f32[2]) {
  %w = onnx.Constant() {value = dense<[1.0, 2.0]>} : f32[2]
  %unused = onnx.Constant() {value = dense<[3.0, 4.0]>} : f32[2]
  %a = onnx.Add(%x, %w) : f32[2]
  %dead1 = onnx.Mul(%a, %unused) : f32[2]
  %dead2 = onnx.Neg(%dead1) : f32[2]
  %y = onnx.Relu(%a) : f32[2]
  return %y
}""", """
graph @g(%x: f32[2]) -> (%y: f32[2]) {
  %w = onnx.Constant() {value = dense<[1.0, 2.0]>} : f32[2]
  %a = onnx.Add(%x, %w) : f32[2]
  %y = onnx.Relu(%a) : f32[2]
  return %y
}""")


def test_dead_nodes_in_bodies_go_and_free_outer_values():
    assert_golden("dce", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %k = onnx.Constant() {value = dense<[5.0, 6.0]>} : f32[2]
  %y = onnx.If(%c) {else_branch = graph @else() -> (f32[2]) {
    return %x
  }, then_branch = graph @then() -> (f32[2]) {
    %dead = onnx.Add(%x, %k) : f32[2]
    %r = onnx.Relu(%x) : f32[2]
    return %r
  }} : f32[2]
  return %y
}""", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %y = onnx.If(%c) {else_branch = graph @else() -> (f32[2]) {
    return %x
  }, then_branch = graph @then() -> (f32[2]) {
    %r = onnx.Relu(%x) : f32[2]
    return %r
  }} : f32[2]
  return %y
}""")


def test_value_returned_by_a_body_stays_alive():
    before = """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %n = onnx.Neg(%x) : f32[2]
  %y = onnx.If(%c) {else_branch = graph @else() -> (f32[2]) {
    return %n
  }, then_branch = graph @then() -> (f32[2]) {
    return %x
  }} : f32[2]
  return %y
}"""
    assert_golden("dce", before, before, changed=False)


def test_unused_optional_trailing_results_are_dropped():
    assert_golden("dce", """
module {opset_imports = {"" = 18}}
graph @g(%x: f32[1,1,4,4], %s: f32[3,1,2], %w: f32[1,8,2], %r: f32[1,8,2]) -> (%p: f32[1,1,2,2], %d: f32[1,1,4,4], %h: f32[1,1,2], %a: f32[2], %b: f32[2]) {
  %p, %idx = onnx.MaxPool(%x) {kernel_shape = [2, 2], strides = [2, 2]} : f32[1,1,2,2], i64[1,1,2,2]
  %d, %mask = onnx.Dropout(%x) : f32[1,1,4,4], bool[1,1,4,4]
  %yall, %h, %c = onnx.LSTM(%s, %w, %r) {hidden_size = 2} : f32[3,1,1,2], f32[1,1,2], f32[1,1,2]
  %flat = onnx.Constant() {value = dense<[4]>} : i64[1]
  %v = onnx.Reshape(%p, %flat) : f32[4]
  %a, %b = onnx.Split(%v) {num_outputs = 2} : f32[2], f32[2]
  return %p, %d, %h, %a, %b
}""", """
module {opset_imports = {"" = 18}}
graph @g(%x: f32[1,1,4,4], %s: f32[3,1,2], %w: f32[1,8,2], %r: f32[1,8,2]) -> (%p: f32[1,1,2,2], %d: f32[1,1,4,4], %h: f32[1,1,2], %a: f32[2], %b: f32[2]) {
  %p = onnx.MaxPool(%x) {kernel_shape = [2, 2], strides = [2, 2]} : f32[1,1,2,2]
  %d = onnx.Dropout(%x) : f32[1,1,4,4]
  %yall, %h = onnx.LSTM(%s, %w, %r) {hidden_size = 2} : f32[3,1,1,2], f32[1,1,2]
  %flat = onnx.Constant() {value = dense<[4]>} : i64[1]
  %v = onnx.Reshape(%p, %flat) : f32[4]
  %a, %b = onnx.Split(%v) {num_outputs = 2} : f32[2], f32[2]
  return %p, %d, %h, %a, %b
}""")


def test_results_that_change_meaning_or_are_required_stay():
    # BatchNormalization-9 trains exactly when it has 5 results; TopK and Split results are not optional.
    before = """
module {opset_imports = {"" = 9}}
graph @g(%x: f32[1,2,2,2], %sc: f32[2], %b: f32[2], %m: f32[2], %v: f32[2]) -> (%y: f32[1,2,2,2]) {
  %y, %rm, %rv, %sm, %sv = onnx.BatchNormalization(%x, %sc, %b, %m, %v) : f32[1,2,2,2], f32[2], f32[2], f32[2], f32[2]
  return %y
}"""
    assert_golden("dce", before, before, changed=False)
    before = """
module {opset_imports = {"" = 18}}
graph @g(%x: f32[4]) -> (%vals: f32[2], %a: f32[2]) {
  %k = onnx.Constant() {value = dense<[2]>} : i64[1]
  %vals, %idx = onnx.TopK(%x, %k) : f32[2], i64[2]
  %a, %b = onnx.Split(%x) {num_outputs = 2} : f32[2], f32[2]
  return %vals, %a
}"""
    assert_golden("dce", before, before, changed=False)


def test_unused_inputs_go_only_when_asked():
    before = """
graph @g(%x: f32[2], %unused: f32[3]) -> (%y: f32[2]) {
  %y = onnx.Relu(%x) : f32[2]
  return %y
}"""
    assert_golden("dce", before, before, changed=False)
    assert_golden("dce{remove-unused-inputs=true}", before, """
graph @g(%x: f32[2]) -> (%y: f32[2]) {
  %y = onnx.Relu(%x) : f32[2]
  return %y
}""")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_properties_and_numerics(data):
    make = copies_of(lambda: random_model(drawer(data)))

    original, model = assert_properties(make, "dce")
    assert_same_outputs(export_model(original), model)
    # dce leaves no node without a reader
    for node in model.graph:
        assert any(o.has_uses() or any(o is x for x in model.graph.outputs) for o in node.outputs)


def test_onnx_model_with_dead_branch():
    from mdoc.models import ZOO, build, example_inputs
    from mdoc.onnx_import import import_model

    proto = build("lstm_seq", **ZOO["lstm_seq"].test_kwargs)
    model, changed = apply(import_model(proto), "dce")
    assert changed  # the LSTM/GRU results the classifier never reads
    assert_same_outputs(proto, model, example_inputs(proto, dims={"N": 3}))
