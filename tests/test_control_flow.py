"""If and Loop with run-time conditions and trip counts, compiled for x86 and checked against onnxruntime.

Each model is compiled once (through `mdoc.compile`, so the TVM backend's
prepare pipeline runs first) and fed several inputs that take different paths
through one artifact: both branches of an If, different trip counts, a loop
that stops early on its condition, a loop that never runs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

import mdoc  # noqa: E402
from mdoc.errors import MdocError  # noqa: E402
from mdoc.onnx_import import import_model  # noqa: E402

F, I64, B = TP.FLOAT, TP.INT64, TP.BOOL


def vi(name, elem, shape):
    return h.make_tensor_value_info(name, elem, shape)


def graph(nodes, name, inputs, outputs, inits=()):
    return h.make_graph(nodes, name, inputs, outputs, initializer=list(inits))


def make(nodes, inputs, outputs, inits=(), full_check=True) -> onnx.ModelProto:
    m = h.make_model(graph(nodes, "g", inputs, outputs, inits), opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=full_check)
    return m


def compiled(model: onnx.ModelProto, tmp_path):
    return mdoc.load(mdoc.compile(import_model(model), "x86", tmp_path / "artifact"))


def check(run, model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    got = list(run(**feeds).values())
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-4)
    return got


X = np.array([1.5, -2.0, 3.0, -4.0], np.float32)


def _nested_if_model() -> onnx.ModelProto:
    """y = relu(c ? x + x : (c2 ? -x * w : concat(x, x)[::2] ... )): captured x and an initializer w,
    an inner If in the else branch, and a then branch with its own Constant."""
    w = h.make_tensor("w", F, [4], [0.5, 1.0, -1.0, 2.0])
    then_g = graph([h.make_node("Constant", [], ["k"], value=h.make_tensor("kv", F, [], [3.0])),
                    h.make_node("Add", ["x", "x"], ["t0"]), h.make_node("Mul", ["t0", "k"], ["t"])],
                   "then", [], [vi("t", F, [4])])
    inner_then = graph([h.make_node("Neg", ["x"], ["n"]), h.make_node("Mul", ["n", "w"], ["it"])],
                       "inner_then", [], [vi("it", F, [4])])
    inner_else = graph([h.make_node("Mul", ["x", "x"], ["ie"])], "inner_else", [], [vi("ie", F, [4])])
    else_g = graph([h.make_node("If", ["c2"], ["e"], then_branch=inner_then, else_branch=inner_else)],
                   "else", [], [vi("e", F, [4])])
    return make([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
                 h.make_node("Relu", ["y"], ["z"])],
                [vi("x", F, [4]), vi("c", B, []), vi("c2", B, [1])], [vi("z", F, [4])], [w])


def test_if_with_runtime_condition_takes_both_branches_and_nests(tmp_path):
    model = _nested_if_model()
    run = compiled(model, tmp_path)
    results = [check(run, model, {"x": X, "c": np.array(c), "c2": np.array([c2])})[0]
               for c, c2 in [(True, False), (False, True), (False, False)]]
    assert not np.allclose(results[0], results[1]) and not np.allclose(results[1], results[2])


def test_if_branches_of_different_shapes_get_a_symbolic_shape(tmp_path):
    """then: x (4 elements); else: Concat(x, x) (8): the If's result has a run-time length."""
    then_g = graph([h.make_node("Identity", ["x"], ["t"])], "then", [], [vi("t", F, [4])])
    else_g = graph([h.make_node("Concat", ["x", "x"], ["e"], axis=0)], "else", [], [vi("e", F, [8])])
    model = make([h.make_node("Greater", ["s", "zero"], ["c"]),
                  h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
                  h.make_node("Sigmoid", ["y"], ["z"])],
                 [vi("x", F, [4]), vi("s", F, [])], [vi("z", F, ["n"])],
                 [h.make_tensor("zero", F, [], [0.0])])
    run = compiled(model, tmp_path)
    assert check(run, model, {"x": X, "s": np.array(1.0, np.float32)})[0].shape == (4,)
    assert check(run, model, {"x": X, "s": np.array(-1.0, np.float32)})[0].shape == (8,)


def test_if_branches_of_different_ranks_are_refused(tmp_path):
    then_g = graph([h.make_node("Identity", ["x"], ["t"])], "then", [], [vi("t", F, [4])])
    else_g = graph([h.make_node("Unsqueeze", ["x", "ax"], ["e"])], "else", [], [vi("e", F, [1, 4])])
    model = make([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="pick")],
                 [vi("x", F, [4]), vi("c", B, [])], [vi("y", F, ["r"])],
                 [h.make_tensor("ax", I64, [1], [0])], full_check=False)  # ONNX's inference refuses it too
    with pytest.raises(MdocError, match=r"onnx.If \(node 'pick'\): output 0 is float32 of rank 1 in "
                                        r"then_branch but float32 of rank 2 in else_branch"):
        compiled(model, tmp_path)


def _loop_model(with_if: bool = False) -> onnx.ModelProto:
    """Loop(M, c0, v0): v = v * w + i (w captured); stop once sum(v) >= limit; scan out each v.

    With `with_if`, the body's update goes through an If on the iteration number's parity.
    """
    update = [h.make_node("Mul", ["v_in", "w"], ["v1"]), h.make_node("Cast", ["i"], ["fi"], to=F),
              h.make_node("Add", ["v1", "fi"], ["v_upd"])]
    if with_if:
        even = graph([h.make_node("Identity", ["v_upd"], ["a"])], "even", [], [vi("a", F, [3])])
        odd = graph([h.make_node("Sub", ["v_upd", "v_in"], ["b"])], "odd", [], [vi("b", F, [3])])
        update += [h.make_node("Mod", ["i", "two"], ["par"]), h.make_node("Equal", ["par", "zero_i"], ["is_even"]),
                   h.make_node("If", ["is_even"], ["v_out"], then_branch=even, else_branch=odd)]
    else:
        update += [h.make_node("Identity", ["v_upd"], ["v_out"])]
    body = graph(update + [h.make_node("ReduceSum", ["v_out"], ["s"], keepdims=0),
                           h.make_node("Less", ["s", "limit"], ["c_out"]),
                           h.make_node("Identity", ["v_out"], ["scan"])],
                 "body", [vi("i", I64, []), vi("c_in", B, []), vi("v_in", F, [3])],
                 [vi("c_out", B, []), vi("v_out", F, [3]), vi("scan", F, [3])])
    inits = [h.make_tensor("two", I64, [], [2]), h.make_tensor("zero_i", I64, [], [0])] if with_if else []
    return make([h.make_node("Loop", ["M", "c0", "v0"], ["v", "scans"], body=body)],
                [vi("M", I64, []), vi("c0", B, []), vi("v0", F, [3]), vi("w", F, [3]), vi("limit", F, [])],
                [vi("v", F, [3]), vi("scans", F, ["n", 3])], inits)


def _loop_feeds(m: int, limit: float = 1e9, c0: bool = True) -> dict:
    return {"M": np.array(m, np.int64), "c0": np.array(c0), "v0": np.array([1.0, 2.0, 3.0], np.float32),
            "w": np.array([1.0, 0.5, 1.25], np.float32), "limit": np.array(limit, np.float32)}


def test_loop_with_runtime_trip_count_and_early_stop(tmp_path):
    model = _loop_model()
    run = compiled(model, tmp_path)
    assert check(run, model, _loop_feeds(5))[1].shape == (5, 3)
    assert check(run, model, _loop_feeds(2))[1].shape == (2, 3)  # another count, same artifact
    assert check(run, model, _loop_feeds(100, limit=50.0))[1].shape[0] < 10  # the condition stops it
    assert check(run, model, _loop_feeds(3, c0=False))[1].shape == (0, 3)  # never runs
    assert check(run, model, _loop_feeds(0))[1].shape == (0, 3)


def test_if_inside_a_loop(tmp_path):
    model = _loop_model(with_if=True)
    run = compiled(model, tmp_path)
    for m in (1, 4, 7):
        assert check(run, model, _loop_feeds(m))[1].shape == (m, 3)


def test_while_loop_without_trip_count_grows_a_carried_value(tmp_path):
    """Loop('', c0, v0): v = Concat(v, max(v) * 2) while that maximum < limit: the carried
    value changes shape every iteration."""
    body = graph([h.make_node("ReduceMax", ["v_in"], ["last"], keepdims=1),
                  h.make_node("Mul", ["last", "two"], ["next"]),
                  h.make_node("Concat", ["v_in", "next"], ["v_out"], axis=0),
                  h.make_node("ReduceMax", ["next"], ["mx"], keepdims=0),
                  h.make_node("Less", ["mx", "limit"], ["c_out"])],
                 "body", [vi("i", I64, []), vi("c_in", B, []), vi("v_in", F, ["k"])],
                 [vi("c_out", B, []), vi("v_out", F, ["k1"])])
    model = make([h.make_node("Loop", ["", "c0", "v0"], ["v"], body=body)],
                 [vi("c0", B, []), vi("v0", F, [2]), vi("limit", F, [])], [vi("v", F, ["n"])],
                 [h.make_tensor("two", F, [], [2.0])])
    run = compiled(model, tmp_path)
    for limit in (5.0, 100.0, 1e6):
        check(run, model, {"c0": np.array(True), "v0": np.array([1.0, 1.5], np.float32),
                           "limit": np.array(limit, np.float32)})


def test_long_loop_runs_in_blocks_not_one_call_per_iteration(tmp_path):
    """20000 iterations: a call per iteration would overflow the VM's C++ stack (it did at ~5000)."""
    body = graph([h.make_node("Add", ["v_in", "one"], ["v_out"]), h.make_node("Identity", ["c_in"], ["c_out"])],
                 "body", [vi("i", I64, []), vi("c_in", B, []), vi("v_in", F, [2])],
                 [vi("c_out", B, []), vi("v_out", F, [2])])
    model = make([h.make_node("Loop", ["M", "", "v0"], ["v"], body=body)],
                 [vi("M", I64, []), vi("v0", F, [2])], [vi("v", F, [2])], [h.make_tensor("one", F, [], [1.0])])
    run = compiled(model, tmp_path)
    for m in (20000, 1025, 1):
        got = check(run, model, {"M": np.array(m, np.int64), "v0": np.array([0.0, 0.5], np.float32)})[0]
        assert got[0] == m


def test_loop_body_slicing_by_the_iteration_number(tmp_path):
    """As onnx's test_loop11: the body slices a captured tensor at [i, i + 1) (a shape computed at run
    time, match-cast in the body's function) and scans out the running sum and each (scalar) element."""
    body = graph([h.make_node("Unsqueeze", ["i", "zero"], ["start"]), h.make_node("Add", ["start", "one"], ["end"]),
                  h.make_node("Slice", ["x", "start", "end"], ["xi"]), h.make_node("Add", ["v_in", "xi"], ["v_out"]),
                  h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Identity", ["v_out"], ["scan"]),
                  h.make_node("ReduceSum", ["xi"], ["scalar"], keepdims=0)],
                 "body", [vi("i", I64, []), vi("c_in", B, []), vi("v_in", F, [1])],
                 [vi("c_out", B, []), vi("v_out", F, [1]), vi("scan", F, [1]), vi("scalar", F, [])])
    model = make([h.make_node("Loop", ["M", "", "v0"], ["v", "sums", "xs"], body=body)],
                 [vi("M", I64, []), vi("v0", F, [1]), vi("x", F, [6])],
                 [vi("v", F, [1]), vi("sums", F, ["n", 1]), vi("xs", F, ["n"])],
                 [h.make_tensor("zero", I64, [1], [0]), h.make_tensor("one", I64, [1], [1])])
    run = compiled(model, tmp_path)
    for m in (6, 3):
        assert check(run, model, {"M": np.array(m, np.int64), "v0": np.array([0.5], np.float32),
                                  "x": np.arange(6, dtype=np.float32)})[1].shape == (m, 1)


def test_cuda_builds_with_a_loop_and_an_if_in_it(tmp_path):
    """The CUDA route (zero pipeline + dlight) takes the private functions too (run on a GPU by the lead)."""
    art = mdoc.compile(import_model(_loop_model(with_if=True)), "cuda", tmp_path / "loop.cuda", arch="sm_90",
                       show_progress=False)
    assert (art / "model.so").stat().st_size > 0


def test_untyped_body_scan_takes_its_element_shape_from_a_probe(tmp_path):
    """Range as ONNX's function expansion writes it: an untyped body (no shapes) whose scan output's
    element shape only the lowering learns."""
    body = graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Add", ["prev", "delta"], ["current"]),
                  h.make_node("Identity", ["prev"], ["item"])],
                 "body", [vi("i", I64, []), vi("c_in", B, []), h.make_tensor_value_info("prev", F, None)],
                 [h.make_tensor_value_info("c_out", B, None), h.make_tensor_value_info("current", F, None),
                  h.make_tensor_value_info("item", F, None)])
    model = make([h.make_node("Sub", ["limit", "start"], ["span"]), h.make_node("Div", ["span", "delta"], ["q"]),
                  h.make_node("Ceil", ["q"], ["c"]), h.make_node("Relu", ["c"], ["r"]),
                  h.make_node("Cast", ["r"], ["n"], to=I64),
                  h.make_node("Loop", ["n", "", "start"], ["last", "out"], body=body)],
                 [vi("start", F, []), vi("limit", F, []), vi("delta", F, [])], [vi("out", F, ["k"])], full_check=False)
    run = compiled(model, tmp_path)
    for limit in (5.0, 1.0, -2.0):
        feeds = {"start": np.array(1.0, np.float32), "limit": np.array(limit, np.float32),
                 "delta": np.array(0.75, np.float32)}
        assert check(run, model, feeds)[0].shape == (max(int(np.ceil((limit - 1.0) / 0.75)), 0),)
