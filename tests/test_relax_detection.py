"""NonMaxSuppression (runtime limits and thresholds, a data-dependent row count) against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import check, make_model  # noqa: E402

N = helper.make_node


def test_non_max_suppression_matches_onnxruntime():
    rng = np.random.default_rng(7)
    corner = rng.uniform(0, 10, (2, 8, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + rng.uniform(1, 4, (2, 8, 2)).astype(np.float32)], axis=2)
    centers = np.concatenate([corner, rng.uniform(1, 4, (2, 8, 2)).astype(np.float32)], axis=2)
    nodes = [N("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "min_score"], ["sel"]),
             N("NonMaxSuppression", ["centers", "scores", "limit", "iou"], ["sel_c"], center_point_box=1)]
    feeds = {"boxes": boxes, "centers": centers, "scores": rng.random((2, 3, 8)).astype(np.float32),
             "limit": np.array([3], np.int64), "iou": np.array([0.3], np.float32),
             "min_score": np.array([0.2], np.float32)}
    check(make_model(nodes, feeds, ["sel", "sel_c"], {}, 11), feeds)
