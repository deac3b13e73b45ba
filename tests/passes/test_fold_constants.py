"""fold-constants and the numpy evaluator: golden IR, the byte budget, what never folds, exact dtypes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from conftest import LIGHT_DIR
from mdoc.evaluator import try_fold
from mdoc.ir import Graph, Model
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS
from mdoc.reference import run_onnxruntime
from mdoc.stats import model_stats
from mdoc.types import DType, TensorType
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of, drawer, random_model


def test_shape_subgraph_of_static_value_folds():
    assert_golden("fold-constants", """
graph @g(%x: f32[2,3,4]) -> (%y: f32[2,12]) {
  %shape = onnx.Shape(%x) : i64[3]
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %n = onnx.Gather(%shape, %i0) {axis = 0} : i64[]
  %axes = onnx.Constant() {value = dense<[0]>} : i64[1]
  %n1 = onnx.Unsqueeze(%n, %axes) : i64[1]
  %rest = onnx.Constant() {value = dense<[-1]>} : i64[1]
  %target = onnx.Concat(%n1, %rest) {axis = 0} : i64[2]
  %y = onnx.Reshape(%x, %target) : f32[2,12]
  return %y
}""", """
graph @g(%x: f32[2,3,4]) -> (%y: f32[2,12]) {
  %target = onnx.Constant() {value = dense<[2, -1]>} : i64[2]
  %y = onnx.Reshape(%x, %target) : f32[2,12]
  return %y
}""")


def test_known_dims_of_a_symbolic_shape_fold():
    assert_golden("fold-constants", """
graph @g(%x: f32[N,3,4]) -> (%y: i64[], %z: i64[2], %w: i64[]) {
  %shape = onnx.Shape(%x) : i64[3]
  %i1 = onnx.Constant() {value = dense<1>} : i64[]
  %y = onnx.Gather(%shape, %i1) {axis = 0} : i64[]
  %s = onnx.Constant() {value = dense<[-2]>} : i64[1]
  %e = onnx.Constant() {value = dense<[3]>} : i64[1]
  %z = onnx.Slice(%shape, %s, %e) : i64[2]
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %w = onnx.Gather(%shape, %i0) {axis = 0} : i64[]
  return %y, %z, %w
}""", """
graph @g(%x: f32[N,3,4]) -> (%y: i64[], %z: i64[2], %w: i64[]) {
  %shape = onnx.Shape(%x) : i64[3]
  %y = onnx.Constant() {value = dense<3>} : i64[]
  %z = onnx.Constant() {value = dense<[3, 4]>} : i64[2]
  %i0 = onnx.Constant() {value = dense<0>} : i64[]
  %w = onnx.Gather(%shape, %i0) {axis = 0} : i64[]
  return %y, %z, %w
}""")


def test_weight_preprocessing_folds_and_frees_its_inputs():
    assert_golden("fold-constants{max-bytes=0}", """
graph @g(%x: f32[2,3]) -> (%y: f32[2,2]) {
  %w = onnx.Constant() {value = dense<[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]>} : f32[2,3]
  %wt = onnx.Transpose(%w) {perm = [1, 0]} : f32[3,2]
  %half = onnx.Constant() {value = dense<0.5>} : f32[]
  %ws = onnx.Mul(%wt, %half) : f32[3,2]
  %y = onnx.MatMul(%x, %ws) : f32[2,2]
  return %y
}""", """
graph @g(%x: f32[2,3]) -> (%y: f32[2,2]) {
  %ws = onnx.Constant() {value = dense<[[0.5, 2.0], [1.0, 2.5], [1.5, 3.0]]>} : f32[3,2]
  %y = onnx.MatMul(%x, %ws) : f32[2,2]
  return %y
}""")


BLOWUP = """
graph @g(%x: f32[1000]) -> (%y: f32[1000], %z: f32[4,1000]) {
  %shape = onnx.Constant() {value = dense<[1000]>} : i64[1]
  %fill = onnx.ConstantOfShape(%shape) {value = dense<[0.5]> : f32[1]} : f32[1000]
  %y = onnx.Add(%x, %fill) : f32[1000]
  %rshape = onnx.Constant() {value = dense<[1, 1000]>} : i64[2]
  %row = onnx.Reshape(%fill, %rshape) : f32[1,1000]
  %reps = onnx.Constant() {value = dense<[4, 1]>} : i64[2]
  %z = onnx.Tile(%row, %reps) : f32[4,1000]
  return %y, %z
}"""


def _constant_bytes(model: Model) -> int:
    return model_stats(model).parameter_bytes


@pytest.mark.parametrize("budget", [0, 1024, 8000, 30000])
def test_budget_bounds_growth(budget):
    from mdoc.parser import parse_model

    model = parse_model(BLOWUP)
    before = _constant_bytes(model)
    apply(model, f"fold-constants{{max-bytes={budget}}}")
    grown = _constant_bytes(model) - before
    assert grown <= budget
    ops = sorted(n.op for n in model.graph if n.op != "onnx.Constant")
    if budget < 4000:  # the 1000 floats of ConstantOfShape do not fit: nothing downstream can fold either
        assert ops == ["onnx.Add", "onnx.ConstantOfShape", "onnx.Reshape", "onnx.Tile"]
    elif budget < 20000:  # the fill fits, the 16000-byte Tile does not
        assert ops == ["onnx.Add", "onnx.Tile"]
    else:
        assert ops == ["onnx.Add"]


def test_nothing_random_custom_or_with_a_body_folds():
    before = """
module {opset_imports = {"" = 17, "com.example" = 1}}
graph @g(%c: bool[]) -> (%r: f32[2], %u: f32[2], %k: f32[2], %i: f32[2], %d: f32[2]) {
  %s = onnx.Constant() {value = dense<[1.0, 2.0]>} : f32[2]
  %r = onnx.RandomNormalLike(%s) : f32[2]
  %u = onnx.RandomUniform() {shape = [2]} : f32[2]
  %k = com.example.Scale(%s) : f32[2]
  %t = onnx.Constant() {value = dense<true>} : bool[]
  %i = onnx.If(%t) {else_branch = graph @e() -> (f32[2]) {
    return %s
  }, then_branch = graph @t() -> (f32[2]) {
    %n = onnx.Neg(%s) : f32[2]
    return %n
  }} : f32[2]
  %ratio = onnx.Constant() {value = dense<0.5>} : f32[]
  %d = onnx.Dropout(%s, %ratio, %t) : f32[2]
  return %r, %u, %k, %i, %d
}"""
    # the Neg inside the then-branch folds (its operand is a constant), the nodes above do not
    model, changed = apply(before, "fold-constants")
    assert changed
    ops = [n.op for n in model.graph if n.op != "onnx.Constant"]
    assert ops == ["onnx.RandomNormalLike", "onnx.RandomUniform", "com.example.Scale", "onnx.If", "onnx.Dropout"]
    then = model.graph.nodes()[ops.index("onnx.If") + 2].attrs["then_branch"]
    assert [n.op for n in then] == ["onnx.Constant"]


def test_graph_output_folds_keep_their_names():
    assert_golden("fold-constants", """
graph @g() -> (%out: i64[2]) {
  %a = onnx.Constant() {value = dense<[1, 2]>} : i64[2]
  %b = onnx.Constant() {value = dense<[10, 20]>} : i64[2]
  %out = onnx.Add(%a, %b) : i64[2]
  return %out
}""", """
graph @g() -> (%out: i64[2]) {
  %out = onnx.Constant() {value = dense<[11, 22]>} : i64[2]
  return %out
}""")


# -- the evaluator agrees with onnxruntime, element types included ------------------------
def _one_node(op_type, inputs, attrs=None, opset=17, n_out=1):
    names = [f"i{k}" for k in range(len(inputs))]
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in zip(inputs, names)]
    node = helper.make_node(op_type, names, [f"o{k}" for k in range(n_out)], **(attrs or {}))
    graph = helper.make_graph([node], "one", [], [helper.make_value_info(f"o{k}", onnx.TypeProto())
                                                  for k in range(n_out)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


f32 = np.array([[1.5, -2.25, 3.0], [0.5, 4.0, -1.0]], np.float32)
i32 = np.array([[-7, 8, 9], [10, -11, 3]], np.int32)
CASES = [
    ("Add", [i32, np.array([2], np.int32)], {}),
    ("Div", [i32, np.array([2, -3, 4], np.int32)], {}),
    ("Div", [f32, np.array([2.0], np.float32)], {}),
    ("Pow", [f32, np.array([2], np.int64)], {}),
    ("Pow", [i32, np.array([2], np.int32)], {}),
    ("Mul", [np.array([200], np.uint8), np.array([3], np.uint8)], {}),
    ("Sqrt", [np.abs(f32)], {}),
    ("Sigmoid", [f32.astype(np.float16)], {}),
    ("Equal", [i32, np.array([9], np.int32)], {}),
    ("Where", [f32 > 0, f32, np.zeros_like(f32)], {}),
    ("Cast", [f32], {"to": TensorProto.INT32}),
    ("Cast", [f32], {"to": TensorProto.FLOAT16}),
    ("Cast", [i32], {"to": TensorProto.BOOL}),
    ("Shape", [f32], {}),
    ("Shape", [f32], {"start": -1}),
    ("Size", [f32], {}),
    ("Gather", [np.array([4, 5, 6], np.int64), np.array(-1, np.int64)], {}),
    ("Gather", [f32, np.array([[1, 0]], np.int64)], {"axis": 1}),
    ("Slice", [np.arange(10, dtype=np.int64), np.array([8], np.int64), np.array([-100], np.int64),
               np.array([0], np.int64), np.array([-3], np.int64)], {}),
    ("Slice", [f32, np.array([1], np.int64), np.array([2**63 - 1], np.int64), np.array([1], np.int64)], {}),
    ("Concat", [np.array([1], np.int64), np.array([2, 3], np.int64)], {"axis": 0}),
    ("Unsqueeze", [np.array(3, np.int64), np.array([0], np.int64)], {}),
    ("Squeeze", [np.ones((1, 3, 1), np.float32), np.array([-1], np.int64)], {}),
    ("Reshape", [f32, np.array([0, -1, 1], np.int64)], {}),
    ("Transpose", [f32], {}),
    ("Expand", [np.array([[1], [2]], np.int32), np.array([2, 3], np.int64)], {}),
    ("Tile", [f32, np.array([2, 1], np.int64)], {}),
    ("ConstantOfShape", [np.array([2, 3], np.int64)], {"value": helper.make_tensor("v", TensorProto.INT32, [1], [7])}),
    ("ConstantOfShape", [np.array([2], np.int64)], {}),
    ("Range", [np.array(1, np.int32), np.array(10, np.int32), np.array(3, np.int32)], {}),
    ("Range", [np.array(0.0, np.float32), np.array(1.0, np.float32), np.array(0.25, np.float32)], {}),
    ("ReduceSum", [i32, np.array([1], np.int64)], {"keepdims": 0}),
    ("ReduceProd", [f32], {"keepdims": 1}),
    ("ReduceMax", [i32], {"axes": [0]}),
    ("MatMul", [f32, f32.T.copy()], {}),
    ("Gemm", [f32, f32, np.array([1.0, 2.0], np.float32)], {"transB": 1, "alpha": 0.5}),
    ("Clip", [f32, np.array(-1.0, np.float32), np.array(2.0, np.float32)], {}),
    ("Max", [i32, np.array([0], np.int32), np.array([[5], [6]], np.int32)], {}),
    ("Mean", [f32, f32 * 2], {}),
    ("Not", [f32 > 1], {}),
    ("Erf", [f32], {}),                     # no hand kernel: the reference evaluator
    ("Softmax", [f32], {"axis": 1}),        # no hand kernel: the reference evaluator
    ("CumSum", [i32, np.array(1, np.int64)], {}),
]


@pytest.mark.parametrize("op,inputs,attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_evaluator_matches_onnxruntime(op, inputs, attrs):
    proto = _one_node(op, inputs, attrs)
    want = run_onnxruntime(proto, {})["o0"]
    model = import_model(proto)
    node = next(n for n in model.graph if n.op != "onnx.Constant")
    got = try_fold(node, model.opset)
    assert got is not None, f"{op} did not fold"
    assert got[0].dtype == want.dtype and got[0].shape == want.shape
    np.testing.assert_allclose(got[0].astype(np.float64), want.astype(np.float64), rtol=1e-6, atol=1e-7)


def test_evaluator_casts_to_types_numpy_lacks():
    g = Graph()
    x = g.constant(np.array([1.5, -2.5, 1e30], np.float32))
    got = try_fold(g.add("onnx.Cast", [x], {"to": TensorProto.BFLOAT16}), 17)
    assert got is not None and DType.from_numpy(got[0].dtype) is DType.BF16
    assert got[0].astype(np.float32)[:2].tolist() == [1.5, -2.5]


def test_evaluator_refuses_what_it_must_not_guess():
    g = Graph()
    three = g.constant(np.array([3], np.int32))
    zero = g.constant(np.array([0], np.int32))
    nan = g.constant(np.array([np.nan], np.float32))
    assert try_fold(g.add("onnx.Div", [three, zero]), 17) is None      # integer division by zero
    assert try_fold(g.add("onnx.Cast", [nan], {"to": TensorProto.INT32}), 17) is None  # undefined in ONNX
    idx = g.constant(np.array(5, np.int64))
    assert try_fold(g.add("onnx.Gather", [three, idx]), 17) is None    # out of range
    x = g.add_input(TensorType(DType.F32, ("N", 3)), "x")
    assert try_fold(g.add("onnx.Shape", [x]), 17) is None              # symbolic dim


def test_light_model_under_o2_does_not_grow_and_keeps_its_outputs():
    from conftest import light_inputs

    path = os.path.join(LIGHT_DIR, "light_squeezenet.onnx")
    proto = onnx.load(path)
    model = import_model(proto)
    _, changed = apply(model, OPT_LEVELS[2])
    assert changed
    out = export_model(model)
    del out.graph.value_info[:]  # type annotations the input did not carry
    assert out.ByteSize() <= proto.ByteSize()
    assert any(n.op == "onnx.ConstantOfShape" for n in model.graph)  # 5 MB of weights stay generated
    assert_same_outputs(proto, model, light_inputs(proto))


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from([0, 64, 1 << 20]))
def test_properties_budget_and_numerics(data, budget):
    make = copies_of(lambda: random_model(drawer(data)))

    pipeline = f"fold-constants{{max-bytes={budget}}}"
    probe = make()
    before = _constant_bytes(probe)
    apply(probe, pipeline)
    assert _constant_bytes(probe) - before <= budget
    original, model = assert_properties(make, pipeline)
    assert_same_outputs(export_model(original), model)
