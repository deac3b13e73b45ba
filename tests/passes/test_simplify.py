"""simplify: golden IR for each rule, the rules that must not fire, the properties, numerics."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdoc.onnx_export import export_model
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of, drawer, random_model


def test_arithmetic_identities():
    assert_golden("simplify", """
graph @g(%x: f32[N,3]) -> (%y: f32[N,3]) {
  %one = onnx.Constant() {value = dense<1.0>} : f32[]
  %zeros = onnx.Constant() {value = dense<[0.0, 0.0, 0.0]>} : f32[3]
  %ones = onnx.Constant() {value = dense<[[1.0, 1.0, 1.0]]>} : f32[1,3]
  %a = onnx.Mul(%x, %one) : f32[N,3]
  %b = onnx.Add(%zeros, %a) : f32[N,3]
  %c = onnx.Sub(%b, %zeros) : f32[N,3]
  %d = onnx.Div(%c, %ones) : f32[N,3]
  %e = onnx.Mul(%one, %d) : f32[N,3]
  %y = onnx.Relu(%e) : f32[N,3]
  return %y
}""", """
graph @g(%x: f32[N,3]) -> (%y: f32[N,3]) {
  %y = onnx.Relu(%x) : f32[N,3]
  return %y
}""")


def test_arithmetic_that_broadcasts_or_is_not_neutral_stays():
    before = """
graph @g(%x: f32[N,3], %s: f32[3]) -> (%y: f32[2,N,3], %z: f32[3], %w: f32[N,3]) {
  %ones = onnx.Constant() {value = dense<[[[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]]]>} : f32[2,1,3]
  %zero = onnx.Constant() {value = dense<0.0>} : f32[]
  %half = onnx.Constant() {value = dense<0.5>} : f32[]
  %y = onnx.Mul(%x, %ones) : f32[2,N,3]
  %z = onnx.Sub(%zero, %s) : f32[3]
  %w = onnx.Mul(%x, %half) : f32[N,3]
  return %y, %z, %w
}"""
    assert_golden("simplify", before, before, changed=False)


def test_unknown_shape_proves_nothing():
    before = """
graph @g(%x: f32[*]) -> (%y: f32[*]) {
  %one = onnx.Constant() {value = dense<[1.0]>} : f32[1]
  %y = onnx.Mul(%x, %one) : f32[*]
  return %y
}"""
    assert_golden("simplify", before, before, changed=False)


def test_transposes_compose_and_cancel():
    assert_golden("simplify", """
graph @g(%x: f32[2,3,4]) -> (%y: f32[3,4,2], %z: f32[2,3,4]) {
  %t1 = onnx.Transpose(%x) {perm = [1, 0, 2]} : f32[3,2,4]
  %y = onnx.Transpose(%t1) {perm = [0, 2, 1]} : f32[3,4,2]
  %t2 = onnx.Transpose(%x) {perm = [2, 0, 1]} : f32[4,2,3]
  %t3 = onnx.Transpose(%t2) {perm = [1, 2, 0]} : f32[2,3,4]
  %t4 = onnx.Transpose(%t3) {perm = [0, 1, 2]} : f32[2,3,4]
  %z = onnx.Relu(%t4) : f32[2,3,4]
  return %y, %z
}""", """
graph @g(%x: f32[2,3,4]) -> (%y: f32[3,4,2], %z: f32[2,3,4]) {
  %y = onnx.Transpose(%x) {perm = [1, 2, 0]} : f32[3,4,2]
  %z = onnx.Relu(%x) : f32[2,3,4]
  return %y, %z
}""")


def test_transpose_with_other_readers_is_not_duplicated():
    before = """
graph @g(%x: f32[2,3]) -> (%y: f32[2,3], %t: f32[3,2]) {
  %t = onnx.Transpose(%x) {perm = [1, 0]} : f32[3,2]
  %u = onnx.Transpose(%t) {perm = [1, 0]} : f32[2,3]
  %y = onnx.Relu(%u) : f32[2,3]
  return %y, %t
}"""
    assert_golden("simplify", before, """
graph @g(%x: f32[2,3]) -> (%y: f32[2,3], %t: f32[3,2]) {
  %t = onnx.Transpose(%x) {perm = [1, 0]} : f32[3,2]
  %y = onnx.Relu(%x) : f32[2,3]
  return %y, %t
}""")


def test_reshapes_collapse():
    assert_golden("simplify", """
graph @g(%x: f32[2,3,4]) -> (%y: f32[6,4], %z: f32[2,3,4]) {
  %s1 = onnx.Constant() {value = dense<[24]>} : i64[1]
  %s2 = onnx.Constant() {value = dense<[6, 4]>} : i64[2]
  %same = onnx.Constant() {value = dense<[0, 3, -1]>} : i64[3]
  %a = onnx.Reshape(%x, %s1) : f32[24]
  %y = onnx.Reshape(%a, %s2) : f32[6,4]
  %b = onnx.Reshape(%x, %same) : f32[2,3,4]
  %z = onnx.Relu(%b) : f32[2,3,4]
  return %y, %z
}""", """
graph @g(%x: f32[2,3,4]) -> (%y: f32[6,4], %z: f32[2,3,4]) {
  %s2 = onnx.Constant() {value = dense<[6, 4]>} : i64[2]
  %y = onnx.Reshape(%x, %s2) : f32[6,4]
  %z = onnx.Relu(%x) : f32[2,3,4]
  return %y, %z
}""")


def test_reshape_chain_with_copied_dim_stays():
    # the 0 copies a dim of %a, not of %x: skipping the inner Reshape would change the result
    before = """
graph @g(%x: f32[2,3,4]) -> (%y: f32[6,2,2]) {
  %s1 = onnx.Constant() {value = dense<[6, 4]>} : i64[2]
  %s2 = onnx.Constant() {value = dense<[0, 2, 2]>} : i64[3]
  %a = onnx.Reshape(%x, %s1) : f32[6,4]
  %y = onnx.Reshape(%a, %s2) : f32[6,2,2]
  return %y
}"""
    assert_golden("simplify", before, before, changed=False)


def test_computed_reshape_target_becomes_constant():
    assert_golden("simplify", """
graph @g(%x: f32[N,3,4]) -> (%y: f32[N,12]) {
  %shape = onnx.Shape(%x) : i64[3]
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %n = onnx.Gather(%shape, %i0) {axis = 0} : i64[]
  %axes = onnx.Constant() {value = dense<[0]>} : i64[1]
  %n1 = onnx.Unsqueeze(%n, %axes) : i64[1]
  %rest = onnx.Constant() {value = dense<[12]>} : i64[1]
  %target = onnx.Concat(%n1, %rest) {axis = 0} : i64[2]
  %y = onnx.Reshape(%x, %target) : f32[N,12]
  return %y
}""", """
graph @g(%x: f32[N,3,4]) -> (%y: f32[N,12]) {
  %0 = onnx.Constant() {value = dense<[0, 12]>} : i64[2]
  %y = onnx.Reshape(%x, %0) : f32[N,12]
  return %y
}""")


def test_squeeze_unsqueeze_pairs():
    assert_golden("simplify", """
graph @g(%x: f32[2,1,3]) -> (%y: f32[2,1,3], %z: f32[2,1,3], %w: f32[1,2,1,3,1]) {
  %a0 = onnx.Constant() {value = dense<[0, -1]>} : i64[2]
  %a1 = onnx.Constant() {value = dense<[1]>} : i64[1]
  %u = onnx.Unsqueeze(%x, %a0) : f32[1,2,1,3,1]
  %s0 = onnx.Squeeze(%u, %a0) : f32[2,1,3]
  %y = onnx.Relu(%s0) : f32[2,1,3]
  %s = onnx.Squeeze(%x, %a1) : f32[2,3]
  %u1 = onnx.Unsqueeze(%s, %a1) : f32[2,1,3]
  %z = onnx.Neg(%u1) : f32[2,1,3]
  %a2 = onnx.Constant() {value = dense<[-1]>} : i64[1]
  %a3 = onnx.Constant() {value = dense<[0]>} : i64[1]
  %v = onnx.Unsqueeze(%x, %a2) : f32[2,1,3,1]
  %w = onnx.Unsqueeze(%v, %a3) : f32[1,2,1,3,1]
  return %y, %z, %w
}""", """
graph @g(%x: f32[2,1,3]) -> (%y: f32[2,1,3], %z: f32[2,1,3], %w: f32[1,2,1,3,1]) {
  %y = onnx.Relu(%x) : f32[2,1,3]
  %z = onnx.Neg(%x) : f32[2,1,3]
  %0 = onnx.Constant() {value = dense<[0, 4]>} : i64[2]
  %w = onnx.Unsqueeze(%x, %0) : f32[1,2,1,3,1]
  return %y, %z, %w
}""")


def test_squeezes_merge():
    assert_golden("simplify", """
graph @g(%x: f32[1,2,1,3]) -> (%y: f32[2,3]) {
  %a = onnx.Constant() {value = dense<[0]>} : i64[1]
  %b = onnx.Constant() {value = dense<[1]>} : i64[1]
  %s = onnx.Squeeze(%x, %a) : f32[2,1,3]
  %y = onnx.Squeeze(%s, %b) : f32[2,3]
  return %y
}""", """
graph @g(%x: f32[1,2,1,3]) -> (%y: f32[2,3]) {
  %0 = onnx.Constant() {value = dense<[0, 2]>} : i64[2]
  %y = onnx.Squeeze(%x, %0) : f32[2,3]
  return %y
}""")


def test_squeeze_axes_as_attributes_before_opset_13():
    assert_golden("simplify", """
module {opset_imports = {"" = 11}}
graph @g(%x: f32[2,3]) -> (%y: f32[2,3]) {
  %u = onnx.Unsqueeze(%x) {axes = [0]} : f32[1,2,3]
  %v = onnx.Unsqueeze(%u) {axes = [3]} : f32[1,2,3,1]
  %y = onnx.Squeeze(%v) {axes = [0, 3]} : f32[2,3]
  return %y
}""", """
module {opset_imports = {"" = 11}}
graph @g(%x: f32[2,3]) -> (%y: f32[2,3]) {
  %y = onnx.Identity(%x) : f32[2,3]
  return %y
}""")


def test_dropout_cast_pad_expand_concat_slice():
    assert_golden("simplify", """
graph @g(%x: f32[N,3]) -> (%y: f32[N,3]) {
  %a = onnx.Dropout(%x) : f32[N,3]
  %b = onnx.Cast(%a) {to = 1} : f32[N,3]
  %pads = onnx.Constant() {value = dense<[0, 0, 0, 0]>} : i64[4]
  %c = onnx.Pad(%b, %pads) : f32[N,3]
  %shape = onnx.Constant() {value = dense<[1, 3]>} : i64[2]
  %d = onnx.Expand(%c, %shape) : f32[N,3]
  %e = onnx.Concat(%d) {axis = 0} : f32[N,3]
  %starts = onnx.Constant() {value = dense<[0, -5]>} : i64[2]
  %ends = onnx.Constant() {value = dense<[9223372036854775807, 3]>} : i64[2]
  %f = onnx.Slice(%e, %starts, %ends) : f32[N,3]
  %y = onnx.Relu(%f) : f32[N,3]
  return %y
}""", """
graph @g(%x: f32[N,3]) -> (%y: f32[N,3]) {
  %y = onnx.Relu(%x) : f32[N,3]
  return %y
}""")


def test_no_ops_that_do_something_stay():
    before = """
graph @g(%x: f32[N,3], %train: bool[]) -> (%y: f32[N,3], %mask: bool[N,3], %z: f32[N,3], %c: f64[N,3], %s: f32[N,2], %e: f32[2,N,3]) {
  %y, %mask = onnx.Dropout(%x) : f32[N,3], bool[N,3]
  %ratio = onnx.Constant() {value = dense<0.5>} : f32[]
  %z = onnx.Dropout(%x, %ratio, %train) : f32[N,3]
  %c = onnx.Cast(%x) {to = 11} : f64[N,3]
  %starts = onnx.Constant() {value = dense<[0]>} : i64[1]
  %ends = onnx.Constant() {value = dense<[2]>} : i64[1]
  %axes = onnx.Constant() {value = dense<[1]>} : i64[1]
  %s = onnx.Slice(%x, %starts, %ends, %axes) : f32[N,2]
  %shape = onnx.Constant() {value = dense<[2, 1, 3]>} : i64[3]
  %e = onnx.Expand(%x, %shape) : f32[2,N,3]
  return %y, %mask, %z, %c, %s, %e
}"""
    assert_golden("simplify", before, before, changed=False)


def test_replaced_output_keeps_its_name():
    assert_golden("simplify", """
graph @g(%x: f32[2]) -> (%out: f32[2]) {
  %r = onnx.Relu(%x) : f32[2]
  %out = onnx.Identity(%r) : f32[2]
  return %out
}""", """
graph @g(%x: f32[2]) -> (%out: f32[2]) {
  %out = onnx.Relu(%x) : f32[2]
  return %out
}""")


def test_output_that_would_become_an_input_keeps_its_node():
    before = """
graph @g(%x: f32[2]) -> (%out: f32[2]) {
  %out = onnx.Identity(%x) : f32[2]
  return %out
}"""
    assert_golden("simplify", before, before, changed=False)


def test_nested_bodies():
    assert_golden("simplify", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %y = onnx.If(%c) {else_branch = graph @else() -> (f32[2]) {
    %n = onnx.Neg(%x) : f32[2]
    return %n
  }, then_branch = graph @then() -> (f32[2]) {
    %i = onnx.Identity(%x) : f32[2]
    %r = onnx.Relu(%i) : f32[2]
    return %r
  }} : f32[2]
  return %y
}""", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %y = onnx.If(%c) {else_branch = graph @else() -> (f32[2]) {
    %n = onnx.Neg(%x) : f32[2]
    return %n
  }, then_branch = graph @then() -> (f32[2]) {
    %r = onnx.Relu(%x) : f32[2]
    return %r
  }} : f32[2]
  return %y
}""")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_properties_and_numerics(data):
    make = copies_of(lambda: random_model(drawer(data)))

    original, model = assert_properties(make, "simplify")
    assert_same_outputs(export_model(original), model)


@pytest.mark.parametrize("name", ["vit_tiny", "bert_encoder"])
def test_zoo_models_keep_their_outputs(name):
    from mdoc.models import ZOO, build, example_inputs
    from mdoc.onnx_import import import_model

    proto = build(name, **ZOO[name].test_kwargs)
    model, changed = apply(import_model(proto), "infer-shapes,simplify")
    assert changed
    assert_same_outputs(proto, model, example_inputs(proto, dims={"N": 3}))


def test_layout_of_a_fill_stays_a_fill():
    assert_golden("simplify", """
graph @g(%x: f32[1,64,8,8]) -> (%y: f32[1,64,8,8]) {
  %s = onnx.Constant() {value = dense<[64]>} : i64[1]
  %fill = onnx.ConstantOfShape(%s) {value = dense<[0.5]> : f32[1]} : f32[64]
  %axes = onnx.Constant() {value = dense<[1, 2]>} : i64[2]
  %u = onnx.Unsqueeze(%fill, %axes) : f32[64,1,1]
  %y = onnx.Mul(%x, %u) : f32[1,64,8,8]
  return %y
}""", """
graph @g(%x: f32[1,64,8,8]) -> (%y: f32[1,64,8,8]) {
  %0 = onnx.Constant() {value = dense<[64, 1, 1]>} : i64[3]
  %u = onnx.ConstantOfShape(%0) {value = dense<[0.5]> : f32[1]} : f32[64,1,1]
  %y = onnx.Mul(%x, %u) : f32[1,64,8,8]
  return %y
}""")
