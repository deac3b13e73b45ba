"""mdoc quantize --dynamic: MatMul / Gemm on int8 weights with activation scales found per call, in onnxruntime's
own dynamic form; the BERT-style encoder keeps a centered cosine of at least 0.99; the option errors are one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from mdoc.models.bert import bert_encoder
from mdoc.quantize import accuracy


def _run(path, feeds: list[dict]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runs = [session.run(None, f) for f in feeds]
    return [np.stack([r[k] for r in runs]) for k in range(len(runs[0]))]


def test_dynamic_int8_bert_tracks_float_in_onnxruntime(mdoc_cli, tmp_path):
    src, out = tmp_path / "bert.onnx", tmp_path / "bert.int8.onnx"
    onnx.save(bert_encoder(layers=2, hidden=64, heads=2, vocab_size=100, max_positions=32), src)
    r = mdoc_cli("quantize", src, "-o", out, "--dynamic", "--json")
    assert r.code == 0, r.err
    q = onnx.load(str(out))
    ops = [n.op_type for n in q.graph.node]
    # Q, K, V, the attention output, the two feed-forward layers per layer, and the pooler
    assert ops.count("MatMulInteger") == 2 * 6 + 1 and "MatMul" in ops  # attention's own products stay float
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int64),
              "attention_mask": np.ones((1, 16), np.int64)} for _ in range(8)]
    assert accuracy(_run(out, feeds), _run(src, feeds)) >= 0.99


def test_dynamic_and_calibration_data_are_one_or_the_other(mdoc_cli, tmp_path):
    src = tmp_path / "bert.onnx"
    onnx.save(bert_encoder(layers=1, hidden=32, heads=2, vocab_size=50, max_positions=16), src)
    np.savez(tmp_path / "calib.npz", input_ids=np.zeros((2, 1, 4), np.int64))
    for extra in (["--dynamic", "--calib", tmp_path / "calib.npz"], []):
        r = mdoc_cli("quantize", src, "-o", tmp_path / "out.onnx", *extra)
        assert r.code == 2 and r.err.count("\n") == 1 and "--calib DATA (static int8), --dynamic (no samples) and --weights" in r.err, r.err
