"""Swish (onnxruntime) and SwiGLU (onnx's reference: newer than onnxruntime)."""

from __future__ import annotations

import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import TARGET, assert_close, build, check, f32, import_model, lower, make_model, run  # noqa: E402

N = helper.make_node


def test_swish_matches_onnxruntime():
    feeds = {"x": f32(3, 7)}
    nodes = [N("Swish", ["x"], ["y1"]), N("Swish", ["x"], ["y2"], alpha=0.5)]
    check(make_model(nodes, feeds, ["y1", "y2"], {}, 24), feeds)


def test_swiglu_matches_onnx_reference():
    feeds = {"a": f32(2, 5), "b": f32(2, 5)}
    m = make_model([N("SwiGLU", ["a", "b"], ["y"], alpha=1.7)], feeds, ["y"], {}, 28)
    model = import_model(m)
    got = run(build(lower(model), TARGET), feeds, model)
    assert_close(got, {"y": ReferenceEvaluator(m).run(None, feeds)[0]})
