"""CausalConvWithState, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import check, f32, make_model  # noqa: E402

N = helper.make_node


def test_causal_conv_with_state_matches_onnxruntime():
    nodes = [
        N("CausalConvWithState", ["x", "w"], ["y0", "s0"]),  # zeros as the left context
        N("CausalConvWithState", ["x", "w", "b", "past"], ["y1", "s1"], activation="silu"),
        N("CausalConvWithState", ["h", "hw"], ["y2", "s2"], activation="swish"),  # float16
    ]
    feeds = {"x": f32(2, 4, 6), "w": f32(4, 1, 3), "b": f32(4), "past": f32(2, 4, 2),
             "h": f32(1, 4, 5).astype(np.float16), "hw": f32(4, 1, 3).astype(np.float16)}
    check(make_model(nodes, feeds, ["y0", "s0", "y1", "s1", "y2", "s2"], {}, 27), feeds, rtol=2e-3, atol=2e-3)
