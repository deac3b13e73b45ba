"""fuse-rms-norm: the RMSNorm that LLaMA-style exports write becomes one mdoc.rms_norm, numerically equal."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, parse_pipeline

N = helper.make_node
H = 16


def _model(reciprocal: bool | str, mul_square: bool, opset: int = 17) -> onnx.ModelProto:
    """Hugging Face's LlamaRMSNorm as torch.onnx writes it: Pow (or Mul), ReduceMean, Add eps, Sqrt,
    Reciprocal + Mul (rsqrt), Div(1, .) + Mul (reciprocal="one-over") or Div, then Mul by the weight;
    a MatMul after it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array((1 + 0.1 * rng.standard_normal(H)).astype(np.float32), "weight"),
             numpy_helper.from_array((rng.standard_normal((H, 8)) * 0.2).astype(np.float32), "w")]
    nodes = [N("Mul", ["x", "x"], ["sq"]) if mul_square else N("Pow", ["x", "two"], ["sq"])]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        nodes.append(N("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1))
    else:
        nodes.append(N("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1))
    nodes += [N("Add", ["ms", "eps"], ["a"]), N("Sqrt", ["a"], ["rms"])]
    if reciprocal == "one-over":
        nodes += [N("Div", ["one", "rms"], ["inv"]), N("Mul", ["x", "inv"], ["n"])]
    else:
        nodes += ([N("Reciprocal", ["rms"], ["inv"]), N("Mul", ["x", "inv"], ["n"])] if reciprocal
                  else [N("Div", ["x", "rms"], ["n"])])
    nodes += [N("Mul", ["weight", "n"], ["y"]), N("MatMul", ["y", "w"], ["out"])]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", H])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "S", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("reciprocal,mul_square,opset", [(True, False, 17), (False, False, 17),
                                                         (True, True, 18), (False, True, 23),
                                                         ("one-over", False, 17)])
def test_rms_norm_fuses_and_computes_the_same(reciprocal, mul_square, opset):
    proto = _model(reciprocal, mul_square, opset)
    model = import_model(proto)
    PassManager(parse_pipeline("infer-shapes,fuse-rms-norm,dce")).run(model)
    ops = [n.op for n in model.graph if n.op != "onnx.Constant"]
    assert ops == ["mdoc.rms_norm", "onnx.MatMul"], ops
    x = np.random.default_rng(1).standard_normal((2, 5, H)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    exported = export_model(model)
    if opset >= 23:
        assert any(n.op_type == "RMSNormalization" for n in exported.graph.node)
    got = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rms_norm_compiles_with_symbolic_rows(tmp_path):
    import mdoc

    proto = _model(True, False)
    path = tmp_path / "rms.onnx"
    onnx.save(proto, path)
    run = mdoc.load(mdoc.compile(str(path), "x86", tmp_path / "rms.x86", show_progress=False))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, H), (2, 7, H)):
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run(x=x)["out"], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_a_mean_over_two_axes_is_not_an_rms_norm():
    proto = _model(True, False)
    for n in proto.graph.node:
        if n.op_type == "ReduceMean":
            n.attribute[0].ints[:] = [-2, -1]
    model = import_model(proto)
    PassManager(parse_pipeline("infer-shapes,fuse-rms-norm")).run(model)
    assert not any(n.op == "mdoc.rms_norm" for n in model.graph)


def test_two_over_rms_is_not_an_rms_norm():
    proto = _model("one-over", False)
    one = next(t for t in proto.graph.initializer if t.name == "one")
    one.CopyFrom(numpy_helper.from_array(np.array(2.0, np.float32), "one"))
    model = import_model(proto)
    PassManager(parse_pipeline("infer-shapes,fuse-rms-norm")).run(model)
    assert not any(n.op == "mdoc.rms_norm" for n in model.graph)
