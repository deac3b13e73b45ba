"""The Llama-style decoder (models/llama.py: GQA, RMSNorm, rotary embeddings, SiLU-gated MLP, past
key/values) compiled once with symbolic batch, sequence and past lengths: a prefill and decode steps
match onnxruntime, greedy generation equals onnxruntime's loop, and -O2 fuses its RMSNorms."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import mdoc
from mdoc.generation import Signature, step_feeds
from mdoc.models.llama import llama_decoder
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, pipeline_for_level

LAYERS, KV, HD = 2, 2, 16


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    onnx.save(llama_decoder(layers=LAYERS, kv_heads=KV), tmp / "llama.onnx")
    return tmp / "llama.onnx", mdoc.compile(str(tmp / "llama.onnx"), "x86", tmp / "llama.x86", show_progress=False)


def _feeds(n: int, s: int, p: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, 128, (n, s)), "attention_mask": np.ones((n, p + s), np.int64),
             "position_ids": np.broadcast_to(np.arange(p, p + s), (n, s)).copy()}
    for i in range(LAYERS):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = rng.standard_normal((n, KV, p, HD)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("n,s,p", [(1, 6, 0), (1, 1, 6), (2, 3, 9)], ids=["prefill", "decode", "batch-2 chunk"])
def test_a_step_matches_onnxruntime(compiled, n, s, p):
    model, art = compiled
    feeds = _feeds(n, s, p, seed=s + p)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = mdoc.load(art)(**feeds)
    assert list(got) == ["logits"] + [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    for g, w in zip(got.values(), want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def ort_greedy(model, manifest, prompt: list[int], new: int) -> list[int]:
    """onnxruntime's loop, fed what mdoc's Decoder feeds (generation.step_feeds)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    sig = Signature.of(manifest, "llama")
    cache = {name: np.zeros(sig.cache_shape, np.float32) for name in sig.past}
    ids, seen, tokens = np.asarray([prompt]), 0, []
    while len(tokens) < new:
        outs = session.run(None, step_feeds(sig, ids, seen, cache))
        tokens.append(int(outs[sig.logits][0, -1].argmax()))
        cache = {name: outs[k] for name, k in zip(sig.past, sig.present)}
        seen += ids.shape[1]
        ids = np.asarray([[tokens[-1]]])
    return tokens


def test_greedy_tokens_equal_onnxruntime(compiled):
    model, art = compiled
    prompt = [5, 17, 100, 42, 9]
    got = mdoc.generate(art, prompt, 16)
    want = ort_greedy(model, mdoc.load(art).manifest, prompt, 16)
    assert got["tokens"] == want and len(set(want)) > 2, (got["tokens"], want)


def test_o2_fuses_every_rms_norm():
    model = import_model(llama_decoder(layers=LAYERS, kv_heads=KV))
    PassManager(pipeline_for_level(2)).run(model)
    ops = [n.op for n in model.graph]
    assert ops.count("mdoc.rms_norm") == 2 * LAYERS + 1 and "onnx.Sqrt" not in ops
