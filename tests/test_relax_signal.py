"""DFT (forward, inverse, one-sided, padded and truncated lengths) against onnx's reference."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("tvm")

from test_relax_lowering import TARGET, assert_close, build, f32, import_model, lower, make_model, run  # noqa: E402

N = helper.make_node


def test_dft_variants_match_onnx_reference():
    nodes = [
        N("DFT", ["xr", "", "ax1"], ["fwd"]),
        N("DFT", ["xc", "len5", "ax2"], ["fwd_trunc"]),            # complex input, truncated to 5
        N("DFT", ["xr", "len9", "ax1"], ["rfft_pad"], onesided=1),  # zero padded to 9
        N("DFT", ["xc", "", "ax1"], ["ifft"], inverse=1),
        N("DFT", ["xc", "len7", "ax1"], ["irfft_odd"], inverse=1, onesided=1),
        N("DFT", ["xc", "", "ax1"], ["irfft"], inverse=1, onesided=1),
    ]
    feeds = {"xr": f32(2, 6, 3, 1), "xc": f32(2, 6, 7, 2)}
    inits = {"ax1": np.array(1, np.int64), "ax2": np.array(-2, np.int64), "len5": np.array(5, np.int64),
             "len9": np.array(9, np.int64), "len7": np.array(7, np.int64)}
    outs = ["fwd", "fwd_trunc", "rfft_pad", "ifft", "irfft_odd", "irfft"]
    m = make_model(nodes, feeds, outs, inits, 20)
    model = import_model(m)
    got = run(build(lower(model), TARGET), feeds, model)
    assert_close(got, dict(zip(outs, ReferenceEvaluator(m).run(None, feeds))))
