"""RMSNormalization and LpNormalization, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import check, f32, make_model  # noqa: E402

N = helper.make_node


def test_rms_and_lp_normalization_match_onnxruntime():
    x = f32(2, 3, 8)
    x[1, 2] = 0.0  # a zero row: LpNormalization gives 0, not NaN
    nodes = [
        N("RMSNormalization", ["x", "s_last"], ["rms_last"], epsilon=1e-3),
        N("RMSNormalization", ["x", "s_two"], ["rms_two"], axis=-2),
        N("RMSNormalization", ["h", "s_h"], ["rms_f16"]),  # float16 computed in float32
        N("LpNormalization", ["x"], ["l2_last"]),
        N("LpNormalization", ["x"], ["l1_axis1"], p=1, axis=1),
    ]
    feeds = {"x": x, "s_last": f32(8), "s_two": f32(3, 8), "h": f32(4, 16).astype(np.float16),
             "s_h": f32(16).astype(np.float16)}
    check(make_model(nodes, feeds, ["rms_last", "rms_two", "rms_f16", "l2_last", "l1_axis1"], {}, 23), feeds,
          rtol=2e-3, atol=2e-3)
