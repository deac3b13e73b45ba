"""CumProd with a constant axis, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import check, f32, make_model  # noqa: E402

N = helper.make_node


def test_cumprod_plain_exclusive_reverse_match_onnxruntime():
    nodes = [N("CumProd", ["x", "ax1"], ["p"]), N("CumProd", ["x", "ax0"], ["pe"], exclusive=1),
             N("CumProd", ["x", "ax1"], ["pr"], reverse=1, exclusive=1)]
    feeds = {"x": f32(3, 5)}
    inits = {"ax0": np.array(0, np.int64), "ax1": np.array(-1, np.int64)}
    check(make_model(nodes, feeds, ["p", "pe", "pr"], inits, 26), feeds)
