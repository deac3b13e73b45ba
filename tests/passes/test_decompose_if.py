"""fold-if: an If on a constant condition becomes its taken branch; an If on a run-time condition stays."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, parse_pipeline
from mdoc.reference import compare_outputs, run_onnxruntime
from pass_testing import assert_golden, assert_properties

F, BOOL = TensorProto.FLOAT, TensorProto.BOOL


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, value, elem):
    arr = np.asarray(value)
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, elem, arr.shape, arr.reshape(-1)))


def if_model(cond, then_nodes, then_out, else_nodes, else_out, extra_outputs=(), cond_input=False):
    then = helper.make_graph(then_nodes, "then", [], [vi(o, [3]) for o in then_out])
    other = helper.make_graph(else_nodes, "else", [], [vi(o, [3]) for o in else_out])
    nodes = [] if cond_input else [const("c", cond, BOOL)]
    nodes.append(helper.make_node("If", ["c"], ["r%d" % i for i in range(len(then_out))], name="if",
                                  then_branch=then, else_branch=other))
    inputs = [vi("x", [3])] + ([vi("c", [], BOOL)] if cond_input else [])
    outputs = [vi("r%d" % i, [3]) for i in range(len(then_out))] + [vi(o, [3]) for o in extra_outputs]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_pass(proto):
    m = import_model(proto)
    records = PassManager(parse_pipeline("fold-if")).run(m)  # verifies before and after
    return m, records[0].changed


def assert_folded(proto, feeds):
    m, changed = run_pass(proto)
    assert changed and not any(n.op == "onnx.If" for n in m.graph.walk())
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    want, got = run_onnxruntime(proto, feeds), run_onnxruntime(out, feeds)
    assert list(want) == list(got)
    assert all(d.ok for d in compare_outputs(want, got)), compare_outputs(want, got)
    return m


X = {"x": np.array([1.0, -2.0, 3.0], np.float32)}


@pytest.mark.parametrize("cond", [True, False])
def test_constant_condition_takes_its_branch(cond):
    m = assert_folded(if_model(cond, [helper.make_node("Neg", ["x"], ["n"])], ["n"],
                               [helper.make_node("Abs", ["x"], ["a"])], ["a"]), X)
    assert [n.op for n in m.graph] == (["onnx.Neg"] if cond else ["onnx.Abs"])


def test_branch_returning_an_outer_input_keeps_the_output_name():
    # onnxruntime refuses a branch that returns an outer value, so numpy is the reference here
    m, changed = run_pass(if_model(True, [], ["x", "x"], [helper.make_node("Abs", ["x"], ["a"])], ["a", "a"]))
    assert changed and [n.op for n in m.graph] == ["onnx.Identity", "onnx.Identity"]
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    got = run_onnxruntime(out, X)
    assert list(got) == ["r0", "r1"] and all(np.array_equal(v, X["x"]) for v in got.values())


def test_branch_constants_and_nested_if():
    inner = helper.make_node("If", ["k"], ["v"], then_branch=helper.make_graph(
        [const("w", [1.0, 2.0, 3.0], F), helper.make_node("Mul", ["x", "w"], ["m"])], "t2", [], [vi("m", [3])]),
        else_branch=helper.make_graph([helper.make_node("Neg", ["x"], ["q"])], "e2", [], [vi("q", [3])]))
    m = assert_folded(if_model(False, [helper.make_node("Neg", ["x"], ["n"])], ["n"],
                               [const("k", True, BOOL), inner], ["v"]), X)
    assert [n.op for n in m.graph] == ["onnx.Constant", "onnx.Mul"]


def test_run_time_condition_stays():
    proto = if_model(None, [helper.make_node("Neg", ["x"], ["n"])], ["n"],
                     [helper.make_node("Abs", ["x"], ["a"])], ["a"], cond_input=True)
    m, changed = run_pass(proto)
    assert not changed and [n.op for n in m.graph] == ["onnx.If"]


def test_golden_and_properties():
    before = """
graph @g(%x: f32[2]) -> (%y: f32[2]) {
  %c = onnx.Constant() {value = dense<true>} : bool[]
  %y = onnx.If(%c) {else_branch = graph @else() -> (f32[2]) {
    return %x
  }, then_branch = graph @then() -> (f32[2]) {
    %r = onnx.Relu(%x) : f32[2]
    return %r
  }} : f32[2]
  return %y
}"""
    assert_golden("fold-if", before, """
graph @g(%x: f32[2]) -> (%y: f32[2]) {
  %y = onnx.Relu(%x) : f32[2] from("fold-if")
  return %y
}""")
    from mdoc.parser import parse_model
    assert_properties(lambda: parse_model(before), "fold-if")
