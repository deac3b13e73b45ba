"""Shapes read from runtime tensors: the ops that consume them must not be fused ahead of them.

A runtime shape tensor becomes TIR vars through `tensor_to_shape` + `match_cast`;
TVM's FuseOps orders fused groups by Relax var dependencies only, so unless `lower`
keeps such a body in order (unfused), an Expand fused with the reshapes before it
used the vars before they were computed ("PrimExpr ... has not been computed").
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from test_relax_lowering import check, f32, make_model  # noqa: E402

N = helper.make_node


def test_expand_and_constant_of_shape_to_a_runtime_shape_after_fusable_producers():
    nodes = [
        N("Transpose", ["x"], ["t"], perm=[1, 0]),
        N("Unsqueeze", ["t", "ax"], ["u"]),
        N("Expand", ["u", "shape"], ["e"]),           # shape: a runtime tensor (a graph input)
        N("Relu", ["e"], ["r"]),
        N("ConstantOfShape", ["shape"], ["c"]),
        N("Mul", ["c", "c"], ["w"]),
    ]
    feeds = {"x": f32(2, 3), "shape": np.array([4, 3, 2], np.int64)}
    check(make_model(nodes, feeds, ["r", "w"], {"ax": np.array([0], np.int64)}, 17), feeds)
