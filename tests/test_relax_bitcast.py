"""BitCast, checked against numpy's `view` (onnxruntime lacks some pairs), and its width check."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

pytest.importorskip("tvm")

from test_relax_lowering import TARGET, assert_close, build, f32, import_model, lower, make_model, run  # noqa: E402

from mdoc.errors import MdocError  # noqa: E402

N = helper.make_node


def test_bitcast_matches_numpy_view():
    nodes = [N("BitCast", ["x"], ["i"], to=TensorProto.INT32), N("BitCast", ["u"], ["s"], to=TensorProto.INT16),
             N("BitCast", ["b"], ["b8"], to=TensorProto.UINT8), N("BitCast", ["d"], ["l"], to=TensorProto.INT64)]
    feeds = {"x": f32(3, 4), "u": np.array([0, 1, 40000, 65535], np.uint16), "b": np.array([True, False]),
             "d": np.array([1.5, -2.0])}
    model = import_model(make_model(nodes, feeds, ["i", "s", "b8", "l"], {}, 26))
    got = run(build(lower(model), TARGET), feeds, model)
    want = {"i": feeds["x"].view(np.int32), "s": feeds["u"].view(np.int16), "b8": feeds["b"].view(np.uint8),
            "l": feeds["d"].view(np.int64)}
    assert_close(got, want)


def test_bitcast_between_widths_is_refused():
    m = make_model([N("BitCast", ["x"], ["y"], to=TensorProto.INT64)], {"x": f32(2)}, ["y"], {}, 26)
    with pytest.raises(MdocError, match=r"BitCast from f32 to i64: the types must have the same width"):
        lower(import_model(m))
