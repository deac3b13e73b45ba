"""One artifact for every size the model declares: `mdoc compile` keeps symbolic dims, the
hand kernels take them at run time, and specializing is a flag the user gives."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import mdoc
from mdoc.onnx_import import import_model
from mdoc.symbolic_dims import unify_dims
from mdoc.pass_manager import PassManager, parse_pipeline


def _cnn() -> onnx.ModelProto:
    """A small NCHW CNN with a symbolic batch: a strided stem, a 3x3 conv with a residual, a
    depthwise conv, pooling, a classifier (what the NCHWc layout plan and Winograd take)."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32))  # noqa: E731
    inits = []

    def const(name, *shape):
        t = w(*shape)
        t.name = name
        inits.append(t)
        return name

    N = helper.make_node
    nodes = [N("Conv", ["x", const("w0", 32, 3, 3, 3), const("b0", 32)], ["c0"], strides=[2, 2], pads=[1, 1, 1, 1]),
             N("Relu", ["c0"], ["r0"]),
             N("Conv", ["r0", const("w1", 32, 32, 3, 3), const("b1", 32)], ["c1"], pads=[1, 1, 1, 1]),
             N("Add", ["c1", "r0"], ["a1"]), N("Relu", ["a1"], ["r1"]),
             N("Conv", ["r1", const("w2", 32, 1, 3, 3), const("b2", 32)], ["c2"], pads=[1, 1, 1, 1], group=32),
             N("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             N("GlobalAveragePool", ["p"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("Gemm", ["f", const("wf", 10, 32), const("bf", 10)], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_one_artifact_serves_every_batch(mdoc_cli, tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(_cnn(), model)
    art = tmp_path / "cnn.x86"
    r = mdoc_cli("compile", str(model), "-t", "x86", "-o", str(art), "--no-tuning")
    assert r.code == 0, r.err
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["dynamic_dims"] == {"x": ["N"]}
    assert manifest["inputs"][0]["shape"] == ["N", 3, 32, 32]
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    run = mdoc.load(art)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(run(x=x)["y"], sess.run(None, {"x": x})[0], rtol=1e-3, atol=1e-4)


def test_symbolic_batch_takes_the_hand_kernels(tmp_path):
    """The conv family (NCHWc convs, Winograd, depthwise, pools, layout copies) is built with a
    run-time batch, not left to the generic schedule."""
    from mdoc.targets.relax.lower import lower
    from mdoc.targets.relax.plan_layout import PlanLayout
    from mdoc.targets.relax.cpu_strategy import cpu_kernels_for
    from mdoc.targets.presets import resolve_target

    model = import_model(_cnn())
    PassManager([*parse_pipeline("infer-shapes,fold-constants,fuse-conv-bn,dce"), PlanLayout()]).run(model)
    spec = resolve_target("x86")
    mod = lower(model, target=spec.tvm, kernels=cpu_kernels_for(spec.cpu))
    names = [gv.name_hint for gv in mod.get_global_vars()]
    assert any(n.startswith("conv2d_") and "nchwc" in n for n in names), names
    assert any(n.startswith("dwconv2d_") for n in names), names
    assert not any(n.startswith("fused_conv2d") for n in names), names


def test_shape_specializes_one_input(mdoc_cli, tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(_cnn(), model)
    art = tmp_path / "cnn2.x86"
    r = mdoc_cli("compile", str(model), "-o", str(art), "--shape", "x=2x3x32x32", "--no-tuning")
    assert r.code == 0, r.err
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["dynamic_dims"] == {} and manifest["inputs"][0]["shape"] == [2, 3, 32, 32]
    r = mdoc_cli("compile", str(model), "-o", str(tmp_path / "bad"), "--shape", "x=2x4x32x32")
    assert r.code == 2 and "--shape x: dim 1 is 3 in the model, not 4" in r.err
    r = mdoc_cli("compile", str(model), "-o", str(tmp_path / "bad"), "--shape", "image=1x3x32x32")
    assert r.code == 2 and "--shape names 'image', which is not a graph input (inputs: x)" in r.err
    r = mdoc_cli("compile", str(model), "-o", str(tmp_path / "bad"), "--shape", "x=1x3xAx32")
    assert r.code == 2 and "is not INPUT=DIMS" in r.err


def test_unify_dims_names_what_the_graph_makes_equal():
    """ONNX names each meeting of two symbols afresh; a broadcast, a MatMul's contraction and a
    residual Add say they are one."""
    N = helper.make_node
    nodes = [N("MatMul", ["x", "w"], ["h"]), N("Add", ["h", "r"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8]),
                     helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", "S", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")],
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, ["unk__0", "unk__1", 4])])
    model = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert unify_dims(model)
    types = {v.name: v.type.shape for node in model.graph for v in node.outputs}
    assert types["h"] == ("B", "S", 4)
    assert not unify_dims(model)  # nothing left to do


def test_compile_reports_generic_kernels(mdoc_cli, tmp_path):
    """A conv over run-time H and W takes the generic kernel, and `mdoc compile` says so."""
    rng = np.random.default_rng(1)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w")])
    model = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    r = mdoc_cli("compile", str(model), "-o", str(tmp_path / "conv.x86"), "--no-tuning")
    assert r.code == 0, r.err
    assert "1 node took generic kernels for dims known only at run time (onnx.Conv" in r.out
    manifest = json.loads((tmp_path / "conv.x86" / "manifest.json").read_text())
    assert manifest["dynamic_dims"] == {"x": ["H", "W"]} and len(manifest["generic_kernels"]) == 1
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    run = mdoc.load(tmp_path / "conv.x86")
    for h, w in ((5, 7), (12, 9)):
        x = rng.standard_normal((1, 8, h, w)).astype(np.float32)
        np.testing.assert_allclose(run(x=x)["y"], sess.run(None, {"x": x})[0], rtol=1e-3, atol=1e-4)


def test_lstm_with_symbolic_batch_and_length(tmp_path):
    """decompose-rnn's Loop carries [N, H] state: inside the body's Relax function N must be the
    function's own var, shared by every parameter of that size, or Relax cannot prove h and c
    agree and their product fails to legalize (it did, exit 3, with N and S symbolic). Bidirectional:
    the reverse direction's outputs are gathered back with run-time indices over the loop's
    run-time length (a Gather whose index wrap failed in TVM's FuseTIR, PP-OCR's recognizer)."""
    rng = np.random.default_rng(0)
    hidden, features = 16, 8
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
             for name, s in (("W", (2, 4 * hidden, features)), ("R", (2, 4 * hidden, hidden)), ("B", (2, 8 * hidden)))]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h"], hidden_size=hidden, direction="bidirectional")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["S", "N", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["S", 2, "N", hidden]),
                               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [2, "N", hidden])], inits)
    model = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    art = mdoc.compile(str(model), "x86", tmp_path / "lstm.x86")
    run, sess = mdoc.load(art), ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for s, n in ((5, 1), (9, 3)):
        x = rng.standard_normal((s, n, features)).astype(np.float32)
        got = run(x=x)
        for name, want in zip(("y", "y_h"), sess.run(None, {"x": x})):
            np.testing.assert_allclose(got[name], want, rtol=1e-3, atol=1e-4)


def test_symbolic_spatial_dims_that_relax_cannot_prove_equal(tmp_path):
    """An FPN-style Add and Concat of a stride-2 conv's output with an upsampled deeper map: over
    run-time H and W their dims are different expressions ((h - 1) // 2 + 1 against 2 * ...), which
    Relax cannot prove equal, and the Add failed to legalize (exit 3). The operands are match-cast
    to one shape, checked at run time."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), name)
             for name, s in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             N("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             N("Resize", ["c2", "", "scales"], ["up"], mode="nearest"),
             N("Add", ["c1", "up"], ["sum"]), N("Concat", ["sum", "up"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = tmp_path / "fpn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    art = mdoc.compile(str(model), "x86", tmp_path / "fpn.x86")
    run, sess = mdoc.load(art), ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for hw in ((32, 32), (24, 40)):
        x = rng.standard_normal((1, 3, *hw)).astype(np.float32)
        np.testing.assert_allclose(run(x=x)["y"], sess.run(None, {"x": x})[0], rtol=1e-3, atol=1e-4)


def test_recognizer_over_a_run_time_width(tmp_path):
    """A CRNN text recognizer (PP-OCR's shape): a conv over an image of run-time width W, its
    columns as a sequence into a bidirectional LSTM. The reverse direction gathers its outputs with
    run-time indices over a length that a match_cast defined; normalizing them through a
    shape_to_tensor of that length failed in TVM's FuseTIR (exit 3), and the conv's NHWC padding over
    W + 2 columns fused with the 3 channels inside them failed TVM's iter-map split."""
    rng = np.random.default_rng(0)
    c, hidden = 8, 8
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
             for name, s in (("wc", (c, 3, 8, 3)), ("W", (2, 4 * hidden, c)), ("R", (2, 4 * hidden, hidden)),
                             ("B", (2, 8 * hidden)))]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    N = helper.make_node
    nodes = [N("Conv", ["x", "wc"], ["f"], pads=[0, 1, 0, 1], strides=[8, 2]),
             N("Squeeze", ["f", "axis2"], ["s"]), N("Transpose", ["s"], ["seq"], perm=[2, 0, 1]),
             N("LSTM", ["seq", "W", "R", "B"], ["y"], hidden_size=hidden, direction="bidirectional")]
    graph = helper.make_graph(nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = tmp_path / "crnn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    art = mdoc.compile(str(model), "x86", tmp_path / "crnn.x86")
    run, sess = mdoc.load(art), ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for w in (40, 96):
        x = rng.standard_normal((1, 3, 8, w)).astype(np.float32)
        np.testing.assert_allclose(run(x=x)["y"], sess.run(None, {"x": x})[0], rtol=1e-3, atol=1e-4)


def test_softmax_over_a_run_time_length_of_whole_vectors(tmp_path):
    """Attention scores over a run-time key count: at 16 or 32 keys (whole vectors, an empty tail)
    the row kernel's tail reduction never ran its init, and every thread but the first summed the
    scratch's old bytes (rows of the second batch summed to -0.13)."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "scores", [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", "S", 4]),
                                                helper.make_tensor_value_info("kt", TensorProto.FLOAT, ["N", 4, "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", "T"])])
    path = tmp_path / "scores.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    run = mdoc.load(mdoc.compile(str(path), "x86", tmp_path / "scores.x86", show_progress=False))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n, s, t in [(2, 4, 16), (2, 8, 32), (3, 5, 21)]:
        feeds = {"q": rng.standard_normal((n, s, 4)).astype(np.float32),
                 "kt": rng.standard_normal((n, 4, t)).astype(np.float32)}
        np.testing.assert_allclose(run(**feeds)["y"], sess.run(None, feeds)[0], rtol=1e-4, atol=1e-6)
