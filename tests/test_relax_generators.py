"""EyeLike, windows, ReverseSequence and the deprecated Scatter, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import (  # noqa: E402
    TARGET, Runner, assert_close, build, check, f32, import_model, lower, make_model, reference)

N = helper.make_node


def test_eye_like_static_shapes_match_onnxruntime():
    nodes = [N("EyeLike", ["x"], ["e0"]), N("EyeLike", ["x"], ["e1"], k=1, dtype=TensorProto.INT32),
             N("EyeLike", ["x"], ["e2"], k=-2, dtype=TensorProto.DOUBLE)]
    feeds = {"x": f32(4, 5)}
    check(make_model(nodes, feeds, ["e0", "e1", "e2"], {}, 22), feeds)


def test_eye_like_symbolic_shape_one_build_many_shapes():
    m = make_model([N("EyeLike", ["x"], ["e"], k=1)], {"x": (np.float32, ["n", "m"])}, ["e"], {}, 22)
    model = import_model(m)
    runner = Runner(build(lower(model), TARGET), model)
    for shape in [(3, 3), (2, 5)]:
        feeds = {"x": f32(*shape)}
        assert_close(runner(feeds), reference(m, feeds))


def test_scatter_opset10_is_scatter_elements():
    nodes = [N("Scatter", ["data", "idx", "upd"], ["y"], axis=1)]
    feeds = {"data": f32(3, 4), "idx": np.array([[1, 3], [0, 0], [2, 1]], np.int64), "upd": f32(3, 2)}
    check(make_model(nodes, feeds, ["y"], {}, 10), feeds)


def test_windows_of_a_runtime_length_one_build_many_lengths():
    nodes = [N("HannWindow", ["n"], ["hann"]), N("HammingWindow", ["n"], ["hamming"], periodic=0),
             N("BlackmanWindow", ["n"], ["blackman"], output_datatype=TensorProto.DOUBLE)]
    m = make_model(nodes, {"n": (np.int64, [])}, ["hann", "hamming", "blackman"], {}, 17)
    model = import_model(m)
    runner = Runner(build(lower(model), TARGET), model)
    for n in (8, 5):
        feeds = {"n": np.array(n, np.int64)}
        assert_close(runner(feeds), reference(m, feeds))


def test_reverse_sequence_both_layouts_match_onnxruntime():
    nodes = [N("ReverseSequence", ["x", "lens_b"], ["tb"], batch_axis=1, time_axis=0),
             N("ReverseSequence", ["x", "lens_t"], ["bt"], batch_axis=0, time_axis=1)]
    feeds = {"x": f32(4, 4, 3), "lens_b": np.array([4, 1, 3, 2], np.int64), "lens_t": np.array([2, 4, 0, 3], np.int64)}
    check(make_model(nodes, feeds, ["tb", "bt"], {}, 10), feeds)
