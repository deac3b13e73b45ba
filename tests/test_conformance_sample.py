"""ONNX conformance in CI: a fixed sample of onnx's operator test cases through mdoc, and the harness itself.

The full run (every case, beside onnxruntime) is `benchmarks/conformance.py`;
its latest summary is `benchmarks/conformance-latest.md`. Here a fixed sample
across the common op types must not fall below the pass count measured when
the sample was last updated, and the classifier, the pool's time limit and its
handling of dying workers are checked on hand-made cases.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mdoc.tooling import conformance as conf
from mdoc.tooling.onnx_backend import BackendError, MdocBackend

# Common op types, one or two cases each (names from onnx's node test suite).
SAMPLE = (
    "test_abs", "test_add_bcast", "test_sub", "test_mul_bcast", "test_div", "test_relu", "test_sigmoid", "test_tanh",
    "test_exp", "test_log", "test_sqrt", "test_pow", "test_neg", "test_floor", "test_erf",
    "test_matmul_2d", "test_matmul_4d", "test_gemm_default_no_bias", "test_gemm_transposeB",
    "test_conv_with_strides_padding", "test_conv_with_autopad_same", "test_convtranspose", "test_maxpool_2d_default",
    "test_maxpool_2d_pads", "test_averagepool_2d_default", "test_globalaveragepool", "test_batchnorm_example",
    "test_instancenorm_example", "test_softmax_axis_1", "test_logsoftmax_axis_1", "test_concat_2d_axis_0",
    "test_transpose_default", "test_reshape_reordered_all_dims", "test_flatten_axis1", "test_squeeze",
    "test_unsqueeze_axis_0", "test_slice", "test_gather_0", "test_split_equal_parts_1d_opset18", "test_clip",
    "test_leakyrelu", "test_where_example", "test_equal", "test_less", "test_cast_FLOAT_to_DOUBLE",
    "test_reduce_mean_default_axes_keepdims_example", "test_reduce_sum_keepdims_example",
    "test_reduce_max_do_not_keepdims_example", "test_argmax_default_axis_example", "test_constant_pad",
    "test_resize_upsample_scales_nearest", "test_layer_normalization_2d_axis0", "test_gelu_tanh_1",
    "test_expand_dim_changed", "test_tile", "test_top_k", "test_identity", "test_einsum_batch_matmul",
    "test_hardsigmoid", "test_prelu_broadcast", "test_lrn", "test_depthtospace_crd_mode_example",
    "test_range_float_type_positive_delta", "test_shape", "test_size", "test_onehot_with_axis", "test_cumsum_1d",
    "test_nonzero_example", "test_mod_mixed_sign_int32",
    # added in session 2: attention and norms, element types and quantization, control flow and
    # recurrences, detection, losses, signal, run-time operands
    "test_attention_3d", "test_attention_4d", "test_rms_normalization_2d_axis0", "test_rotary_embedding",
    "test_cast_FLOAT_to_FLOAT8E4M3FN", "test_cast_FLOAT_to_INT4", "test_bitcast_float32_to_int32",
    "test_quantizelinear", "test_dequantizelinear", "test_qlinearmatmul_2D_uint8_float32", "test_matmulinteger",
    "test_if", "test_loop11", "test_scan9_sum", "test_lstm_defaults", "test_gru_defaults",
    "test_gridsample", "test_nonmaxsuppression_center_point_box_format", "test_sce_mean", "test_dft",
    "test_tril", "test_slice_neg_steps", "test_reduce_sum_do_not_keepdims_example", "test_cumsum_1d_exclusive",
    "test_range_int32_type_negative_delta_expanded",
)

# Measured on 2026-12-07 (mdoc 0.1.0, -O2 pipeline, TVM 0.27, 2 cores): all 94 pass (NonZero, data-dependent,
# got its converter; on 2026-11-23 93 did). Session 1's floor was 44 of the first 69.
# The floor only goes up: raise it when the frontend or the lowering improves.
PASS_FLOOR = 94


@pytest.fixture(scope="module")
def suite() -> dict[str, conf.Case]:
    return {c.name: c for c in conf.collect_cases(include_models=False)}


def test_sample_pass_count_does_not_drop(suite):
    cases = [suite[name] for name in SAMPLE]
    report = conf.run_conformance(cases, engines=("mdoc",), jobs=1, timeout=60, cache_dir=None, use_cache=False)
    results = report.results["mdoc"]
    passed = [n for n in SAMPLE if results[n]["status"] == conf.PASS]
    failed = "\n".join(f"  {n}: {conf.LABELS[r['status']]}: {r.get('message', '')}"
                       for n, r in results.items() if r["status"] != conf.PASS)
    print(f"{len(passed)} of {len(SAMPLE)} sample cases pass; failures:\n{failed}")
    assert len(passed) >= PASS_FLOOR, (
        f"only {len(passed)} of {len(SAMPLE)} sample cases pass, below the floor of {PASS_FLOOR}:\n{failed}")


def test_artifact_engine_compiles_once_and_never_binds(suite):
    names = ["test_reduce_sum_do_not_keepdims_example", "test_top_k", "test_resize_upsample_sizes_cubic",
             "test_resize_downsample_sizes_linear_antialias"]
    report = conf.run_conformance([suite[n] for n in names], engines=("mdoc-artifact",), jobs=1, timeout=120,
                                  cache_dir=None, use_cache=False)
    results = report.results["mdoc-artifact"]
    assert [results[n]["status"] for n in names] == [conf.PASS, conf.PASS, conf.PASS, conf.BUILD]
    assert results[names[3]]["message"].endswith("(mdoc compile --bind sizes=VALUES)")  # the onnx Backend binds it


# -- the backend interface ------------------------------------------------------------------
def test_backend_prepares_and_runs_a_case(suite):
    case = suite["test_add_bcast"]
    rep = MdocBackend.prepare(onnx.load_from_string(case.model))
    assert rep.static and len(rep.compiled_shapes) == 1
    out = rep.run(case.inputs[0])
    assert len(out) == 1
    np.testing.assert_allclose(out[0], case.outputs[0][0], rtol=1e-5)
    np.testing.assert_array_equal(out["sum"], out[0])


def test_backend_compiles_symbolic_dims_on_first_run(tiny_path):
    proto = onnx.load(tiny_path)  # x: f32[N, 4]
    rep = MdocBackend.prepare(proto)
    assert not rep.static and rep.compiled_shapes == []
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    b = onnx.numpy_helper.to_array(proto.graph.initializer[1])
    for batch in (3, 5, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        (y,) = rep.run([x])
        np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-5)
    assert rep.compiled_shapes == [((3, 4),), ((5, 4),)]


def test_backend_run_node_and_devices():
    node = helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.5)
    x = np.array([[-2.0, 1.0]], np.float32)
    (y,) = MdocBackend.run_node(node, [x])
    np.testing.assert_allclose(y, [[-1.0, 1.0]])
    assert MdocBackend.supports_device("CPU") and not MdocBackend.supports_device("CUDA")
    with pytest.raises(BackendError, match="device 'CUDA' is not supported"):
        MdocBackend.prepare(_model("Relu"), device="CUDA")


# -- the classifier -----------------------------------------------------------------------------
X = np.array([[-1, 0, 1], [2, -3, 4]], np.float32)


def _model(op: str, domain: str = "", opset: int = 17, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, [2, 3])],
                              [helper.make_tensor_value_info("y", dtype, [2, 3])])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _sequence_model() -> onnx.ModelProto:
    node = helper.make_node("SequenceConstruct", ["x"], ["s"])
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])], [seq])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


HAND_MADE = {
    # name: (model, inputs, expected outputs, status, a piece of the message)
    "passes": (_model("Relu"), [X], [np.maximum(X, 0)], conf.PASS, ""),
    "wrong_values": (_model("Relu"), [X], [np.maximum(X, 0) + 1], conf.WRONG, "6 of 6 values differ"),
    "wrong_dtype": (_model("Relu"), [X], [np.maximum(X, 0).astype(np.float64)], conf.WRONG,
                    "dtype float32, expected float64"),
    "unknown_op": (_model("Frobnicate"), [X], [X], conf.IMPORT, "unknown op 'Frobnicate'"),
    "old_opset": (_model("Relu", opset=6), [X], [X], conf.IMPORT, "opset 6"),
    "no_converter": (_model("Frobnicate", domain="com.example"), [X], [X], conf.BUILD, "no Relax converter"),
    "bad_input_dtype": (_model("Relu"), [X.astype(np.float64)], [X], conf.RUN, "is float64"),
    "strings": (_model("StringNormalizer", dtype=TensorProto.STRING), [X.astype(object)], [X.astype(object)],
                conf.SCOPE, "StringNormalizer (strings)"),
    "sequence_out": (_sequence_model(), [X], [X], conf.NOT_TENSOR, "sequence"),
}


def test_classifier_on_hand_made_cases():
    cases = [conf.Case.from_model(name, m, ins, outs) for name, (m, ins, outs, _, _) in HAND_MADE.items()]
    report = conf.run_conformance(cases, engines=("mdoc",), jobs=2, timeout=60, cache_dir=None, use_cache=False)
    for name, (_, _, _, status, fragment) in HAND_MADE.items():
        result = report.results["mdoc"][name]
        assert result["status"] == status, f"{name}: {result}"
        assert fragment in result.get("message", ""), f"{name}: {result}"
    text = conf.render_markdown(report)
    assert "| import failure | 2 |" in text and "| wrong result | 2 |" in text
    assert "unknown op '…' in the default ONNX domain" in text  # failure messages are grouped with names blanked


def _sleepy(case, opts, progress):
    progress("build")
    time.sleep(60)
    return {"status": conf.PASS}


def _dies(case, opts, progress):
    progress("build")
    os.kill(os.getpid(), signal.SIGKILL)


def _fine(case, opts, progress):
    progress("run")
    return {"status": conf.PASS}


def test_pool_kills_timeouts_and_survives_dying_workers():
    case = conf.Case.from_model("c", _model("Relu"), [X], [X])
    results = {}
    tasks = [(name, f"{__name__}:{fn}", case, conf.Options())
             for name, fn in [("slow", "_sleepy"), ("dies", "_dies"), ("after1", "_fine"), ("after2", "_fine")]]
    start = time.monotonic()
    conf.run_pool(tasks, jobs=2, timeout=3, on_result=lambda key, r: results.__setitem__(key, r))
    assert time.monotonic() - start < 45
    assert results["slow"]["status"] == conf.TIMEOUT and "during build" in results["slow"]["message"]
    assert results["dies"]["status"] == conf.BUILD
    assert results["dies"]["message"] == "worker died (signal SIGKILL) during build"
    assert results["after1"]["status"] == results["after2"]["status"] == conf.PASS


# -- the pieces of the runner ---------------------------------------------------------------------
def test_compare_follows_onnx_runner_rules():
    a = np.array([1.0, np.nan, 3.0], np.float32)
    assert conf.compare([a], [a.copy()], 1e-3, 1e-5) is None  # NaN equals NaN
    assert conf.compare([a + 1e-6], [a], 1e-3, 1e-5) is None
    assert "1 of 3 values differ" in conf.compare([a * np.float32([1, 1, 1.1])], [a], 1e-3, 1e-5)
    assert "shape [3], expected [1, 3]" in conf.compare([a], [a[None]], 1e-3, 1e-5)
    assert "dtype float32, expected float64" in conf.compare([a], [a.astype(np.float64)], 1e-3, 1e-5)
    assert conf.compare([a, a], [a], 1e-3, 1e-5) == "2 outputs, expected 1"
    assert conf.compare([np.array([True])], [np.array([False])], 1e-3, 1e-5).startswith("output 0: 1 of 1")


def test_case_collection_classifies_scope_and_op(suite):
    assert suite["test_adam"].skip == conf.SCOPE
    assert suite["test_equal_string"].skip == conf.SCOPE
    assert suite["test_strnormalizer_nostopwords_nochangecase"].skip == conf.SCOPE
    assert suite["test_sequence_insert_at_back"].skip == conf.NOT_TENSOR
    assert suite["test_cast_FLOAT_to_FLOAT8E4M3FN"].skip is None  # TensorProto data become arrays
    assert suite["test_softmax_axis_0_expanded"].op == "Softmax (expanded)"
    assert suite["test_reduce_sum_keepdims_example"].op == "ReduceSum"
    in_scope = [c for c in suite.values() if c.skip is None]
    assert len(in_scope) > 1700


def test_sample_is_deterministic_and_covers_every_op(suite):
    cases = sorted(suite.values(), key=lambda c: c.name)
    a = conf.select(cases, sample=300, seed=1)
    b = conf.select(list(reversed(cases)), sample=300, seed=1)
    assert [c.name for c in a] == [c.name for c in b] and len(a) == 300
    assert {c.op for c in a} == {c.op for c in cases if c.skip is None}
    assert all(c.name.startswith("test_conv") for c in conf.select(cases, pattern="^test_conv"))


def test_result_cache_round_trip(tmp_path):
    ident = {"engine": "mdoc", "mdoc": "0", "source": "abc"}
    cache = conf.ResultCache(tmp_path, ident)
    cache.put("test_a", {"status": conf.PASS})
    cache.put("test_b", {"status": conf.TIMEOUT, "timeout_s": 10})
    cache.save()
    again = conf.ResultCache(tmp_path, ident)
    assert again.get("test_a", 60) == {"status": conf.PASS}
    assert again.get("test_b", 10) is not None and again.get("test_b", 60) is None  # a longer limit reruns it
    assert conf.ResultCache(tmp_path, dict(ident, source="def")).get("test_a", 60) is None
    assert len(conf.source_hash()) == 64
