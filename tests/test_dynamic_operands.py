"""Operands that arrive at run time (axes, pads, k, sizes, ... as graph inputs), checked against onnxruntime.

Two ways through, as the Relax target handles them:

* run-time values: Trilu's k, Range, Tile's repeats, Pad's pads and value, Slice's
  starts/ends, Reshape's shape, Resize's sizes. Each graph is built once and run
  with two different values of the operand; both must match onnxruntime.
* guarded specialization: operands the Relax target still needs at compile time
  (Resize's sizes with antialias, whose taps widen with the scale; an axes tensor
  of unknown length) must be bound:
  `bind_inputs` / `mdoc compile --bind`, and the onnx Backend compiles one
  version per bound value. The errors name the node, the operand and the input.
  (Axes, split sizes, k and the rest compile once: tests/test_runtime_operands.py.)

Also the element-type and edge-case fixes of the same converters (Pow on integers,
Mod's sign rules, BitShift's out-of-range amounts, ReduceMax/Min on bools and
empty sets, Split with empty pieces, OneHot with float indices, TopK on uint64,
BatchNormalization in training mode). onnxruntime has no kernels for some of
those types (signed BitShift, bool ReduceMax before opset 20, uint64 TopK), so
the edge-case graphs are checked against onnx's reference evaluator, which also
produced the conformance suite's expected outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import TARGET, GraphSpec, assert_close, f32, reference  # noqa: E402

from mdoc.errors import MdocError  # noqa: E402
from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.specialize import bind_inputs, parse_binding  # noqa: E402
from mdoc.tooling.onnx_backend import BackendError, MdocBackend  # noqa: E402
from mdoc.targets.relax import build, lower, run  # noqa: E402
from mdoc.targets.relax.context import NeedsInputValue  # noqa: E402

i64 = lambda *v: np.array(v, np.int64)  # noqa: E731


def onnx_reference(m: onnx.ModelProto, feeds: dict) -> dict:
    from onnx.reference import ReferenceEvaluator

    return dict(zip([o.name for o in m.graph.output], ReferenceEvaluator(m).run(None, feeds)))


def run_twice(m: onnx.ModelProto, feeds_list: list[dict], **tol):
    """Build `m` once; every feed dict must give onnxruntime's outputs."""
    model = import_model(m)
    ex = build(lower(model), TARGET)
    for feeds in feeds_list:
        assert_close(run(ex, feeds, model), reference(m, feeds), **tol)


# -- run-time values ---------------------------------------------------------------------


def test_trilu_with_runtime_k():
    g = GraphSpec()
    g.add("Trilu", ["x", "k"], upper=1)
    g.add("Trilu", ["x", "k"], upper=0)
    x = f32(2, 4, 5)
    m = g.model({"x": x, "k": i64(0).reshape(())}, opset=14)
    run_twice(m, [{"x": x, "k": np.array(1, np.int64)}, {"x": x, "k": np.array(-2, np.int64)}])


def test_range_with_runtime_bounds():
    g = GraphSpec()
    g.add("Range", ["s", "l", "d"])
    g.add("Range", ["a", "b", "c"])
    f = lambda v: np.array(v, np.float32)  # noqa: E731
    i = lambda v: np.array(v, np.int32)  # noqa: E731
    m = g.model({"s": f(0), "l": f(1), "d": f(1), "a": i(0), "b": i(1), "c": i(1)}, opset=11)
    run_twice(m, [{"s": f(1.5), "l": f(4.0), "d": f(0.5), "a": i(10), "b": i(1), "c": i(-3)},
                  {"s": f(-2.0), "l": f(7.0), "d": f(2.25), "a": i(0), "b": i(5), "c": i(1)}])


def test_tile_with_runtime_repeats():
    g = GraphSpec()
    g.add("Tile", ["x", "r"])
    x = f32(2, 3)
    m = g.model({"x": x, "r": i64(1, 1)}, opset=13)
    run_twice(m, [{"x": x, "r": i64(2, 1)}, {"x": x, "r": i64(1, 3)}])


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "wrap"])
def test_pad_with_runtime_pads(mode):
    g = GraphSpec()
    inputs = ["x", "p", "v"] if mode == "constant" else ["x", "p"]
    g.add("Pad", inputs, mode=mode)
    x = f32(1, 3, 4, 5)
    feeds = {"x": x, "p": i64(0, 0, 1, 2, 0, 0, 2, 1)}
    if mode == "constant":
        feeds["v"] = np.array(1.5, np.float32)
    m = g.model(feeds, opset=13)
    other = dict(feeds, p=i64(0, 1, 0, 3, 0, 0, -1, 2))  # a negative pad crops
    run_twice(m, [feeds, other])


def test_slice_with_runtime_starts_and_ends():
    g = GraphSpec()
    g.add("Slice", ["x", "b", "e", g.const("axes", i64(0, 2)), g.const("steps", i64(1, -2))])
    g.add("Slice", ["x", "b", "e"])
    x = f32(6, 4, 7)
    m = g.model({"x": x, "b": i64(0, 0), "e": i64(1, 1)}, opset=13)
    run_twice(m, [{"x": x, "b": i64(1, -1), "e": i64(1000, -1000)},
                  {"x": x, "b": i64(-4, 5), "e": i64(-1, 1)}])


def test_reshape_with_runtime_shape():
    g = GraphSpec()
    g.add("Reshape", ["x", "s"])
    x = f32(2, 3, 4)
    m = g.model({"x": x, "s": i64(0, 0, 0)}, opset=14)
    run_twice(m, [{"x": x, "s": i64(0, -1, 2)}, {"x": x, "s": i64(4, 3, -1)}])


def test_resize_with_runtime_sizes():
    g = GraphSpec()
    g.add("Resize", ["x", "", "", "sz"], mode="linear")
    g.add("Resize", ["x", "", "", "sz"], mode="nearest", coordinate_transformation_mode="align_corners")
    x = f32(1, 2, 5, 6)
    m = g.model({"x": x, "sz": i64(1, 2, 5, 6)}, opset=19)
    run_twice(m, [{"x": x, "sz": i64(1, 2, 9, 4)}, {"x": x, "sz": i64(1, 2, 3, 11)}])


def test_resize_with_runtime_scales():
    g = GraphSpec()
    g.add("Resize", ["x", "", "sc"], mode="linear")
    g.add("Resize", ["x", "", "sc"], mode="nearest", coordinate_transformation_mode="asymmetric")
    x = f32(1, 2, 5, 6)
    f = lambda *v: np.array(v, np.float32)  # noqa: E731
    m = g.model({"x": x, "sc": f(1, 1, 1, 1)}, opset=19)
    run_twice(m, [{"x": x, "sc": f(1, 1, 2, 0.5)}, {"x": x, "sc": f(1, 1, 0.6, 1.7)}])


def test_resize_cubic_with_runtime_sizes_and_scales():
    """Cubic taps over run-time sizes are tabulated per axis first (the kernel built in minutes
    when every output element repeated their symbolic float math)."""
    g = GraphSpec()
    g.add("Resize", ["x", "", "", "sz"], mode="cubic")
    x = f32(1, 1, 4, 4)
    run_twice(g.model({"x": x, "sz": i64(1, 1, 6, 3)}, opset=19), [{"x": x, "sz": i64(1, 1, 6, 3)},
                                                                  {"x": x, "sz": i64(1, 1, 3, 9)}])
    g = GraphSpec()
    g.add("Resize", ["x", "", "sc"], mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)
    sc = lambda *v: np.array(v, np.float32)  # noqa: E731
    run_twice(g.model({"x": x, "sc": sc(1, 1, 2, 0.5)}, opset=19), [{"x": x, "sc": sc(1, 1, 2, 0.5)},
                                                                   {"x": x, "sc": sc(1, 1, 0.6, 1.7)}])


def test_onehot_with_runtime_depth_and_values():
    g = GraphSpec()
    g.add("OneHot", ["i", "d", "v"], axis=1)
    i = np.array([[0, 3], [-1, 7]], np.int64)
    m = g.model({"i": i, "d": np.array(4, np.int64), "v": np.array([0, 1], np.float32)}, opset=11)
    run_twice(m, [{"i": i, "d": np.array(4, np.int64), "v": np.array([0, 1], np.float32)},
                  {"i": i, "d": np.array(9, np.int64), "v": np.array([-2, 5], np.float32)}])


# -- edge cases of the same converters ----------------------------------------------------


def test_integer_pow_mod_and_bitshift_edges():
    g = GraphSpec()
    g.add("Pow", ["ia", "ib"])
    g.add("Pow", ["ia", "fb"])
    g.add("Mod", ["fa", "fc"])
    g.add("Mod", ["fa", "fc"], fmod=1)
    g.add("Mod", ["ha", "hc"])
    g.add("BitShift", ["sa", "sb"], direction="LEFT")
    g.add("BitShift", ["sa", "sb"], direction="RIGHT")
    g.add("BitShift", ["ua", "ub"], direction="RIGHT")
    fa = np.array([0.0, -0.0, 0.0, -3.0, 3.0, -1.0, 1.0, np.inf, -4.3, 7.2, 8.0], np.float32)
    fc = np.array([-2.0, 2.0, 2.0, np.inf, np.inf, -np.inf, -np.inf, 2.0, 2.1, -3.4, 5.0], np.float32)
    feeds = {"ia": np.array([2, -3, 4, 0], np.int32), "ib": np.array([3, 3, 0, 2], np.int32),
             "fb": np.array([2.0, 2.0, 0.5, 3.0], np.float32), "fa": fa, "fc": fc,
             "ha": fa.astype(np.float16), "hc": fc.astype(np.float16),
             "sa": np.array([-8, 4, -1, 5, 5], np.int32), "sb": np.array([-1, 33, 31, 2, 32], np.int32),
             "ua": np.array([8, 255, 1], np.uint8), "ub": np.array([1, 8, 9], np.uint8)}
    m = g.model(feeds, opset=18)
    model = import_model(m)
    got = run(build(lower(model), TARGET), feeds, model)
    ref = onnx_reference(m, feeds)
    assert_close(got, ref)
    for name in ("o2_Mod", "o3_Mod", "o4_Mod"):  # the sign of a zero result matters too
        assert np.array_equal(np.signbit(got[name]), np.signbit(ref[name])), name


def test_reduce_split_onehot_topk_edges():
    g = GraphSpec()
    g.add("ReduceMax", ["b", g.const("ax1", i64(1))], keepdims=1)
    g.add("ReduceMin", ["b", "ax1"], keepdims=0)
    g.add("ReduceMax", ["e", "ax1"], keepdims=1)
    g.add("ReduceMin", ["e", "ax1"], keepdims=0)
    g.add("Split", ["x", g.const("sizes", i64(2, 0, 3, 0))], n_out=4)
    depth, on_off = g.const("depth", np.array(5, np.int64)), g.const("vals", np.array([0, 3], np.float32))
    g.add("OneHot", ["fi", depth, on_off], axis=0)
    g.add("TopK", ["u", g.const("k", i64(2))], n_out=2)
    rng = np.random.default_rng(1)
    feeds = {"b": rng.random((3, 4)) > 0.5, "e": np.zeros((2, 0, 3), np.float32), "x": f32(5, 2),
             "fi": np.array([1.0, -2.0, 4.0, 7.0], np.float32),
             "u": np.array([[3, 1 << 63, 7], [(1 << 64) - 1, 2, 9]], np.uint64)}
    m = g.model(feeds, opset=18)
    model = import_model(m)
    assert_close(run(build(lower(model), TARGET), feeds, model), onnx_reference(m, feeds))


def test_batchnorm_training_mode():
    g = GraphSpec()
    g.add("BatchNormalization", ["x", "s", "b", "m", "v"], n_out=3, training_mode=1, momentum=0.8, epsilon=1e-3)
    feeds = {"x": f32(2, 3, 4, 5), "s": f32(3), "b": f32(3), "m": f32(3), "v": np.abs(f32(3)) + 0.5}
    m = g.model(feeds, opset=15)
    model = import_model(m)
    assert_close(run(build(lower(model), TARGET), feeds, model), reference(m, feeds))


def test_space_to_depth_modes():
    g = GraphSpec()
    g.add("SpaceToDepth", ["x"], blocksize=2)
    g.add("SpaceToDepth", ["x"], blocksize=2, mode="CRD")
    feeds = {"x": f32(1, 3, 4, 6)}
    m = g.model(feeds, opset=28)
    model = import_model(m)
    assert_close(run(build(lower(model), TARGET), feeds, model), onnx_reference(m, feeds))


# -- guarded specialization ------------------------------------------------------------------


def reduce_model(opset: int = 18) -> onnx.ModelProto:
    """ReduceSum(x, axes) with keepdims=0, to bind the axes of."""
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="rs", keepdims=0)
    graph = helper.make_graph(
        [node], "reduce",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def antialias_model(computed: bool = False) -> onnx.ModelProto:
    """Resize(x, sizes) with antialias: the sizes (a graph input, or a + b) must be bound."""
    nodes = [helper.make_node("Add", ["a", "b"], ["sizes"])] if computed else []
    nodes.append(helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="rz", mode="cubic", antialias=1))
    sizes = [helper.make_tensor_value_info(n, TensorProto.INT64, [4]) for n in (["a", "b"] if computed else ["sizes"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]), *sizes],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=8)


def test_structural_operand_error_names_node_operand_and_input():
    with pytest.raises(NeedsInputValue) as e:
        lower(import_model(antialias_model()))
    assert str(e.value) == ("onnx.Resize (node 'rz'): operand 3 %sizes (sizes, with keep_aspect_ratio_policy=stretch and antialias=1) "
                            "must be a constant "
                            "for the Relax target; it is graph input 'sizes': bind its value at compile time "
                            "(mdoc compile --bind sizes=VALUES)")
    assert e.value.inputs == ("sizes",)


def test_structural_operand_computed_from_inputs_names_them():
    with pytest.raises(NeedsInputValue) as e:
        lower(import_model(antialias_model(computed=True)))
    assert e.value.inputs == ("a", "b")
    assert "it is computed from graph inputs 'a', 'b'" in str(e.value)
    assert "--bind a=VALUES --bind b=VALUES" in str(e.value)


def test_bind_inputs_specializes_the_model():
    m = reduce_model()
    x = f32(2, 3, 4)
    for axes in ([1], [-1]):
        model = import_model(m)
        assert bind_inputs(model, {"axes": [float(a) for a in axes]}) == ["axes"]
        assert [v.name for v in model.graph.inputs] == ["x"]
        got = run(build(lower(model), TARGET), {"x": x}, model)
        np.testing.assert_allclose(got["y"], x.sum(axis=tuple(axes)), rtol=1e-5)


@pytest.mark.parametrize("values, message", [
    ({"axis": [1.0]}, "--bind names 'axis', which is not a graph input (inputs: x, axes)"),
    ({"axes": [0.5]}, "--bind axes: input 'axes' is i64[1], but the values [0.5] are not integers"),
    ({"axes": [0.0, 1.0]}, "--bind axes: the value has shape [2], input 'axes' is i64[1]"),
    ({"axes": np.array([1.5])}, "--bind axes: the value is float64, input 'axes' is i64[1]"),
])
def test_bind_inputs_errors(values, message):
    with pytest.raises(MdocError) as e:
        bind_inputs(import_model(reduce_model()), values)
    assert str(e.value) == message


def test_parse_binding(tmp_path):
    assert parse_binding("axes=0,2") == ("axes", [0.0, 2.0])
    np.save(tmp_path / "s.npy", np.array([1.0, 2.0], np.float32))
    name, array = parse_binding(f"scales=@{tmp_path / 's.npy'}")
    assert name == "scales" and array.tolist() == [1.0, 2.0]
    for bad, message in [("axes", "--bind 'axes' is not NAME=VALUES (comma-separated numbers) or NAME=@FILE.npy"),
                         ("axes=a,b", "--bind axes: 'a,b' is not a comma-separated list of numbers")]:
        with pytest.raises(MdocError) as e:
            parse_binding(bad)
        assert str(e.value) == message


def test_compile_cli_bind(mdoc_cli, tmp_path):
    path = tmp_path / "antialias.onnx"
    onnx.save(antialias_model(), path)
    r = mdoc_cli("compile", path, "-o", tmp_path / "no")
    assert r.code == 2
    assert r.err.strip().splitlines()[-1].endswith("(mdoc compile --bind sizes=VALUES)")
    r = mdoc_cli("compile", path, "--bind", "sizes=1,1,6,5", "-o", tmp_path / "s")
    assert r.code == 0, r.err
    import mdoc

    x = f32(1, 1, 4, 4)
    feeds = {"x": x, "sizes": i64(1, 1, 6, 5)}
    assert_close(mdoc.load(tmp_path / "s")(x=x), reference(antialias_model(), feeds))


def test_backend_compiles_one_version_per_bound_value():
    rep = MdocBackend.prepare(antialias_model())
    assert rep.bound_inputs == ("sizes",) and rep.compiled_shapes == []
    x = f32(1, 1, 4, 4)
    for sizes in ([1, 1, 6, 6], [1, 1, 5, 7], [1, 1, 6, 6]):
        (y,) = rep.run([x, i64(*sizes)])
        assert_close({"y": y}, reference(antialias_model(), {"x": x, "sizes": i64(*sizes)}))
    assert len(rep.compiled_shapes) == 2  # [1, 1, 6, 6] ran twice on one version


def test_backend_reports_errors_after_binding_in_their_stage():
    rep = MdocBackend.prepare(antialias_model())
    with pytest.raises(BackendError) as e:
        rep.run([f32(1, 1, 4, 4), i64(1, 1, 2)])
    assert e.value.stage == "lower"
    assert str(e.value) == "lower: --bind sizes: the value has shape [3], input 'sizes' is i64[4]"
