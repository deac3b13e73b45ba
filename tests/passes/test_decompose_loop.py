"""decompose-loop: Loops with a constant trip count and an always-true condition unrolled; data-dependent ones stay."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, parse_pipeline
from mdoc.reference import compare_outputs, run_onnxruntime

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, value, elem):
    arr = np.asarray(value)
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, elem, arr.shape, arr.reshape(-1)))


def model(nodes, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_pass(proto, pipeline="decompose-loop"):
    m = import_model(proto)
    notes = []
    records = PassManager(parse_pipeline(pipeline), log=notes.append).run(m)  # verifies before and after
    return m, any(r.changed for r in records), notes


def assert_unrolled(proto, feeds, pipeline="decompose-loop"):
    m, changed, _ = run_pass(proto, pipeline)
    assert changed
    assert not any(n.op in ("onnx.Loop", "onnx.Scan") for n in m.graph.walk())
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    want, got = run_onnxruntime(proto, feeds), run_onnxruntime(out, feeds)
    assert set(want) == set(got)
    bad = [d for d in compare_outputs(want, got, rtol=1e-4, atol=1e-5) if not d.ok]
    assert not bad, bad
    return m


def body(cond_out="cond_in", extra=()):
    """acc' = acc + x * i; scan output acc' * 2 (and cond_out as the condition)."""
    nodes = [
        helper.make_node("Cast", ["i"], ["fi"], to=F),
        helper.make_node("Mul", ["x", "fi"], ["xi"]),
        helper.make_node("Add", ["acc", "xi"], ["acc2"]),
        const("two", 2.0, F),
        helper.make_node("Mul", ["acc2", "two"], ["y"]),
        *extra,
    ]
    return helper.make_graph(nodes, "body", [vi("i", [], I64), vi("cond_in", [], BOOL), vi("acc", [3])],
                             [vi(cond_out, [], BOOL), vi("acc2", [3]), vi("y", [3])])


def loop_model(trip=4, cond=True, cond_out="cond_in", extra=(), opset=17, trip_input=False, name="L"):
    nodes = [] if trip_input else [const("M", trip, I64)]
    if cond is not None:
        nodes.append(const("c", cond, BOOL))
    nodes.append(helper.make_node("Loop", ["M", "c" if cond is not None else "", "acc0"], ["acc", "ys"],
                                  body=body(cond_out, extra), name=name))
    inputs = [vi("acc0", [3]), vi("x", [3])] + ([vi("M", [], I64)] if trip_input else [])
    return model(nodes, inputs, [vi("acc", [3]), vi("ys", None)], opset)


def feeds():
    rng = np.random.default_rng(0)
    return {"acc0": rng.standard_normal(3).astype(np.float32), "x": rng.standard_normal(3).astype(np.float32)}


@pytest.mark.parametrize("trip", [1, 2, 5])
def test_constant_trip_count_with_scan_outputs(trip):
    assert_unrolled(loop_model(trip), feeds())


def test_condition_absent():
    assert_unrolled(loop_model(3, cond=None), feeds())


def test_body_condition_constant_true():
    assert_unrolled(loop_model(3, cond_out="t", extra=[const("t", True, BOOL)]), feeds())


def test_body_condition_identity_of_its_input():
    assert_unrolled(loop_model(3, cond_out="t", extra=[helper.make_node("Identity", ["cond_in"], ["t"])]), feeds())


def test_one_iteration_with_a_computed_condition():
    extra = [helper.make_node("ReduceSum", ["acc2"], ["s"], keepdims=0), const("zero", 0.0, F),
             helper.make_node("Less", ["s", "zero"], ["t"])]
    assert_unrolled(loop_model(1, cond_out="t", extra=extra), feeds())


def test_opset_11_unsqueezes_with_attributes():
    assert_unrolled(loop_model(3, opset=11), feeds())


def test_zero_iterations_without_scan_outputs_return_the_initial_values():
    b = helper.make_graph([helper.make_node("Neg", ["acc"], ["acc2"])], "body",
                          [vi("i", [], I64), vi("cond_in", [], BOOL), vi("acc", [3])],
                          [vi("cond_in", [], BOOL), vi("acc2", [3])])
    nodes = [const("M", 5, I64), const("c", False, BOOL), helper.make_node("Loop", ["M", "c", "acc0"], ["acc"], body=b)]
    proto = model(nodes, [vi("acc0", [3])], [vi("acc", [3])])
    m = assert_unrolled(proto, {"acc0": np.ones(3, np.float32)})
    assert [n.op for n in m.graph] == ["onnx.Identity"]  # the output keeps its name, the input its own
    assert export_model(m).graph.output[0].name == "acc"


def test_nested_loop_and_captured_outer_values():
    inner = helper.make_node("Loop", ["M2", "", "acc"], ["acc_in"], body=helper.make_graph(
        [helper.make_node("Add", ["u", "x"], ["u2"])], "inner",
        [vi("j", [], I64), vi("ci", [], BOOL), vi("u", [3])], [vi("ci", [], BOOL), vi("u2", [3])]))
    outer_body = helper.make_graph(
        [const("M2", 2, I64), inner, helper.make_node("Mul", ["acc_in", "x"], ["acc2"])], "outer",
        [vi("i", [], I64), vi("cond_in", [], BOOL), vi("acc", [3])], [vi("cond_in", [], BOOL), vi("acc2", [3])])
    nodes = [const("M", 3, I64), helper.make_node("Loop", ["M", "", "acc0"], ["acc"], body=outer_body)]
    proto = model(nodes, [vi("acc0", [3]), vi("x", [3])], [vi("acc", [3])])
    assert_unrolled(proto, feeds())


def test_scan_and_loop_and_if_together():
    """A Loop whose body holds a Scan and an If on a constant: the three passes leave plain ops."""
    scan_body = helper.make_graph([helper.make_node("Add", ["s", "e"], ["s2"])], "sb",
                                  [vi("s", []), vi("e", [])], [vi("s2", [])])
    then = helper.make_graph([helper.make_node("Neg", ["acc"], ["n"])], "then", [], [vi("n", [3])])
    other = helper.make_graph([helper.make_node("Abs", ["acc"], ["a"])], "else", [], [vi("a", [3])])
    b = helper.make_graph(
        [const("z", 0.0, F), helper.make_node("Scan", ["z", "acc"], ["tot"], body=scan_body, num_scan_inputs=1),
         const("k", True, BOOL), helper.make_node("If", ["k"], ["branch"], then_branch=then, else_branch=other),
         helper.make_node("Add", ["branch", "tot"], ["acc2"])],
        "body", [vi("i", [], I64), vi("cond_in", [], BOOL), vi("acc", [3])], [vi("cond_in", [], BOOL), vi("acc2", [3])])
    nodes = [const("M", 3, I64), helper.make_node("Loop", ["M", "", "acc0"], ["acc"], body=b)]
    proto = model(nodes, [vi("acc0", [3])], [vi("acc", [3])])
    m = assert_unrolled(proto, {"acc0": np.array([1.0, -2.0, 0.5], np.float32)},
                       "fold-if,decompose-scan,decompose-loop")
    assert not any(n.op == "onnx.If" for n in m.graph.walk())


@pytest.mark.parametrize("proto,why", [
    (loop_model(3, trip_input=True), "its trip count is computed at run time"),
    (loop_model(3, cond_out="t", extra=[helper.make_node("Not", ["cond_in"], ["t"])]),
     "the body computes its condition output (the loop may stop early)"),
    (loop_model(0), "it runs 0 iterations and has scan outputs (empty tensors of unknown shape)"),
])
def test_data_dependent_loops_stay(proto, why):
    m, changed, notes = run_pass(proto)
    assert not changed
    assert sum(n.op == "onnx.Loop" for n in m.graph) == 1
    assert notes == [f"decompose-loop: Loop node 'L' stays: {why}"]


def test_while_loop_stays():
    nodes = [helper.make_node("Loop", ["", "c0", "acc0"], ["acc", "ys"], body=body(), name="L")]
    proto = model(nodes, [vi("acc0", [3]), vi("x", [3]), vi("c0", [], BOOL)], [vi("acc", [3]), vi("ys", None)])
    m, changed, notes = run_pass(proto)
    assert not changed and notes == ["decompose-loop: Loop node 'L' stays: it has no trip count (a while loop)"]


def test_condition_input_computed_at_run_time_stays():
    nodes = [const("M", 2, I64), helper.make_node("Loop", ["M", "c0", "acc0"], ["acc", "ys"], body=body(), name="L")]
    proto = model(nodes, [vi("acc0", [3]), vi("x", [3]), vi("c0", [], BOOL)], [vi("acc", [3]), vi("ys", None)])
    _, changed, notes = run_pass(proto)
    assert not changed and notes == ["decompose-loop: Loop node 'L' stays: its condition is computed at run time"]


def test_more_iterations_than_the_limit_stay():
    _, changed, notes = run_pass(loop_model(9), "decompose-loop{max-iterations=8}")
    assert not changed
    assert notes == ["decompose-loop: Loop node 'L' stays: it runs 9 iterations, more than max-iterations=8"]
