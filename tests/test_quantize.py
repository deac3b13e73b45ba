"""mdoc quantize: observers in the IR, calibration, QDQ that onnxruntime and mdoc's artifacts run alike."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import mdoc
from mdoc.calibration import calibrate
from mdoc.errors import MdocError
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, make_pass
from mdoc.printer import print_model


def _cnn() -> onnx.ModelProto:
    """Conv -> Relu -> Conv (two readers of one activation) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
             for name, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 3, 3)), ("w3", (8, 8, 1, 1)),
                             ("fw", (10, 8)), ("fb", (10,)))]
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             N("Conv", ["r1", "w3"], ["c3"], name="conv3"), N("Add", ["c2", "c3"], ["s"]),
             N("GlobalAveragePool", ["s"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def op_counts(graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def _samples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 3, 16, 16)).astype(np.float32)


def _centered_cosine(a, b) -> float:
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_observers_mark_each_quantized_activation_once():
    model = import_model(_cnn())
    PassManager([make_pass("insert-observers", {"exclude": "fc"})]).run(model)
    text = print_model(model)
    assert op_counts(model.graph)["mdoc.observe"] == 2  # x, and r1 shared by conv2 and conv3; fc excluded
    assert "mdoc.observe(%x)" in text and "mdoc.observe(%r1)" in text


def test_calibration_writes_ranges_and_quantize_static_makes_qdq():
    model = import_model(_cnn())
    PassManager([make_pass("insert-observers")]).run(model)
    samples = [{"x": s} for s in _samples(4, 0)]
    assert calibrate(model, samples) == 3
    obs = [n for n in model.graph if n.op == "mdoc.observe"]
    x_obs = next(n for n in obs if n.input(0).name == "x")
    assert x_obs.attrs["min"] == pytest.approx(min(float(s["x"].min()) for s in samples))
    PassManager([make_pass("quantize-static")]).run(model)
    counts = op_counts(model.graph)
    assert "mdoc.observe" not in counts
    assert counts["onnx.QuantizeLinear"] == 3 and counts["onnx.DequantizeLinear"] == 3 + 4  # 4 weights


def _u8_error(values: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of `values` through an affine u8 grid over [lo, hi] (zero kept exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0
    zero = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zero, 0, 255)
    return float(np.mean(((q - zero) * scale - values) ** 2))


def test_entropy_calibration_clips_outliers_that_minmax_keeps():
    samples = _samples(4, 1)
    outlier = np.zeros(samples.size, bool)
    outlier[::997] = True  # about 0.1% of the inputs are outliers tens of sigmas out
    samples.reshape(-1)[outlier] *= 60.0
    bulk = samples.reshape(-1)[~outlier]
    feeds = [{"x": s} for s in samples]
    errors = {}
    for method in ("minmax", "entropy"):
        model = import_model(_cnn())
        PassManager([make_pass("insert-observers")]).run(model)
        calibrate(model, feeds, method=method)
        x_obs = next(n for n in model.graph if n.op == "mdoc.observe" and n.input(0).name == "x")
        errors[method] = _u8_error(bulk, x_obs.attrs["min"], x_obs.attrs["max"])
        if method == "entropy":
            assert x_obs.attrs["max"] < float(samples.max()) and x_obs.attrs["min"] > float(samples.min())
    assert errors["entropy"] < 0.2 * errors["minmax"], errors  # the 99.9% that are not outliers: a finer grid


def test_quantize_static_refuses_an_uncalibrated_observer():
    model = import_model(_cnn())
    PassManager([make_pass("insert-observers")]).run(model)
    with pytest.raises(MdocError, match="observer '.*' has no range; calibrate"):
        PassManager([make_pass("quantize-static")]).run(model)


def test_quantized_model_tracks_float_and_mdoc_runs_it_like_onnxruntime(mdoc_cli, tmp_path):
    src, out = tmp_path / "cnn.onnx", tmp_path / "cnn.int8.onnx"
    onnx.save(_cnn(), src)
    np.savez(tmp_path / "calib.npz", x=_samples(16, 0))
    r = mdoc_cli("quantize", src, "-o", out, "--calib", tmp_path / "calib.npz", "--json")
    assert r.code == 0, r.err
    q = onnx.load(str(out))
    weights = [t for t in q.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1]
    assert len(weights) == 4
    x = _samples(8, 1)[:, 0]
    fp32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    int8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert _centered_cosine(int8, fp32) > 0.99
    run = mdoc.load(mdoc.compile(str(out), "x86", tmp_path / "cnn.int8.x86"))
    # equal but for an activation that rounds to the neighbouring step (x / scale computed another way)
    np.testing.assert_allclose(run(x=x)["y"], int8, rtol=0, atol=0.02 * float(np.abs(int8).max()))


def test_calibration_data_that_does_not_fit_is_one_line(mdoc_cli, tmp_path):
    src = tmp_path / "cnn.onnx"
    onnx.save(_cnn(), src)
    np.savez(tmp_path / "bad.npz", image=_samples(2, 0))
    r = mdoc_cli("quantize", src, "-o", tmp_path / "q.onnx", "--calib", tmp_path / "bad.npz")
    assert r.code == 2
    assert "no array for input x (it has image)" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_accuracy_guard_returns_the_costliest_ops_to_float(mdoc_cli, tmp_path):
    src, out = tmp_path / "cnn.onnx", tmp_path / "cnn.int8.onnx"
    onnx.save(_cnn(), src)
    np.savez(tmp_path / "calib.npz", x=_samples(4, 0))
    np.savez(tmp_path / "eval.npz", x=_samples(8, 1))
    r = mdoc_cli("quantize", src, "-o", out, "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz",
                 "--max-drop", "0.0005", "--json")
    assert r.code == 0, r.err
    import json
    summary = json.loads(r.out)
    assert summary["fp32_fallback"] and summary["within_budget"]
    assert summary["accuracy"] >= 1 - 0.0005
    assert summary["quantized_ops"] == 4 - len(summary["fp32_fallback"])
