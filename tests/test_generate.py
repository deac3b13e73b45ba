"""`mdoc generate` / `mdoc.generate`: a decoder with past key/values, prefill then one call per token.

The decoder is built here: token and position embeddings, one attention layer over the
concatenated cache (two heads), a residual, the logits; inputs and outputs named as
Optimum and torch.onnx name them. Greedy tokens must equal the same loop on onnxruntime.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import mdoc

VOCAB, D, HEADS = 23, 8, 2


def decoder_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = {"emb": rng.standard_normal((VOCAB, D)), "pos": rng.standard_normal((64, D)),
         "wq": rng.standard_normal((D, D)), "wk": rng.standard_normal((D, D)), "wv": rng.standard_normal((D, D)),
         "wo": rng.standard_normal((D, VOCAB)) * 2}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
              {"heads": [0, 0, HEADS, D // HEADS], "merged": [0, 0, D], "one": [1], "two": [2], "axis0": [0]}.items()]
    N = helper.make_node
    nodes = [N("Shape", ["past_key_values.0.key"], ["ps"]), N("Slice", ["ps", "two", "two_end"], ["plen"]),
             N("Shape", ["input_ids"], ["ids_shape"]), N("Slice", ["ids_shape", "one", "two"], ["slen"]),
             N("Add", ["plen", "slen"], ["end"]), N("Squeeze", ["plen", "axis0"], ["p0"]),
             N("Squeeze", ["end", "axis0"], ["e0"]), N("Range", ["p0", "e0", "step"], ["positions"]),
             N("Gather", ["emb", "input_ids"], ["tok"]), N("Gather", ["pos", "positions"], ["pe"]),
             N("Add", ["tok", "pe"], ["x"])]
    for name in ("q", "k", "v"):
        nodes += [N("MatMul", ["x", f"w{name}"], [f"{name}2"]), N("Reshape", [f"{name}2", "heads"], [f"{name}4"]),
                  N("Transpose", [f"{name}4"], [f"{name}h"], perm=[0, 2, 1, 3])]
    nodes += [N("Concat", ["past_key_values.0.key", "kh"], ["present.0.key"], axis=2),
              N("Concat", ["past_key_values.0.value", "vh"], ["present.0.value"], axis=2),
              N("Transpose", ["present.0.key"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["qh", "kt"], ["s"]),
              N("Softmax", ["s"], ["p"], axis=-1), N("MatMul", ["p", "present.0.value"], ["c"]),
              N("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]), N("Reshape", ["ct", "merged"], ["cm"]),
              N("Add", ["cm", "x"], ["h"]), N("MatMul", ["h", "wo"], ["logits"])]
    inits += [numpy_helper.from_array(np.array([3], np.int64), "two_end"),
              numpy_helper.from_array(np.array(1, np.int64), "step")]
    cache = ["batch", HEADS, "past", D // HEADS]
    grown = ["batch", HEADS, "total", D // HEADS]
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, cache),
         helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, cache)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, grown),
         helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, grown)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def ort_greedy(path, prompt, new) -> list[int]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    empty = np.zeros((1, HEADS, 0, D // HEADS), np.float32)
    logits, k, v = s.run(None, {"input_ids": np.array([prompt]), "past_key_values.0.key": empty,
                                "past_key_values.0.value": empty})
    tokens = [int(logits[0, -1].argmax())]
    while len(tokens) < new:
        logits, k, v = s.run(None, {"input_ids": np.array([[tokens[-1]]]), "past_key_values.0.key": k,
                                    "past_key_values.0.value": v})
        tokens.append(int(logits[0, -1].argmax()))
    return tokens


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoder")
    onnx.save(decoder_model(), tmp / "decoder.onnx")
    return tmp / "decoder.onnx", mdoc.compile(str(tmp / "decoder.onnx"), "x86", tmp / "decoder.x86", show_progress=False)


def test_greedy_tokens_equal_onnxruntime(compiled):
    model, art = compiled
    prompt = [3, 14, 7, 1, 20]
    got = mdoc.generate(art, prompt, 12)
    want = ort_greedy(model, prompt, 12)
    assert got["tokens"] == want and len(set(want)) > 2, (got["tokens"], want)
    assert got["prompt_tokens"] == 5 and got["new_tokens"] == 12 and got["decode_tokens_per_s"] > 0


def test_sampling_is_seeded_and_stops_at_eos(compiled):
    _, art = compiled
    a = mdoc.generate(art, [3, 14], 10, temperature=1.0, top_k=5, seed=7)["tokens"]
    assert a == mdoc.generate(art, [3, 14], 10, temperature=1.0, top_k=5, seed=7)["tokens"]
    stop = mdoc.generate(art, [3, 14], 10, eos=mdoc.generate(art, [3, 14], 1)["tokens"][0])
    assert len(stop["tokens"]) == 1


def test_cli(compiled, mdoc_cli):
    model, art = compiled
    r = mdoc_cli("generate", art, "--input-ids", "3,14,7,1,20", "--max-new-tokens", "6", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["tokens"] == ort_greedy(model, [3, 14, 7, 1, 20], 6)
    r = mdoc_cli("generate", art, "--input-ids", "3,x")
    assert r.code == 2 and "--input-ids: '3,x' is not a comma-separated list of token ids" in r.err


def test_a_model_without_a_cache_is_refused(mdoc_cli, tmp_path):
    art = mdoc.compile("models/sample.onnx", "x86", tmp_path / "s.x86", show_progress=False)
    r = mdoc_cli("generate", art, "--input-ids", "1")
    assert r.code == 2 and r.err.count("\n") == 1 and "not a decoder: no input 'input_ids'" in r.err, r.err
