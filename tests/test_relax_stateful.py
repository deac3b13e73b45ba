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


def test_linear_attention_update_rules_match_onnxruntime():
    nodes = [
        N("LinearAttention", ["q", "k", "v", "past", "decay", "beta"], ["y1", "s1"], q_num_heads=4, kv_num_heads=2),
        N("LinearAttention", ["q", "k", "v", "", "decay_h"], ["y2", "s2"], q_num_heads=4, kv_num_heads=2,
          update_rule="gated"),
        N("LinearAttention", ["q", "k", "v", "", "", "beta1"], ["y3", "s3"], q_num_heads=4, kv_num_heads=2,
          update_rule="delta", scale=0.3),
        N("LinearAttention", ["q", "k", "v"], ["y4", "s4"], q_num_heads=4, kv_num_heads=2, update_rule="linear"),
    ]
    sig = lambda *s: (1 / (1 + np.exp(-f32(*s)))).astype(np.float32)  # noqa: E731
    feeds = {"q": f32(2, 3, 32), "k": f32(2, 3, 16, scale=0.3), "v": f32(2, 3, 16), "past": f32(2, 2, 8, 8),
             "decay": -sig(2, 3, 16), "decay_h": -sig(2, 3, 2), "beta": sig(2, 3, 2), "beta1": sig(2, 3, 1)}
    outs = ["y1", "s1", "y2", "s2", "y3", "s3", "y4", "s4"]
    check(make_model(nodes, feeds, outs, {}, 27), feeds)


def test_tensor_scatter_linear_and_circular_match_onnxruntime():
    nodes = [N("TensorScatter", ["cache", "upd", "pos"], ["lin"]),
             N("TensorScatter", ["cache", "upd", "pos_wrap"], ["circ"], mode="circular"),
             N("TensorScatter", ["cache3", "upd3"], ["at0"], axis=1)]
    feeds = {"cache": f32(2, 3, 6, 4), "upd": f32(2, 3, 2, 4), "pos": np.array([0, 3], np.int64),
             "pos_wrap": np.array([5, 2], np.int64), "cache3": f32(2, 5, 3), "upd3": f32(2, 2, 3)}
    check(make_model(nodes, feeds, ["lin", "circ", "at0"], {}, 24), feeds)
