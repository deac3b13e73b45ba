"""Models over the external-data threshold are read and written without a second copy of their weights
(issue 22: a 4.4 GB Llama through import, -O2, int4 and compile; benchmarks/big_model.py at full size)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from mdoc import onnx_export
from mdoc.external_data import ExternalWeights
from mdoc.model_io import load_model, save_model
from mdoc.models.llama import llama_decoder

BIG = (1024, 2048)  # 8 MiB of float32: "large" for these tests


def _big_matmul_model(folder) -> str:
    """x @ W with W [1024, 2048] in external data, written by ExternalWeights."""
    w = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    with ExternalWeights(folder / "big.onnx.data") as external:
        init = external.tensor(w, "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, BIG[0]])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, BIG[1]])],
                              initializer=[init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, folder / "big.onnx")
    return str(folder / "big.onnx")


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_external_weights_writes_a_memory_map_without_copying_it(tmp_path):
    path = tmp_path / "w.bin"
    np.random.default_rng(1).standard_normal(BIG).astype(np.float32).tofile(path)
    mapped = np.memmap(path, np.float32, mode="r", shape=BIG)
    with ExternalWeights(tmp_path / "out.data") as external:
        peak = _peak_bytes(lambda: external.tensor(mapped, "w"))
        small = external.tensor(np.ones(4, np.float32), "small")
    assert peak < mapped.nbytes // 16
    assert small.data_location == onnx.TensorProto.DEFAULT  # under the threshold: inline


def test_import_keeps_external_weights_memory_mapped(tmp_path):
    model = load_model(_big_matmul_model(tmp_path))
    (w,) = [n.attrs["value"] for n in model.graph if n.op == "onnx.Constant"]
    assert isinstance(w, np.memmap) and w.shape == BIG


def test_save_streams_a_model_past_the_threshold_without_a_copy(tmp_path, monkeypatch):
    model = load_model(_big_matmul_model(tmp_path))
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1 << 20)
    out = tmp_path / "out" / "saved.onnx"
    out.parent.mkdir()
    peak = _peak_bytes(lambda: save_model(model, out))
    assert peak < BIG[0] * BIG[1] * 4 // 8  # the old export held a copy of every weight in the proto
    proto = onnx.load_model(out, load_external_data=False)
    assert proto.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert sorted(p.name for p in out.parent.iterdir()) == ["saved.onnx", "saved.onnx.data"]
    x = np.random.default_rng(2).standard_normal((2, BIG[0])).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "big.onnx")).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_llama_builder_streams_the_same_weights(tmp_path):
    inline = llama_decoder(seed=3)
    with ExternalWeights(tmp_path / "llama.onnx.data", threshold=1024) as external:
        streamed = llama_decoder(seed=3, external=external)
    onnx.save_model(streamed, tmp_path / "llama.onnx")
    streamed = onnx.load_model(tmp_path / "llama.onnx")
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load_model(tmp_path / "llama.onnx", load_external_data=False).graph.initializer)
    want = {t.name: numpy_helper.to_array(t) for t in inline.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in streamed.graph.initializer}
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_shape_inference_does_not_copy_the_weights(tmp_path):
    from mdoc.shape_inference import infer_types

    model = load_model(_big_matmul_model(tmp_path))
    assert _peak_bytes(lambda: infer_types(model)) < BIG[0] * BIG[1] * 4 // 8  # it exported every weight before


def test_cse_keys_a_weight_without_copying_it(tmp_path):
    from mdoc.passes.cse import array_key

    path = tmp_path / "w.bin"
    np.random.default_rng(1).standard_normal(BIG).astype(np.float32).tofile(path)
    mapped = np.memmap(path, np.float32, mode="r", shape=BIG)
    assert _peak_bytes(lambda: array_key(mapped)) < mapped.nbytes // 16
    assert array_key(mapped) == array_key(np.array(mapped)) != array_key(np.array(mapped[::-1]))
