"""Operands ONNX allows as run-time tensors work as inputs of ONE artifact (`mdoc compile` + `mdoc run`).

Each model takes its axes, sizes, k, pads or steps as graph inputs; it is compiled
once through `mdoc.compile` (no value bound), then run at two values of those
operands, and every output must equal onnxruntime's. Also: data-dependent output
lengths (NonZero, Compress, Unique), and the one operand that still decides the
rank (an axes tensor whose length is unknown), refused in one line naming the
node, the operand and `--bind`.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

import mdoc  # noqa: E402
from test_relax_lowering import assert_close, reference  # noqa: E402

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(0)
N = helper.make_node
i64 = lambda *v: np.array(v, np.int64)  # noqa: E731


def model(nodes, inputs, outputs, opset=18) -> onnx.ModelProto:
    """inputs and outputs: (name, element type, dims) with None for a dim only the run knows."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*v) for v in inputs],
                              [helper.make_tensor_value_info(*v) for v in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def compile_once_run_each(m: onnx.ModelProto, feeds_list: list[dict], tmp_path) -> None:
    """One artifact for `m`; each feed dict must give onnxruntime's outputs."""
    onnx.save(m, tmp_path / "m.onnx")
    artifact = mdoc.load(mdoc.compile(tmp_path / "m.onnx", "x86", tmp_path / "m.mdoc", show_progress=False))
    for feeds in feeds_list:
        assert_close(artifact(**feeds), reference(m, feeds), rtol=1e-4, atol=1e-5)


def test_reductions_with_runtime_axes(tmp_path):
    nodes = [N("ReduceSum", ["x", "axes"], ["sum"], keepdims=0), N("ReduceMax", ["x", "axes"], ["max"], keepdims=1),
             N("ReduceLogSumExp", ["x", "axes"], ["lse"], keepdims=0),
             N("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
             N("ReduceMin", ["b", "axes"], ["all"], keepdims=0)]
    m = model(nodes, [("x", F, [2, 3, 4]), ("b", B, [2, 3, 4]), ("axes", I64, [2])],
              [("sum", F, [None]), ("max", F, [None] * 3), ("lse", F, [None]), ("mean", F, [None] * 3),
               ("all", B, [None])], opset=20)  # ReduceMin takes bool since opset 20
    x, b = RNG.standard_normal((2, 3, 4)).astype(np.float32), RNG.random((2, 3, 4)) > 0.2
    compile_once_run_each(m, [{"x": x, "b": b, "axes": i64(0, 2)}, {"x": x, "b": b, "axes": i64(-1, 1)}], tmp_path)


def test_squeeze_unsqueeze_split_topk_with_runtime_operands(tmp_path):
    nodes = [N("Squeeze", ["x", "sq"], ["squeezed"]), N("Unsqueeze", ["x", "unsq"], ["unsqueezed"]),
             N("Split", ["v", "sizes"], ["p0", "p1", "p2"], axis=1),
             N("TopK", ["v", "k"], ["top", "top_i"], axis=1), N("TopK", ["v", "k"], ["low", "low_i"], largest=0)]
    m = model(nodes, [("x", F, [2, 1, 3, 1]), ("sq", I64, [1]), ("unsq", I64, [2]), ("v", F, [2, 6]),
                      ("sizes", I64, [3]), ("k", I64, [1])],
              [("squeezed", F, [None] * 3), ("unsqueezed", F, [None] * 6), *[(f"p{j}", F, [2, None]) for j in range(3)],
               ("top", F, [2, None]), ("top_i", I64, [2, None]), ("low", F, [2, None]), ("low_i", I64, [2, None])])
    x = RNG.standard_normal((2, 1, 3, 1)).astype(np.float32)
    v = np.array([[3, 1, 3, 2, 0, 5], [0, 5, 5, 1, 1, 2]], np.float32)  # ties: the lower index comes first
    compile_once_run_each(m, [
        {"x": x, "sq": i64(1), "unsq": i64(0, 5), "v": v, "sizes": i64(1, 2, 3), "k": i64(2)},
        {"x": x, "sq": i64(-1), "unsq": i64(-2, 2), "v": v, "sizes": i64(0, 6, 0), "k": i64(6)}], tmp_path)


def test_slice_pad_cumsum_resize_with_runtime_operands(tmp_path):
    nodes = [N("Slice", ["x", "starts", "ends", "axes", "steps"], ["sliced"]),
             N("Pad", ["x", "pads", "value", "axes"], ["padded"], mode="reflect"),
             N("CumSum", ["x", "axis"], ["cum"], reverse=1),
             N("Resize", ["x", "", "scales"], ["resized"], mode="nearest", axes=[1]),
             N("Resize", ["x", "", "", "sizes"], ["kept"], mode="nearest", keep_aspect_ratio_policy="not_larger"),
             N("Resize", ["x", "roi", "", "sizes"], ["cropped"], mode="linear",
               coordinate_transformation_mode="tf_crop_and_resize")]
    m = model(nodes, [("x", F, [4, 5]), ("starts", I64, [1]), ("ends", I64, [1]), ("axes", I64, [1]),
                      ("steps", I64, [1]), ("pads", I64, [2]), ("value", F, []), ("axis", I64, []),
                      ("scales", F, [1]), ("sizes", I64, [2]), ("roi", F, [4])],
              [("sliced", F, [None, None]), ("padded", F, [None, None]), ("cum", F, [4, 5]),
               ("resized", F, [4, None]), ("kept", F, [None, None]), ("cropped", F, [None, None])])
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    compile_once_run_each(m, [
        {"x": x, "starts": i64(1), "ends": i64(1000), "axes": i64(1), "steps": i64(2), "pads": i64(1, 2),
         "value": np.array(0, np.float32), "axis": np.array(0), "scales": np.array([2], np.float32),
         "sizes": i64(2, 8), "roi": np.array([0, 0.2, 1, 0.8], np.float32)},
        {"x": x, "starts": i64(-1), "ends": i64(-1000), "axes": i64(-2), "steps": i64(-1), "pads": i64(0, 3),
         "value": np.array(0, np.float32), "axis": np.array(-1), "scales": np.array([0.5], np.float32),
         "sizes": i64(8, 3), "roi": np.array([0.1, 0, 0.9, 1], np.float32)}], tmp_path)


def test_nonzero_compress_unique_have_data_dependent_lengths(tmp_path):
    nodes = [N("NonZero", ["m"], ["where"]), N("Compress", ["x", "keep"], ["kept"], axis=0),
             N("Unique", ["u"], ["values", "first", "inverse", "counts"], sorted=0),
             N("Unique", ["rows"], ["urows", "ufirst", "uinverse", "ucounts"], axis=0)]
    m = model(nodes, [("m", F, [2, 3]), ("x", F, [3, 2]), ("keep", B, [3]), ("u", F, [6]), ("rows", F, [3, 2])],
              [("where", I64, [2, None]), ("kept", F, [None, 2]), ("values", F, [None]), ("first", I64, [None]),
               ("inverse", I64, [6]), ("counts", I64, [None]), ("urows", F, [None, 2]), ("ufirst", I64, [None]),
               ("uinverse", I64, [3]), ("ucounts", I64, [None])], opset=13)
    x = RNG.standard_normal((3, 2)).astype(np.float32)
    compile_once_run_each(m, [
        {"m": np.array([[1, 0, 2], [0, 0, 3]], np.float32), "x": x, "keep": np.array([True, False, True]),
         "u": np.array([2, 1, 1, 3, 4, 3], np.float32), "rows": np.array([[1, 0], [1, 0], [0, 2]], np.float32)},
        {"m": np.zeros((2, 3), np.float32), "x": x, "keep": np.array([False, True, False]),
         "u": np.full(6, 5, np.float32), "rows": np.array([[2, 2], [1, 3], [1, 2]], np.float32)}], tmp_path)


def test_axes_of_unknown_length_are_refused_naming_node_operand_and_bind(mdoc_cli, tmp_path):
    m = model([N("ReduceSum", ["x", "axes"], ["y"], name="rs", keepdims=0)],
              [("x", F, [2, 3]), ("axes", I64, ["n"])], [("y", F, None)])
    onnx.save(m, tmp_path / "m.onnx")
    r = mdoc_cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "m.mdoc")
    assert r.code == 2
    assert r.err.strip().splitlines()[-1] == (
        "mdoc: error: onnx.ReduceSum (node 'rs'): operand 1 %axes (axes, of a length known only at run time) must be a "
        "constant for the Relax target; it is graph input 'axes': bind its value at compile time "
        "(mdoc compile --bind axes=VALUES)")


@pytest.mark.parametrize("elem, dtype, opset", [(TensorProto.FLOAT16, np.float16, 18),
                                                (TensorProto.BFLOAT16, "bfloat16", 28)])  # Unique takes bfloat16 from 28
def test_unique_of_half_precision_values_is_sorted(tmp_path, elem, dtype, opset):
    """TVM's argsort misorders float16 / bfloat16 keys (the node suite's bfloat16 Unique came back
    4.0 first): Unique sorts them as float32, which holds each value exactly."""
    import ml_dtypes

    dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    m = model([N("Unique", ["x"], ["y", "first", "inverse", "counts"])], [("x", elem, [None])],
              [("y", elem, [None]), ("first", I64, [None]), ("inverse", I64, [None]), ("counts", I64, [None])], opset)
    onnx.save(m, tmp_path / "u.onnx")
    run = mdoc.load(mdoc.compile(tmp_path / "u.onnx", "x86", tmp_path / "u.mdoc", show_progress=False))
    x = np.array([2.0, -1.5, 2.0, 0.25, 4.0, -1.5, 3.0], np.float32)
    got = run(x=x.astype(dtype))
    values, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(got["y"].astype(np.float32), values)
    for name, want in (("first", first), ("inverse", inverse), ("counts", counts)):
        np.testing.assert_array_equal(got[name], want)
