"""GridSample and AffineGrid (with a runtime size), checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import check, f32, make_model  # noqa: E402

N = helper.make_node


def test_grid_sample_modes_and_affine_grid_match_onnxruntime():
    grid = np.random.default_rng(4).uniform(-1.2, 1.2, (2, 3, 5, 2)).astype(np.float32)
    nodes = [
        N("GridSample", ["x", "grid"], ["g_lin"]),
        N("GridSample", ["x", "grid"], ["g_near"], mode="nearest", padding_mode="border", align_corners=1),
        N("GridSample", ["x", "grid"], ["g_cubic"], mode="cubic", padding_mode="reflection"),
        N("GridSample", ["v", "grid3"], ["g_vol"]),
        N("AffineGrid", ["theta", "size"], ["a2"]),  # size: a runtime tensor
        N("AffineGrid", ["theta3", "size3"], ["a3"], align_corners=1),
    ]
    feeds = {"x": f32(2, 3, 4, 6), "grid": grid, "v": f32(1, 2, 3, 4, 4),
             "grid3": np.random.default_rng(5).uniform(-1, 1, (1, 2, 3, 2, 3)).astype(np.float32),
             "theta": f32(2, 2, 3), "size": np.array([2, 1, 4, 5], np.int64),
             "theta3": f32(1, 3, 4), "size3": np.array([1, 1, 2, 3, 4], np.int64)}
    check(make_model(nodes, feeds, ["g_lin", "g_near", "g_cubic", "g_vol", "a2", "a3"], {}, 20), feeds)
