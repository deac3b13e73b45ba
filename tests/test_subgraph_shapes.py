"""Shapes inside subgraphs, end to end: an LSTM in a nested If body that reads the outer input and state.

The model has the shape of Silero-VAD's real export (torch.onnx): outer inputs
`input` f32[?,?], `state` f32[2,?,128] and `sr` i64[]; If on sr; inside the
16 kHz branch an If on the input's length, whose long branch runs a strided
Conv front end and one LSTM step from the outer state. Every constant (axes,
weights) lives in the outer graph, so ONNX's inference leaves the branch's
ranks unknown and decompose-rnn used to refuse the LSTM's `f32[*]` X.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mdoc
from mdoc.onnx_import import import_model
from mdoc.types import TensorType

ort = pytest.importorskip("onnxruntime")

HIDDEN = 128
F = TensorProto.FLOAT


def silero_like(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weight(name, shape, scale=0.1):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    def ints(name, value):
        return numpy_helper.from_array(np.asarray(value, np.int64), name)

    h = HIDDEN
    inits = [weight("conv_w", (h, 1, 64)), weight("conv_b", (h,)), weight("lstm_w", (1, 4 * h, h)),
             weight("lstm_r", (1, 4 * h, h)), weight("lstm_b", (1, 8 * h)), weight("dec_w", (h, 1)),
             ints("k16", 16000), ints("k256", 256), ints("ax0", [0]), ints("ax1", [1]), ints("i0", 0), ints("i1", 1)]
    n = helper.make_node

    def untyped(*names):
        return [helper.make_tensor_value_info(name, F, None) for name in names]

    long = helper.make_graph([
        n("Unsqueeze", ["input", "ax1"], ["x3"]),  # [batch, 1, samples]
        n("Conv", ["x3", "conv_w", "conv_b"], ["frames"], strides=[32]),
        n("Relu", ["frames"], ["act"]),
        n("ReduceMean", ["act"], ["feat"], axes=[2], keepdims=0),
        n("Unsqueeze", ["feat", "ax0"], ["seq"]),  # one LSTM step
        n("Gather", ["state", "i0"], ["h0"], axis=0),
        n("Gather", ["state", "i1"], ["c0"], axis=0),
        n("Unsqueeze", ["h0", "ax0"], ["h0u"]),
        n("Unsqueeze", ["c0", "ax0"], ["c0u"]),
        n("LSTM", ["seq", "lstm_w", "lstm_r", "lstm_b", "", "h0u", "c0u"], ["y", "yh", "yc"], hidden_size=h,
          name="decoder_rnn"),
        n("Concat", ["yh", "yc"], ["new_state"], axis=0),
        n("Squeeze", ["yh", "ax0"], ["hs"]),
        n("MatMul", ["hs", "dec_w"], ["logit"]),
        n("Sigmoid", ["logit"], ["prob"]),
    ], "long", [], untyped("prob", "new_state"))
    short = helper.make_graph([
        n("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
        n("Sigmoid", ["mean"], ["s_prob"]),
        n("Identity", ["state"], ["s_state"]),
    ], "short", [], untyped("s_prob", "s_state"))
    then16 = helper.make_graph([
        n("Shape", ["input"], ["shape"]),
        n("Gather", ["shape", "i1"], ["length"], axis=0),
        n("Greater", ["length", "k256"], ["is_long"]),
        n("If", ["is_long"], ["t_prob", "t_state"], then_branch=long, else_branch=short),
    ], "then_16k", [], untyped("t_prob", "t_state"))
    other = helper.make_graph([
        n("ReduceMax", ["input"], ["peak"], axes=[1], keepdims=1),
        n("Tanh", ["peak"], ["o_prob"]),
        n("Identity", ["state"], ["o_state"]),
    ], "else_other", [], untyped("o_prob", "o_state"))
    graph = helper.make_graph(
        [n("Equal", ["sr", "k16"], ["is16"]),
         n("If", ["is16"], ["output", "stateN"], then_branch=then16, else_branch=other)],
        "silero_like",
        [helper.make_tensor_value_info("input", F, [None, None]),
         helper.make_tensor_value_info("state", F, [2, None, h]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", F, [None, 1]),
         helper.make_tensor_value_info("stateN", F, [None, None, None])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _feeds(batch: int, length: int, sr: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((batch, length)).astype(np.float32),
            "state": rng.standard_normal((2, batch, HIDDEN)).astype(np.float32),
            "sr": np.array(sr, np.int64)}


def test_the_lstm_inside_nested_ifs_is_typed_on_import():
    model = import_model(silero_like())
    lstm = next(node for node in model.graph.walk() if node.op == "onnx.LSTM")
    x, w, r, b, _, h0, c0 = lstm.inputs
    assert x.type == TensorType(x.type.dtype, (1, None, HIDDEN))
    assert h0.type.shape[0] == 1 and h0.type.shape[2] == HIDDEN and c0.type.rank == 3
    y, yh, yc = lstm.outputs
    assert y.type.shape[:2] == (1, 1) and y.type.shape[3] == HIDDEN
    assert yh.type.rank == 3 and yh.type.shape[2] == HIDDEN
    prob = next(o for node in model.graph.walk() for o in node.outputs if o.name == "prob")
    assert prob.type.rank == 2 and prob.type.shape[1] == 1


def test_mdoc_print_shows_the_body_types(mdoc_cli, tmp_path):
    path = tmp_path / "silero_like.onnx"
    onnx.save(silero_like(), path)
    r = mdoc_cli("print", path)
    assert r.code == 0, r.err
    assert "%seq = onnx.Unsqueeze(%feat, %ax0) : f32[1,?,128]" in r.out
    assert "%x3 = onnx.Unsqueeze(%input, %ax1) : f32[?,1,?]" in r.out
    assert "%frames = onnx.Conv(%x3, %conv_w, %conv_b) {strides = [32]} : f32[?,128,?]" in r.out
    assert "f32[*]" not in r.out


@pytest.mark.parametrize("batch,length", [(1, 400), (3, 1000)])
def test_compiled_matches_onnxruntime_at_two_lengths(batch, length, tmp_path):
    pytest.importorskip("tvm")
    proto = silero_like()
    model = import_model(proto)
    # mdoc compile binds unnamed dims (?) to 1 until symbolic dims stay symbolic: give the sizes here
    for v in model.graph.inputs:
        if v.name == "input":
            v.type = TensorType(v.type.dtype, (batch, length))
        elif v.name == "state":
            v.type = TensorType(v.type.dtype, (2, batch, HIDDEN))
    run = mdoc.load(mdoc.compile(model, "x86", tmp_path / "art", show_progress=False))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed, sr in enumerate((16000, 8000)):
        feeds = _feeds(batch, length, sr, seed)
        want = session.run(None, feeds)
        got = run(**feeds)
        assert list(got) == ["output", "stateN"]
        for (name, g), w in zip(got.items(), want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"{name} at sr={sr}")

