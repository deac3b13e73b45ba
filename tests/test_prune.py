"""Structured pruning: dependency groups, the slicing rewrite, heads, sparsity and `mdoc prune`.

The numeric checks make some channels unimportant on purpose (zero weights, zero BatchNorm
scale), so pruning exactly those must leave the outputs as onnxruntime computes them on the
original model, while every group's channel count really drops.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mdoc.errors import MdocError
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, parse_pipeline
from mdoc.pruning import KEPT_CHANNELS, ChannelAnalysis, prune_graph
from mdoc.pruning.api import prune_model
from mdoc.pruning.sparsity import sparsify

N = helper.make_node
RNG = np.random.default_rng(0)


def _w(*shape, zero=(), axis=0):
    w = (RNG.standard_normal(shape) * 0.4).astype(np.float32)
    np.moveaxis(w, axis, 0)[list(zero)] = 0
    return w


def _model(nodes, inits: dict, x_shape, y_shape, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _run(proto, x):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _prune(proto, **options):
    model = import_model(proto)
    PassManager(parse_pipeline("infer-shapes")).run(model)
    decisions = prune_graph(model.graph, **options)
    PassManager(parse_pipeline("dce")).run(model)  # the verifier runs after the pass
    return model, {d.group: d for d in decisions}


def _same_outputs(original, model, shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    pruned = export_model(model)
    onnx.checker.check_model(pruned, full_check=True)
    np.testing.assert_allclose(_run(pruned, x), _run(original, x), rtol=1e-4, atol=1e-5)


def _weight(model, node_name):
    return next(n for n in model.graph if n.name == node_name).input(1).const_value


def test_residual_add_prunes_both_branches_together():
    dead = [1, 5]
    gamma = np.ones(8, np.float32)
    gamma[dead] = 0
    beta = (RNG.standard_normal(8) * 0.1).astype(np.float32)
    beta[dead] = 0
    inits = {"wa": _w(8, 3, 3, 3, zero=dead), "ba": _w(8, zero=dead), "wb": _w(8, 8, 3, 3), "g": gamma, "be": beta,
             "m": np.zeros(8, np.float32), "v": np.ones(8, np.float32), "fw": _w(10, 8), "fb": _w(10)}
    nodes = [N("Conv", ["x", "wa", "ba"], ["a"], pads=[1] * 4, name="conv_a"), N("Relu", ["a"], ["r"]),
             N("Conv", ["r", "wb"], ["b"], pads=[1] * 4, name="conv_b"),
             N("BatchNormalization", ["b", "g", "be", "m", "v"], ["bn"]), N("Add", ["bn", "r"], ["s"]),
             N("Relu", ["s"], ["t"]), N("GlobalAveragePool", ["t"], ["p"]), N("Flatten", ["p"], ["f"]),
             N("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    proto = _model(nodes, inits, [2, 3, 8, 8], [2, 10])
    model, groups = _prune(proto, channels=0.25)
    assert groups["conv_a"].layers == ["conv_a", "conv_b"] and groups["conv_a"].kept == 6
    assert groups["conv_a"].channels == {"conv_a": [0, 2, 3, 4, 6, 7], "conv_b": [0, 2, 3, 4, 6, 7]}
    assert groups["fc"].reason == "it reaches the graph output 'y'"
    assert _weight(model, "conv_b").shape == (6, 6, 3, 3) and _weight(model, "fc").shape == (10, 6)
    _same_outputs(proto, model, [2, 3, 8, 8])


def test_depthwise_chain_follows_its_producer():
    dead = [0, 3]
    dw_bias = _w(8, zero=dead)
    inits = {"w1": _w(8, 3, 1, 1, zero=dead), "b1": _w(8, zero=dead), "dw1": _w(8, 1, 3, 3), "db1": dw_bias,
             "dw2": _w(8, 1, 3, 3), "w2": _w(4, 8, 1, 1)}
    nodes = [N("Conv", ["x", "w1", "b1"], ["a"], name="expand"), N("Relu", ["a"], ["r"]),
             N("Conv", ["r", "dw1", "db1"], ["d1"], group=8, pads=[1] * 4, name="dw1"),
             N("Clip", ["d1"], ["c"]), N("Conv", ["c", "dw2"], ["d2"], group=8, pads=[1] * 4, name="dw2"),
             N("Conv", ["d2", "w2"], ["y"], name="project")]
    proto = _model(nodes, inits, [1, 3, 6, 6], [1, 4, 6, 6])
    model, groups = _prune(proto, channels=0.25)
    assert groups["expand"].layers == ["expand"] and groups["expand"].kept == 6
    dw = next(n for n in model.graph if n.name == "dw2")
    assert dw.attrs["group"] == 6 and dw.input(1).const_value.shape == (6, 1, 3, 3)
    assert _weight(model, "project").shape == (4, 6, 1, 1)
    _same_outputs(proto, model, [1, 3, 6, 6])


def test_concat_parts_prune_separately_and_the_reader_follows():
    inits = {"wa": _w(4, 3, 1, 1, zero=[0]), "wb": _w(4, 3, 1, 1, zero=[2]), "wc": _w(5, 8, 1, 1)}
    nodes = [N("Conv", ["x", "wa"], ["a"], name="a"), N("Conv", ["x", "wb"], ["b"], name="b"),
             N("Concat", ["a", "b"], ["c"], axis=1), N("Relu", ["c"], ["r"]), N("Conv", ["r", "wc"], ["y"], name="c")]
    proto = _model(nodes, inits, [1, 3, 4, 4], [1, 5, 4, 4])
    model, groups = _prune(proto, channels=0.25)
    assert groups["a"].kept == groups["b"].kept == 3
    assert groups["a"].channels == {"a": [1, 2, 3]} and groups["b"].channels == {"b": [0, 1, 3]}
    assert _weight(model, "c").shape == (5, 6, 1, 1)
    _same_outputs(proto, model, [1, 3, 4, 4])


@pytest.mark.parametrize("opset", [11, 17, 18])
def test_split_sizes_follow_the_kept_channels(opset):
    inits = {"w0": _w(8, 3, 1, 1, zero=[1, 6]), "wa": _w(2, 4, 1, 1), "wb": _w(2, 4, 1, 1)}
    split = {11: N("Split", ["a"], ["p", "q"], axis=1), 17: N("Split", ["a"], ["p", "q"], axis=1),
             18: N("Split", ["a"], ["p", "q"], axis=1, num_outputs=2)}[opset]
    nodes = [N("Conv", ["x", "w0"], ["a"], name="conv0"), split,
             N("Conv", ["p", "wa"], ["u"], name="ca"), N("Conv", ["q", "wb"], ["v"], name="cb"), N("Add", ["u", "v"], ["y"])]
    proto = _model(nodes, inits, [1, 3, 4, 4], [1, 2, 4, 4], opset)
    model, groups = _prune(proto, channels=0.25, opset=opset)
    assert groups["conv0"].kept == 6
    assert _weight(model, "ca").shape == (2, 3, 1, 1) and _weight(model, "cb").shape == (2, 3, 1, 1)
    _same_outputs(proto, model, [1, 3, 4, 4])


def test_grouped_conv_keeps_its_channels_whole():
    inits = {"w1": _w(8, 3, 1, 1, zero=[0]), "wg": _w(8, 4, 3, 3), "w3": _w(4, 8, 1, 1, zero=[0]), "w4": _w(2, 4, 1, 1)}
    nodes = [N("Conv", ["x", "w1"], ["a"], name="conv1"), N("Conv", ["a", "wg"], ["g"], group=2, pads=[1] * 4,
                                                            name="grouped"),
             N("Relu", ["g"], ["r"]), N("Conv", ["r", "w3"], ["c"], name="conv3"), N("Conv", ["c", "w4"], ["y"], name="conv4")]
    proto = _model(nodes, inits, [1, 3, 5, 5], [1, 2, 5, 5])
    model, groups = _prune(proto, channels=0.25)
    assert groups["conv1"].kept == 8 and "grouped conv 'grouped'" in groups["conv1"].reason
    assert _weight(model, "grouped").shape == (8, 4, 3, 3)
    assert groups["conv3"].kept == 3  # the group after it still prunes
    _same_outputs(proto, model, [1, 3, 5, 5])


@pytest.mark.parametrize("op", ["Flatten", "Reshape"])
def test_flatten_into_gemm_removes_each_channels_features(op):
    inits = {"w": _w(8, 3, 3, 3, zero=[2, 7]), "fw": _w(10, 8 * 16), "fb": _w(10), "shape": np.array([0, 128], np.int64)}
    flat = N("Flatten", ["r"], ["f"], axis=1) if op == "Flatten" else N("Reshape", ["r", "shape"], ["f"])
    nodes = [N("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"), N("Relu", ["c"], ["r"]), flat,
             N("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    proto = _model(nodes, inits, [2, 3, 4, 4], [2, 10])
    model, groups = _prune(proto, channels=0.25)
    assert groups["conv"].kept == 6 and _weight(model, "fc").shape == (10, 6 * 16)
    _same_outputs(proto, model, [2, 3, 4, 4])


def test_round_to_and_what_the_analysis_freezes():
    proto = _model([N("Conv", ["x", "w"], ["c"], name="conv"), N("Relu", ["c"], ["r"]),
                    N("Conv", ["r", "w2"], ["y"], name="out")],
                   {"w": _w(32, 3, 1, 1), "w2": _w(4, 32, 1, 1)}, [1, 3, 2, 2], [1, 4, 2, 2])
    _, groups = _prune(proto, channels=0.3, round_to=16)
    assert groups["conv"].kept == 16  # 22.4 rounds to the nearest multiple of 16
    _, groups = _prune(proto, channels=0.3, round_to=8)
    assert groups["conv"].kept == 24
    analysis = ChannelAnalysis(import_model(proto).graph)
    assert [g.key for g in analysis.groups() if g.frozen] == ["out"]


def test_pass_pipeline_records_the_kept_channels():
    proto = _model([N("Conv", ["x", "w"], ["c"], name="conv"), N("Relu", ["c"], ["r"]),
                    N("Conv", ["r", "w2"], ["y"], name="out")],
                   {"w": _w(8, 3, 1, 1, zero=[3]), "w2": _w(4, 8, 1, 1)}, [1, 3, 2, 2], [1, 4, 2, 2])
    model = import_model(proto)
    PassManager(parse_pipeline("infer-shapes,prune-channels{ratio=0.125},dce")).run(model)
    assert _weight(model, "out").shape == (4, 7, 1, 1)
    assert '"conv":[0,1,2,4,5,6,7]' in export_model(model).metadata_props[-1].value
    assert KEPT_CHANNELS in model.metadata


def _bert(dead_head: int | None = None) -> onnx.ModelProto:
    from mdoc.models.bert import bert_encoder

    proto = bert_encoder(layers=1, hidden=32, heads=4, vocab_size=50, max_positions=16)
    if dead_head is not None:
        for init in proto.graph.initializer:
            if ".self." in init.name:
                a = numpy_helper.to_array(init).copy()
                a[..., dead_head * 8:(dead_head + 1) * 8] = 0
                init.CopyFrom(numpy_helper.from_array(a, init.name))
    return proto


def test_heads_prune_whole_heads_and_keep_the_outputs():
    proto = _bert(dead_head=2)
    model, report = prune_model(import_model(proto), heads=0.25)
    attention = [n for n in model.graph if n.op == "mdoc.attention"]
    assert len(attention) == 1 and attention[0].attrs["num_heads"] == 3
    heads = [g for g in report["groups"] if "heads" in g]
    assert heads[0]["kept"] == 3 and len(heads[0]["layers"]) == 3
    feeds = {"input_ids": RNG.integers(0, 50, (2, 7)).astype(np.int64), "attention_mask": np.ones((2, 7), np.int64)}
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    pruned = export_model(model)
    got = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert report["after"]["parameters"] < report["before"]["parameters"]


@pytest.mark.parametrize("pattern", ["", "2:4"])
def test_sparsify(pattern):
    proto = _model([N("Conv", ["x", "w"], ["c"], name="conv"), N("MatMul", ["c", "m"], ["y"])],
                   {"w": _w(4, 8, 1, 1), "m": _w(4, 6)}, [1, 8, 4, 4], [1, 4, 4, 6])
    model = import_model(proto)
    zeroed = sparsify(model.graph, 0.5, pattern)
    PassManager(parse_pipeline("dce")).run(model)
    conv, matmul = _weight(model, "conv"), next(n for n in model.graph if n.op == "onnx.MatMul").input(1).const_value
    assert zeroed == 16 + 12 and (conv == 0).sum() == 16 and (matmul == 0).sum() == 12
    if pattern:
        assert ((conv.reshape(4, 2, 4) == 0).sum(axis=-1) == 2).all()
        assert ((matmul.T.reshape(6, 1, 4) == 0).sum(axis=-1) == 2).all()
    with pytest.raises(MdocError, match="N:M"):
        sparsify(model.graph, 0.5, "4:2")


def test_cli_prune_and_its_errors(tmp_path, mdoc_cli):
    proto = _model([N("Conv", ["x", "w"], ["c"], name="conv"), N("Relu", ["c"], ["r"]),
                    N("Conv", ["r", "w2"], ["y"], name="out")],
                   {"w": _w(16, 3, 1, 1), "w2": _w(4, 16, 1, 1)}, [1, 3, 2, 2], [1, 4, 2, 2])
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((4, 1, 3, 2, 2)).astype(np.float32))
    out = tmp_path / "p.onnx"
    r = mdoc_cli("prune", tmp_path / "m.onnx", "-o", out, "--channels", "0.5", "--criterion", "activation",
                 "--calib", tmp_path / "calib.npz", "--round-to", "4")
    assert r.code == 0, r.err
    assert "channels 16 -> 8" in r.out and "accuracy" in r.out
    assert _run(onnx.load(out), np.zeros((1, 3, 2, 2), np.float32)).shape == (1, 4, 2, 2)
    r = mdoc_cli("prune", tmp_path / "m.onnx", "-o", out, "--channels", "0.5", "--criterion", "activation")
    assert r.code == 2 and r.err.strip().endswith("the activation criterion needs calibration samples (--calib)")
    r = mdoc_cli("prune", tmp_path / "m.onnx", "-o", out)
    assert r.code == 2 and "nothing to do" in r.err


def test_compile_prune_runs_prune_channels_first(tmp_path, mdoc_cli):
    proto = _model([N("Conv", ["x", "w"], ["c"], name="conv"), N("Relu", ["c"], ["r"]),
                    N("Conv", ["r", "w2"], ["y"], name="out")],
                   {"w": _w(32, 3, 1, 1, zero=range(16)), "w2": _w(4, 32, 1, 1)}, [1, 3, 4, 4], [1, 4, 4, 4])
    onnx.save(proto, tmp_path / "m.onnx")
    r = mdoc_cli("compile", tmp_path / "m.onnx", "-t", "x86", "-o", tmp_path / "m.x86", "--prune", "0.5", "--json")
    assert r.code == 0, r.err
    import mdoc

    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    got = mdoc.load(tmp_path / "m.x86")(x=x)["y"]
    np.testing.assert_allclose(got, _run(proto, x), rtol=1e-4, atol=1e-5)
    manifest = (tmp_path / "m.x86" / "manifest.json").read_text()
    assert "prune-channels" in manifest


def test_cli_sparsity_writes_only_the_sparse_weights(tmp_path, mdoc_cli):
    proto = _model([N("Conv", ["x", "w"], ["y"], name="conv")], {"w": _w(8, 8, 1, 1)}, [1, 8, 2, 2], [1, 8, 2, 2])
    onnx.save(proto, tmp_path / "m.onnx")
    r = mdoc_cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "s.onnx", "--pattern", "2:4")
    assert r.code == 0, r.err
    assert "sparsity: 32 weights zeroed" in r.out
    (w,) = onnx.load(tmp_path / "s.onnx").graph.initializer
    assert (numpy_helper.to_array(w) == 0).sum() == 32
