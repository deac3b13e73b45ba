"""cse: golden IR for constants, nodes, commutative ops, bodies, shape chains; what must stay apart."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mdoc.onnx_export import export_model
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of, drawer, random_model


def test_equal_constants_and_nodes_merge():
    assert_golden("cse", """
graph @g(%x: f32[2]) -> (%y: f32[2]) {
  %a = onnx.Constant() {value = dense<[1.0, 2.0]>} : f32[2]
  %b = onnx.Constant() {value = dense<[1.0, 2.0]>} : f32[2]
  %p = onnx.Add(%x, %a) : f32[2]
  %q = onnx.Add(%b, %x) : f32[2]
  %r = onnx.LeakyRelu(%p) {alpha = 0.25} : f32[2]
  %s = onnx.LeakyRelu(%q) {alpha = 0.25} : f32[2]
  %y = onnx.Sub(%r, %s) : f32[2]
  return %y
}""", """
graph @g(%x: f32[2]) -> (%y: f32[2]) {
  %a = onnx.Constant() {value = dense<[1.0, 2.0]>} : f32[2]
  %p = onnx.Add(%x, %a) : f32[2]
  %r = onnx.LeakyRelu(%p) {alpha = 0.25} : f32[2]
  %y = onnx.Sub(%r, %r) : f32[2]
  return %y
}""")


def test_things_that_differ_stay_apart():
    before = """
graph @g(%x: f32[2]) -> (%y: f32[2], %z: f32[2], %u: f32[2], %v: f32[2], %w: f32[2], %k: f32[2], %n: f32[2],
                          %dd: f64[2], %ss: f32[1,2]) {
  %pz = onnx.Constant() {value = dense<[0.0, 0.0]>} : f32[2]
  %nz = onnx.Constant() {value = dense<[-0.0, 0.0]>} : f32[2]
  %d = onnx.Constant() {value = dense<[0.0, 0.0]>} : f64[2]
  %sh = onnx.Constant() {value = dense<[[0.0, 0.0]]>} : f32[1,2]
  %y = onnx.Add(%x, %pz) : f32[2]
  %z = onnx.Add(%x, %nz) : f32[2]
  %u = onnx.LeakyRelu(%x) {alpha = 0.25} : f32[2]
  %v = onnx.LeakyRelu(%x) {alpha = 0.5} : f32[2]
  %w = onnx.Sub(%x, %y) : f32[2]
  %k = onnx.Sub(%y, %x) : f32[2]
  %n = onnx.RandomNormalLike(%x) : f32[2]
  %n2 = onnx.RandomNormalLike(%x) : f32[2]
  %dd = onnx.Add(%d, %d) : f64[2]
  %ss = onnx.Add(%sh, %sh) : f32[1,2]
  return %y, %z, %u, %v, %w, %k, %n, %dd, %ss
}"""
    assert_golden("cse", before, before, changed=False)


def test_custom_ops_never_merge():
    before = """
module {opset_imports = {"" = 17, "com.example" = 1}}
graph @g(%x: f32[2]) -> (%a: f32[2], %b: f32[2]) {
  %a = com.example.Sample(%x) : f32[2]
  %b = com.example.Sample(%x) : f32[2]
  return %a, %b
}"""
    assert_golden("cse", before, before, changed=False)


def test_two_outputs_computing_the_same_keep_their_names():
    before = """
graph @g(%x: f32[2]) -> (%a: f32[2], %b: f32[2]) {
  %a = onnx.Relu(%x) : f32[2]
  %b = onnx.Relu(%x) : f32[2]
  return %a, %b
}"""
    assert_golden("cse", before, before, changed=False)


def test_bodies_compare_structurally():
    assert_golden("cse", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %i1 = onnx.If(%c) {else_branch = graph @e1() -> (f32[2]) {
    return %x
  }, then_branch = graph @t1() -> (f32[2]) {
    %n1 = onnx.Neg(%x) : f32[2]
    return %n1
  }} : f32[2]
  %i2 = onnx.If(%c) {else_branch = graph @e2() -> (f32[2]) {
    return %x
  }, then_branch = graph @t2() -> (f32[2]) {
    %n2 = onnx.Neg(%x) : f32[2]
    return %n2
  }} : f32[2]
  %i3 = onnx.If(%c) {else_branch = graph @e3() -> (f32[2]) {
    return %x
  }, then_branch = graph @t3() -> (f32[2]) {
    %n3 = onnx.Abs(%x) : f32[2]
    return %n3
  }} : f32[2]
  %s = onnx.Add(%i1, %i2) : f32[2]
  %y = onnx.Add(%s, %i3) : f32[2]
  return %y
}""", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %i1 = onnx.If(%c) {else_branch = graph @e1() -> (f32[2]) {
    return %x
  }, then_branch = graph @t1() -> (f32[2]) {
    %n1 = onnx.Neg(%x) : f32[2]
    return %n1
  }} : f32[2]
  %i3 = onnx.If(%c) {else_branch = graph @e3() -> (f32[2]) {
    return %x
  }, then_branch = graph @t3() -> (f32[2]) {
    %n3 = onnx.Abs(%x) : f32[2]
    return %n3
  }} : f32[2]
  %s = onnx.Add(%i1, %i1) : f32[2]
  %y = onnx.Add(%s, %i3) : f32[2]
  return %y
}""")


def test_body_reuses_an_equal_outer_value():
    assert_golden("cse", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %n = onnx.Neg(%x) : f32[2]
  %y = onnx.If(%c) {else_branch = graph @e() -> (f32[2]) {
    return %x
  }, then_branch = graph @t() -> (f32[2]) {
    %m = onnx.Neg(%x) : f32[2]
    %r = onnx.Add(%m, %n) : f32[2]
    return %r
  }} : f32[2]
  return %y
}""", """
graph @g(%c: bool[], %x: f32[2]) -> (%y: f32[2]) {
  %n = onnx.Neg(%x) : f32[2]
  %y = onnx.If(%c) {else_branch = graph @e() -> (f32[2]) {
    return %x
  }, then_branch = graph @t() -> (f32[2]) {
    %r = onnx.Add(%n, %n) : f32[2]
    return %r
  }} : f32[2]
  return %y
}""")


def test_shape_chains_with_the_same_symbolic_dims_merge():
    # [N] ++ [2, 2] holds what Shape(%z) holds, [N] ++ [4] what Shape(%x) holds (dce then drops the rest)
    assert_golden("cse", """
graph @g(%x: f32[N,4], %z: f32[N,2,2]) -> (%a: f32[N,2,2], %b: f32[N,4]) {
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %ax = onnx.Constant() {value = dense<[0]>} : i64[1]
  %sx = onnx.Shape(%x) : i64[2]
  %nx = onnx.Gather(%sx, %i0) {axis = 0} : i64[]
  %ux = onnx.Unsqueeze(%nx, %ax) : i64[1]
  %sz = onnx.Shape(%z) : i64[3]
  %nz = onnx.Gather(%sz, %i0) {axis = 0} : i64[]
  %uz = onnx.Unsqueeze(%nz, %ax) : i64[1]
  %t22 = onnx.Constant() {value = dense<[2, 2]>} : i64[2]
  %t4 = onnx.Constant() {value = dense<[4]>} : i64[1]
  %ta = onnx.Concat(%ux, %t22) {axis = 0} : i64[3]
  %tb = onnx.Concat(%uz, %t4) {axis = 0} : i64[2]
  %a = onnx.Reshape(%x, %ta) : f32[N,2,2]
  %b = onnx.Reshape(%z, %tb) : f32[N,4]
  return %a, %b
}""", """
graph @g(%x: f32[N,4], %z: f32[N,2,2]) -> (%a: f32[N,2,2], %b: f32[N,4]) {
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %ax = onnx.Constant() {value = dense<[0]>} : i64[1]
  %sx = onnx.Shape(%x) : i64[2]
  %nx = onnx.Gather(%sx, %i0) {axis = 0} : i64[]
  %ux = onnx.Unsqueeze(%nx, %ax) : i64[1]
  %sz = onnx.Shape(%z) : i64[3]
  %t22 = onnx.Constant() {value = dense<[2, 2]>} : i64[2]
  %t4 = onnx.Constant() {value = dense<[4]>} : i64[1]
  %a = onnx.Reshape(%x, %sz) : f32[N,2,2]
  %b = onnx.Reshape(%z, %sx) : f32[N,4]
  return %a, %b
}""")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_properties_and_numerics(data):
    make = copies_of(lambda: random_model(drawer(data)))

    original, model = assert_properties(make, "cse")
    assert_same_outputs(export_model(original), model)


def test_zoo_shape_chains_collapse():
    from mdoc.models import ZOO, build, example_inputs
    from mdoc.onnx_import import import_model

    proto = build("bert_encoder", **ZOO["bert_encoder"].test_kwargs)
    model = import_model(proto)
    shapes = sum(n.op == "onnx.Shape" for n in model.graph)
    model, changed = apply(model, "infer-shapes,cse,dce")
    assert changed and sum(n.op == "onnx.Shape" for n in model.graph) < shapes
    assert_same_outputs(proto, model, example_inputs(proto, dims={"N": 3}))
