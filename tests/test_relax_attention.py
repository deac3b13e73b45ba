"""The Attention converter (opsets 23-25), checked against onnxruntime and onnx's reference."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import (  # noqa: E402
    TARGET, Runner, assert_close, build, check, f32, import_model, lower, make_model, reference, run)

N = helper.make_node


def test_attention_gqa_cache_masks_softcap_and_qk_outputs_match_onnxruntime():
    nodes = [
        # 3-D, grouped query (6 query heads on 2 kv heads), cache, a float mask, every output,
        # the scores with the bias
        N("Attention", ["q3", "k3", "v3", "mask_f", "pk", "pv"], ["y1", "pk1", "pv1", "qk1"],
          q_num_heads=6, kv_num_heads=2, qk_matmul_output_mode=2),
        # 4-D, causal with a boolean mask, softcap, probabilities as the qk output
        N("Attention", ["q4", "k4", "v4", "mask_b"], ["y2", "", "", "qk2"], is_causal=1, softcap=2.0,
          qk_matmul_output_mode=3),
        # 4-D float16, an explicit scale, a different value head size
        N("Attention", ["h_q", "h_k", "h_v"], ["y3"], scale=0.3),
    ]
    feeds = {"q3": f32(2, 3, 48), "k3": f32(2, 4, 16), "v3": f32(2, 4, 16), "mask_f": f32(3, 6),
             "pk": f32(2, 2, 2, 8), "pv": f32(2, 2, 2, 8),
             "q4": f32(1, 2, 4, 8), "k4": f32(1, 2, 6, 8), "v4": f32(1, 2, 6, 8),
             "mask_b": np.random.default_rng(1).random((4, 6)) > 0.3,
             "h_q": f32(1, 2, 3, 8).astype(np.float16), "h_k": f32(1, 2, 5, 8).astype(np.float16),
             "h_v": f32(1, 2, 5, 4).astype(np.float16)}
    m = make_model(nodes, feeds, ["y1", "pk1", "pv1", "qk1", "y2", "qk2", "y3"], {}, 23)
    check(m, feeds, rtol=2e-3, atol=2e-3)


def test_attention_symbolic_lengths_one_build_decode_and_prefill():
    nodes = [N("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "pk1", "pv1"], is_causal=1,
               q_num_heads=4, kv_num_heads=2)]
    m = make_model(nodes, {"q": (np.float32, ["b", "s", 32]), "k": (np.float32, ["b", "s", 16]),
                           "v": (np.float32, ["b", "s", 16]), "pk": (np.float32, ["b", 2, "p", 8]),
                           "pv": (np.float32, ["b", 2, "p", 8])}, ["y", "pk1", "pv1"], {}, 23)
    model = import_model(m)
    runner = Runner(build(lower(model), TARGET), model)
    for b, s, p in [(1, 1, 7), (2, 5, 3), (1, 4, 0)]:
        feeds = {"q": f32(b, s, 32), "k": f32(b, s, 16), "v": f32(b, s, 16), "pk": f32(b, 2, p, 8),
                 "pv": f32(b, 2, p, 8)}
        assert_close(runner(feeds), reference(m, feeds))


def test_attention_windows_and_external_cache_match_onnx_reference():
    # opset 25 (sliding windows) is newer than onnxruntime: compare with onnx's reference
    nodes = [
        N("Attention", ["q", "k", "v", "mask3", "", "", "nonpad"], ["y1"], is_causal=1, left_window_size=2),
        N("Attention", ["q", "k", "v"], ["y2"], left_window_size=1, right_window_size=2),
        N("Attention", ["q", "k", "v", "mask_all_off"], ["y3"]),  # fully masked rows give 0
        N("Attention", ["q", "k", "v", "mask_short"], ["y4"]),  # keys past the mask are masked
    ]
    off = np.ones((4, 6), bool)
    off[1] = False
    feeds = {"q": f32(2, 3, 4, 8), "k": f32(2, 3, 6, 8), "v": f32(2, 3, 6, 8), "mask3": f32(3, 4, 6),
             "nonpad": np.array([5, 6], np.int64), "mask_all_off": off,
             "mask_short": f32(4, 4)}
    m = make_model(nodes, feeds, ["y1", "y2", "y3", "y4"], {}, 25)
    model = import_model(m)
    got = run(build(lower(model), TARGET), feeds, model)
    want = dict(zip(["y1", "y2", "y3", "y4"], ReferenceEvaluator(m).run(None, feeds)))
    assert not np.isnan(got["y3"]).any()
    assert_close(got, want)


def test_rotary_embedding_layouts_match_onnxruntime():
    rng = np.random.default_rng(6)
    nodes = [
        N("RotaryEmbedding", ["x4", "cos", "sin", "pos"], ["r1"]),
        N("RotaryEmbedding", ["x4", "cos", "sin", "pos"], ["r2"], interleaved=1),
        N("RotaryEmbedding", ["x3", "cos_half", "sin_half"], ["r3"], num_heads=2, rotary_embedding_dim=4,
          interleaved=1),
    ]
    feeds = {"x4": f32(2, 3, 5, 8), "cos": f32(10, 4), "sin": f32(10, 4),
             "pos": rng.integers(0, 10, (2, 5)).astype(np.int64),
             "x3": f32(2, 5, 16), "cos_half": f32(2, 5, 2), "sin_half": f32(2, 5, 2)}
    check(make_model(nodes, feeds, ["r1", "r2", "r3"], {}, 23), feeds)
