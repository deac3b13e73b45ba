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


# -- what ONNX's inference leaves unknown: bodies that read outer values, operands typed by weights --------

def test_nested_if_bodies_reading_outer_values():
    # Silero's shape: inside nested Ifs, an Unsqueeze whose axes are an outer constant (ONNX: f32[*]
    # from there on) feeds an LSTM whose state comes from an outer input
    assert_golden("infer-shapes", """
graph @g(%x: f32[?,3], %st: f32[2,?,2], %w: f32[1,8,3], %r: f32[1,8,2], %c: bool[]) -> (%y: ?, %h: ?) {
  %ax0 = onnx.Constant() {value = dense<[0]>} : i64[1]
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %y, %h = onnx.If(%c) {else_branch = graph @outer_else() -> (?, ?) {
    %g0 = onnx.Gather(%st, %i0) {axis = 0}
    %g0u = onnx.Unsqueeze(%g0, %ax0)
    return %g0, %g0u
  }, then_branch = graph @outer_then() -> (?, ?) {
    %o, %oh = onnx.If(%c) {else_branch = graph @inner_else() -> (?, ?) {
      %z = onnx.Gather(%st, %i0) {axis = 0}
      %zu = onnx.Unsqueeze(%z, %ax0)
      return %z, %zu
    }, then_branch = graph @inner_then() -> (?, ?) {
      %seq = onnx.Unsqueeze(%x, %ax0)
      %h0 = onnx.Gather(%st, %i0) {axis = 0}
      %h0u = onnx.Unsqueeze(%h0, %ax0)
      %ly, %lh = onnx.LSTM(%seq, %w, %r, none, none, %h0u) {hidden_size = 2}
      %sq = onnx.Squeeze(%lh, %ax0)
      return %sq, %lh
    }}
    return %o, %oh
  }}
  return %y, %h
}""", """
graph @g(%x: f32[?,3], %st: f32[2,?,2], %w: f32[1,8,3], %r: f32[1,8,2], %c: bool[]) -> (%y: f32[?,2], %h: f32[1,?,2]) {
  %ax0 = onnx.Constant() {value = dense<[0]>} : i64[1]
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %y, %h = onnx.If(%c) {else_branch = graph @outer_else() -> (%g0: f32[unk__5,2], %g0u: f32[1,unk__5,2]) {
    %g0 = onnx.Gather(%st, %i0) {axis = 0} : f32[unk__5,2]
    %g0u = onnx.Unsqueeze(%g0, %ax0) : f32[1,unk__5,2]
    return %g0, %g0u
  }, then_branch = graph @outer_then() -> (%o: f32[?,2], %oh: f32[1,?,2]) {
    %o, %oh = onnx.If(%c) {else_branch = graph @inner_else() -> (%z: f32[unk__4,2], %zu: f32[1,unk__4,2]) {
      %z = onnx.Gather(%st, %i0) {axis = 0} : f32[unk__4,2]
      %zu = onnx.Unsqueeze(%z, %ax0) : f32[1,unk__4,2]
      return %z, %zu
    }, then_branch = graph @inner_then() -> (%sq: f32[unk__3,2], %lh: f32[1,unk__3,2]) {
      %seq = onnx.Unsqueeze(%x, %ax0) : f32[1,?,3]
      %h0 = onnx.Gather(%st, %i0) {axis = 0} : f32[unk__0,2]
      %h0u = onnx.Unsqueeze(%h0, %ax0) : f32[1,unk__0,2]
      %ly, %lh = onnx.LSTM(%seq, %w, %r, none, none, %h0u) {hidden_size = 2} : f32[1,1,unk__2,2], f32[1,unk__3,2]
      %sq = onnx.Squeeze(%lh, %ax0) : f32[unk__3,2]
      return %sq, %lh
    }} : f32[?,2], f32[1,?,2]
    return %o, %oh
  }} : f32[?,2], f32[1,?,2]
  return %y, %h
}""")


def test_loop_body_types_from_carried_values():
    # %hc keeps its shape from one iteration to the next; %ac grows (Concat), so its first dim is forgotten
    assert_golden("infer-shapes", """
graph @g(%n: i64[], %h0: f32[N,2], %a0: f32[0,2], %x: f32[N,2], %w: f32[2,2]) -> (%h: ?, %a: ?, %ys: ?) {
  %ax0 = onnx.Constant() {value = dense<[0]>} : i64[1]
  %h, %a, %ys = onnx.Loop(%n, none, %h0, %a0) {body = graph @step(%i: ?, %cond: ?, %hc: ?, %ac: ?) -> (?, ?, ?, ?) {
    %m = onnx.MatMul(%hc, %w)
    %hn = onnx.Tanh(%m)
    %an = onnx.Concat(%ac, %x) {axis = 0}
    %y = onnx.Unsqueeze(%hn, %ax0)
    return %cond, %hn, %an, %y
  }}
  return %h, %a, %ys
}""", """
graph @g(%n: i64[], %h0: f32[N,2], %a0: f32[0,2], %x: f32[N,2], %w: f32[2,2]) -> (%h: f32[N,2], %a: f32[?,2], %ys: f32[?,1,N,2]) {
  %ax0 = onnx.Constant() {value = dense<[0]>} : i64[1]
  %h, %a, %ys = onnx.Loop(%n, none, %h0, %a0) {body = graph @step(%i: i64[], %cond: bool[], %hc: f32[N,2], %ac: f32[?,2]) -> (%cond: bool[], %hn: f32[N,2], %an: f32[?,2], %y: f32[1,N,2]) {
    %m = onnx.MatMul(%hc, %w) : f32[N,2]
    %hn = onnx.Tanh(%m) : f32[N,2]
    %an = onnx.Concat(%ac, %x) {axis = 0} : f32[?,2]
    %y = onnx.Unsqueeze(%hn, %ax0) : f32[1,N,2]
    return %cond, %hn, %an, %y
  }} : f32[N,2], f32[?,2], f32[?,1,N,2]
  return %h, %a, %ys
}""")


def test_scan_body_types_from_state_and_slices():
    # the body sees one [N,2] slice of %xs; the scan output gets T at scan_output_axes
    assert_golden("infer-shapes", """
graph @g(%s0: f32[N,2], %xs: f32[T,N,2]) -> (%s: ?, %ys: ?) {
  %ax1 = onnx.Constant() {value = dense<[1]>} : i64[1]
  %s, %ys = onnx.Scan(%s0, %xs) {body = graph @step(%sc: ?, %xt: ?) -> (?, ?) {
    %sn = onnx.Add(%sc, %xt)
    %y = onnx.Unsqueeze(%sn, %ax1)
    return %sn, %y
  }, num_scan_inputs = 1, scan_output_axes = [1]}
  return %s, %ys
}""", """
graph @g(%s0: f32[N,2], %xs: f32[T,N,2]) -> (%s: f32[N,2], %ys: f32[N,T,1,2]) {
  %ax1 = onnx.Constant() {value = dense<[1]>} : i64[1]
  %s, %ys = onnx.Scan(%s0, %xs) {body = graph @step(%sc: f32[N,2], %xt: f32[N,2]) -> (%sn: f32[N,2], %y: f32[N,1,2]) {
    %sn = onnx.Add(%sc, %xt) : f32[N,2]
    %y = onnx.Unsqueeze(%sn, %ax1) : f32[N,1,2]
    return %sn, %y
  }, num_scan_inputs = 1, scan_output_axes = [1]} : f32[N,2], f32[N,T,1,2]
  return %s, %ys
}""")


def test_weights_type_their_operands():
    # a Reshape to a run-time shape gives rank 3 only; the LSTM's W, the Conv's W and MatMul's B give the rest
    assert_golden("infer-shapes", """
graph @g(%x: f32[?], %shape: i64[3], %w: f32[1,8,3], %r: f32[1,8,2], %k: f32[4,3,1], %b: f32[3,5]) -> (%y: ?, %z: ?, %p: ?) {
  %xr = onnx.Reshape(%x, %shape)
  %y, %yh = onnx.LSTM(%xr, %w, %r) {hidden_size = 2}
  %z = onnx.Conv(%xr, %k)
  %p = onnx.MatMul(%xr, %b)
  return %y, %z, %p
}""", """
graph @g(%x: f32[?], %shape: i64[3], %w: f32[1,8,3], %r: f32[1,8,2], %k: f32[4,3,1], %b: f32[3,5]) -> (%y: f32[unk__0,1,unk__1,2], %z: f32[unk__0,4,3], %p: f32[unk__0,3,5]) {
  %xr = onnx.Reshape(%x, %shape) : f32[unk__0,3,3]
  %y, %yh = onnx.LSTM(%xr, %w, %r) {hidden_size = 2} : f32[unk__0,1,unk__1,2], f32[1,unk__1,2]
  %z = onnx.Conv(%xr, %k) : f32[unk__0,4,3]
  %p = onnx.MatMul(%xr, %b) : f32[unk__0,3,5]
  return %y, %z, %p
}""")


def test_shape_values_computed_outside_reach_the_body():
    # data propagation stops at a body's edge in ONNX (the Reshape gets rank 2 only); mdoc carries Shape(%x) in
    assert_golden("infer-shapes", """
graph @g(%c: bool[], %x: f32[3,4], %z: f32[12]) -> (%y: ?) {
  %s = onnx.Shape(%x)
  %y = onnx.If(%c) {else_branch = graph @e() -> (?) {
    %n = onnx.Neg(%x)
    return %n
  }, then_branch = graph @t() -> (?) {
    %r = onnx.Reshape(%z, %s)
    return %r
  }}
  return %y
}""", """
graph @g(%c: bool[], %x: f32[3,4], %z: f32[12]) -> (%y: f32[3,4]) {
  %s = onnx.Shape(%x) : i64[2]
  %y = onnx.If(%c) {else_branch = graph @e() -> (%n: f32[3,4]) {
    %n = onnx.Neg(%x) : f32[3,4]
    return %n
  }, then_branch = graph @t() -> (%r: f32[3,4]) {
    %r = onnx.Reshape(%z, %s) : f32[3,4]
    return %r
  }} : f32[3,4]
  return %y
}""")


def test_scoped_inference_is_idempotent_and_honest():
    from mdoc.parser import parse_model
    from mdoc.scoped_inference import refine_types

    model = parse_model("""
graph @g(%n: i64[], %h0: f32[N,2], %a0: f32[0,2], %x: f32[N,2], %w: f32[2,2]) -> (%h: ?, %a: ?) {
  %h, %a = onnx.Loop(%n, none, %h0, %a0) {body = graph @step(%i: ?, %cond: ?, %hc: ?, %ac: ?) -> (?, ?, ?) {
    %m = onnx.MatMul(%hc, %w)
    %an = onnx.Concat(%ac, %x) {axis = 0}
    return %cond, %m, %an
  }}
  return %h, %a
}""")
    assert refine_types(model)
    assert not refine_types(model)  # nothing left to add
    body = model.graph.nodes()[0].attrs["body"]
    assert [str(v.type) for v in body.inputs] == ["i64[]", "bool[]", "f32[N,2]", "f32[?,2]"]


def test_join():
    from mdoc.scoped_inference import join

    f = DType.F32
    assert join(TensorType(f, (2, "N")), TensorType(f, (3, "N"))) == TensorType(f, (None, "N"))
    assert join(TensorType(f, (2,)), TensorType(f, (2, 1))) == TensorType(f, None)
    assert join(TensorType(f, (2,)), TensorType(DType.I64, (2,))) == UNKNOWN
    assert join(UNKNOWN, TensorType(f, (2,))) == UNKNOWN
