"""decompose-scan: Scans with a static iteration count unrolled, others a Loop, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mdoc.clone import clone_graph_into
from mdoc.errors import MdocError
from mdoc.ir import Graph
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, parse_pipeline
from mdoc.reference import compare_outputs, run_onnxruntime
from mdoc.types import DType, TensorType

F = TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_pass(proto, pipeline="decompose-scan"):
    m = import_model(proto)
    notes = []
    records = PassManager(parse_pipeline(pipeline), log=notes.append).run(m)  # verifies before and after
    return m, records[-1].changed, notes


def assert_unrolled(proto, feeds, pipeline="decompose-scan"):
    m, changed, _ = run_pass(proto, pipeline)
    assert changed
    assert not any(n.op in ("onnx.Scan", "onnx.Loop") for n in m.graph.walk())
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    want, got = run_onnxruntime(proto, feeds), run_onnxruntime(out, feeds)
    bad = [d for d in compare_outputs(want, got, rtol=1e-4, atol=1e-5) if not d.ok]
    assert not bad, bad
    return m


def cumsum_body(extra_nodes=(), scale=None):
    """state s [D], slice x [D] -> s + x (new state), s + x (scan output)."""
    nodes = [helper.make_node("Add", ["s", "x"], ["s_new"])]
    outs = [vi("s_new", [3]), vi("y", [3])]
    nodes.append(helper.make_node("Identity", ["s_new"], ["y"]))
    inits = []
    if scale is not None:  # a body constant and a captured outer value
        inits = [helper.make_tensor("k", F, [3], [1.0, 2.0, 3.0])]
        nodes[0] = helper.make_node("Add", ["s", "x"], ["t0"])
        nodes.insert(1, helper.make_node("Mul", ["t0", "k"], ["t1"]))
        nodes.insert(2, helper.make_node("Add", ["t1", scale], ["s_new"]))
    return helper.make_graph(list(extra_nodes) + nodes, "body", [vi("s", [3]), vi("x", [3])], outs, initializer=inits)


def cumsum_model(t=4, **attrs):
    scan = helper.make_node("Scan", ["s0", "X"], ["s_final", "Y"], body=cumsum_body(), num_scan_inputs=1, **attrs)
    return model([scan], [vi("s0", [3]), vi("X", [t, 3])], [vi("s_final", [3]), vi("Y", None)])


def feeds(t=4):
    rng = np.random.default_rng(0)
    return {"s0": rng.standard_normal(3).astype(np.float32), "X": rng.standard_normal((t, 3)).astype(np.float32)}


@pytest.mark.parametrize("t", [1, 2, 5])
def test_cumulative_sum(t):
    assert_unrolled(cumsum_model(t), feeds(t))


@pytest.mark.parametrize("attrs", [
    {"scan_input_directions": [1]},
    {"scan_output_directions": [1]},
    {"scan_input_directions": [1], "scan_output_directions": [1]},
    {"scan_output_axes": [1]},
    {"scan_output_axes": [-1]},
    {"scan_input_axes": [-2]},
])
def test_directions_and_axes(attrs):
    assert_unrolled(cumsum_model(3, **attrs), feeds(3))


def test_scan_axis_one_and_two_scan_inputs():
    body = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["s", "ab"], ["s2"]),
         helper.make_node("Neg", ["ab"], ["y"])],
        "body", [vi("s", [2]), vi("a", [2]), vi("b", [2])], [vi("s2", [2]), vi("y", [2])])
    scan = helper.make_node("Scan", ["s0", "A", "B"], ["s", "Y"], body=body, num_scan_inputs=2,
                            scan_input_axes=[1, 0], scan_input_directions=[0, 1])
    proto = model([scan], [vi("s0", [2]), vi("A", [2, 4]), vi("B", [4, 2])], [vi("s", [2]), vi("Y", None)])
    rng = np.random.default_rng(1)
    f = {"s0": rng.standard_normal(2).astype(np.float32), "A": rng.standard_normal((2, 4)).astype(np.float32),
         "B": rng.standard_normal((4, 2)).astype(np.float32)}
    assert_unrolled(proto, f)


def test_body_constants_are_copied_once_and_captures_stay():
    scan = helper.make_node("Scan", ["s0", "X"], ["s_final", "Y"], body=cumsum_body(scale="c"), num_scan_inputs=1)
    proto = model([scan], [vi("s0", [3]), vi("X", [4, 3]), vi("c", [3])], [vi("s_final", [3]), vi("Y", None)])
    f = feeds(4)
    f["c"] = np.array([0.5, -1.0, 2.0], np.float32)
    m = assert_unrolled(proto, f)
    weights = [n for n in m.graph if n.op == "onnx.Constant" and n.output.type == TensorType(DType.F32, (3,))]
    assert len(weights) == 1


def test_nested_scans_unroll_inside_out():
    inner = helper.make_node("Scan", ["s", "x"], ["s_new", "inner_y"], body=helper.make_graph(
        [helper.make_node("Add", ["u", "e"], ["u2"]), helper.make_node("Identity", ["u2"], ["z"])],
        "inner", [vi("u", []), vi("e", [])], [vi("u2", []), vi("z", [])]), num_scan_inputs=1)
    body = helper.make_graph([inner, helper.make_node("Identity", ["inner_y"], ["y"])], "outer",
                             [vi("s", []), vi("x", [3])], [vi("s_new", []), vi("y", [3])])
    scan = helper.make_node("Scan", ["s0", "X"], ["s", "Y"], body=body, num_scan_inputs=1)
    proto = model([scan], [vi("s0", []), vi("X", [2, 3])], [vi("s", []), vi("Y", None)])
    rng = np.random.default_rng(2)
    assert_unrolled(proto, {"s0": np.array(0.5, np.float32), "X": rng.standard_normal((2, 3)).astype(np.float32)})


def test_opset_11_spells_unsqueeze_with_attributes():
    proto = cumsum_model(3, scan_output_axes=[1])
    proto.opset_import[0].version = 11
    assert_unrolled(proto, feeds(3))


def assert_looped(proto, feeds_at, lengths=(1, 4)):
    """A Scan of a run-time length becomes an onnx.Loop; compared with onnxruntime at several lengths."""
    m, changed, _ = run_pass(proto)
    ops = [n.op for n in m.graph.walk()]
    assert changed and "onnx.Loop" in ops and "onnx.Scan" not in ops
    out = export_model(m)
    onnx.checker.check_model(out, full_check=True)
    for t in lengths:
        f = feeds_at(t)
        bad = [d for d in compare_outputs(run_onnxruntime(proto, f), run_onnxruntime(out, f), rtol=1e-4, atol=1e-5)
               if not d.ok]
        assert not bad, f"length {t}: {bad}"


@pytest.mark.parametrize("attrs", [
    {},
    {"scan_input_directions": [1]},
    {"scan_output_directions": [1]},
    {"scan_output_axes": [1]},
    {"scan_output_axes": [-1], "scan_input_directions": [1]},
    {"scan_input_axes": [-2]},
])
def test_symbolic_iteration_count_becomes_a_loop(attrs):
    scan = helper.make_node("Scan", ["s0", "X"], ["s_final", "Y"], body=cumsum_body(), num_scan_inputs=1,
                            name="sc", **attrs)
    proto = model([scan], [vi("s0", [3]), vi("X", ["T", 3])], [vi("s_final", [3]), vi("Y", None)])
    assert_looped(proto, feeds)


def test_looped_scan_axis_one_and_two_scan_inputs():
    body = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["s", "ab"], ["s2"]),
         helper.make_node("Neg", ["ab"], ["y"])],
        "body", [vi("s", [2]), vi("a", [2]), vi("b", [2])], [vi("s2", [2]), vi("y", [2])])
    scan = helper.make_node("Scan", ["s0", "A", "B"], ["s", "Y"], body=body, num_scan_inputs=2,
                            scan_input_axes=[1, 0], scan_input_directions=[0, 1])
    proto = model([scan], [vi("s0", [2]), vi("A", [2, "T"]), vi("B", ["T", 2])], [vi("s", [2]), vi("Y", None)])

    def feeds_at(t):
        rng = np.random.default_rng(t)
        return {"s0": rng.standard_normal(2).astype(np.float32), "A": rng.standard_normal((2, t)).astype(np.float32),
                "B": rng.standard_normal((t, 2)).astype(np.float32)}

    assert_looped(proto, feeds_at, lengths=(2, 5))


def test_looped_scan_compiles_for_any_length(tmp_path):
    """Through TVM: one artifact, run at three lengths (mdoc.compile would bind T to 1 today: build directly)."""
    pytest.importorskip("tvm")
    from mdoc.backends import get_backend, load_artifact
    from mdoc.pass_manager import pipeline_for_level

    scan = helper.make_node("Scan", ["s0", "X"], ["s_final", "Y"], body=cumsum_body(), num_scan_inputs=1,
                            scan_input_directions=[1], scan_output_axes=[1])
    proto = model([scan], [vi("s0", [3]), vi("X", ["T", 3])], [vi("s_final", [3]), vi("Y", None)])
    m = import_model(proto)
    PassManager(pipeline_for_level(2)).run(m)  # the backend's own passes run decompose-scan
    run = load_artifact(get_backend("tvm").compile(m, "x86", tmp_path / "art"))
    for t in (1, 4, 9):
        f = feeds(t)
        bad = [d for d in compare_outputs(run_onnxruntime(proto, f), run(**f)) if not d.ok]
        assert not bad, f"length {t}: {bad}"


def test_looped_scan_reversed_before_opset_11_stays():
    scan = helper.make_node("Scan", ["s0", "X"], ["s_final", "Y"], body=cumsum_body(), num_scan_inputs=1,
                            name="sc", scan_input_directions=[1])
    proto = model([scan], [vi("s0", [3]), vi("X", ["T", 3])], [vi("s_final", [3]), vi("Y", None)], opset=10)
    m, changed, notes = run_pass(proto)
    assert not changed and [n.op for n in m.graph] == ["onnx.Scan"]
    assert notes == ["decompose-scan: Scan node 'sc' stays: the number of iterations is known only at run time, "
                     "and reversing a scan input or output needs Range (opset 11); the model is opset 10"]


def test_more_iterations_than_the_limit_stay():
    m, changed, notes = run_pass(cumsum_model(5), "decompose-scan{max-iterations=4}")
    assert not changed and any("more than max-iterations=4" in n for n in notes)


def test_mismatched_scan_lengths_are_refused():
    body = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "body",
                             [vi("a", [2]), vi("b", [2])], [vi("y", [2])])
    scan = helper.make_node("Scan", ["A", "B"], ["Y"], body=body, num_scan_inputs=2, name="sc")
    proto = model([scan], [vi("A", [3, 2]), vi("B", [4, 2])], [vi("Y", None)])
    with pytest.raises(MdocError, match="decompose-scan: Scan node 'sc': scan inputs have 3 and 4 slices along"):
        run_pass(proto)


def test_clone_graph_into_needs_every_body_input_bound():
    body = Graph("body")
    x = body.add_input(TensorType(DType.F32, (2,)), "x")
    body.outputs.append(body.add("onnx.Neg", [x]).output)
    parent = Graph("main")
    with pytest.raises(MdocError, match=r"cannot clone body @body: its input %x is not bound to a value of graph"):
        clone_graph_into(body, parent, None, {})
    y = parent.add_input(TensorType(DType.F32, (2,)), "y")
    vm = {x: y}
    (out,) = clone_graph_into(body, parent, None, vm)
    assert out.producer().op == "onnx.Neg" and out.producer().inputs == (y,) and vm[body.outputs[0]] is out


def test_opset_8_scan_stays():
    body = cumsum_body()
    scan = helper.make_node("Scan", ["", "s0", "X"], ["s_final", "Y"], body=body, num_scan_inputs=1, name="sc")
    proto = model([scan], [vi("s0", [1, 3]), vi("X", [1, 4, 3])], [vi("s_final", [1, 3]), vi("Y", None)], opset=8)
    m, changed, notes = run_pass(proto)
    assert not changed and [n.op for n in m.graph] == ["onnx.Scan"]
    assert notes == ["decompose-scan: Scan node 'sc' stays: opset 8 Scan (with a batch axis and sequence_lens) "
                     "is not unrolled; use opset 9 or later"]
