"""NonMaxSuppression (runtime limits, a data-dependent row count) and RoiAlign against onnxruntime."""

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


def test_roi_align_both_coordinate_modes_match_onnxruntime():
    nodes = [N("RoiAlign", ["x", "rois", "idx"], ["half"], output_height=3, output_width=4, sampling_ratio=2,
               spatial_scale=0.5),
             N("RoiAlign", ["x", "rois", "idx"], ["out_half"], output_height=2, output_width=2,
               coordinate_transformation_mode="output_half_pixel")]
    feeds = {"x": np.random.default_rng(8).random((2, 3, 10, 10)).astype(np.float32),
             "rois": np.array([[0, 0, 9, 9], [2, 3, 7, 8], [1, 1, 4, 3]], np.float32),
             "idx": np.array([0, 1, 1], np.int64)}
    check(make_model(nodes, feeds, ["half", "out_half"], {}, 16), feeds)
