"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import check, f32, make_model  # noqa: E402

N = helper.make_node


def test_losses_every_reduction_weights_and_ignore_index_match_onnxruntime():
    rng = np.random.default_rng(3)
    t2 = rng.integers(0, 5, (3, 4, 2)).astype(np.int64)
    t2[0, 1, 1] = -1  # an ignored target outside [0, C)
    nodes = [
        N("NegativeLogLikelihoodLoss", ["x", "t"], ["nll_mean"]),
        N("NegativeLogLikelihoodLoss", ["x", "t", "w"], ["nll_sum_w"], reduction="sum"),
        N("NegativeLogLikelihoodLoss", ["x4", "t2", "w"], ["nll_mean_w_ii"], ignore_index=-1),
        N("NegativeLogLikelihoodLoss", ["x4", "t2"], ["nll_none_ii"], reduction="none", ignore_index=-1),
        N("SoftmaxCrossEntropyLoss", ["x", "t"], ["sce_mean", "logp"]),
        N("SoftmaxCrossEntropyLoss", ["x4", "t2"], ["sce_mean_ii"], ignore_index=-1),
        N("SoftmaxCrossEntropyLoss", ["x4", "t2", "w"], ["sce_none_w_ii"], reduction="none", ignore_index=-1),
    ]
    feeds = {"x": f32(6, 5), "t": rng.integers(0, 5, 6).astype(np.int64), "w": np.abs(f32(5)),
             "x4": f32(3, 5, 4, 2), "t2": t2}
    outs = ["nll_mean", "nll_sum_w", "nll_mean_w_ii", "nll_none_ii", "sce_mean", "logp", "sce_mean_ii",
            "sce_none_w_ii"]
    check(make_model(nodes, feeds, outs, {}, 13), feeds)
