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
    from mdoc.targets.relax import plan_layout  # noqa: F401 - registers plan-layout
    from mdoc.targets.relax.lower import lower
    from mdoc.targets.relax.cpu_strategy import cpu_kernels_for
    from mdoc.targets.presets import resolve_target

    model = import_model(_cnn())
    PassManager(parse_pipeline("infer-shapes,fold-constants,fuse-conv-bn,dce,plan-layout")).run(model)
    spec = resolve_target("x86")
    mod = lower(model, target=spec.tvm, kernels=cpu_kernels_for(spec.tvm))
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
