"""Shared fixtures: the onnx package's light models, a runner for the `mdoc` command, tiny models."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx")))


def light_inputs(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The inputs onnx's own backend tests feed the light models (arange / n, unknown dims as 1)."""
    inits = {t.name for t in proto.graph.initializer}
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def light_expected(path: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(onnx.load_tensor(path.replace(".onnx", "_output_0.pb")))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def fresh_registries():
    """Plugins register passes and rules process-wide: forget what a test's plugins added."""
    from mdoc.pass_manager import PASSES, load_passes
    from mdoc.rewrite_rules import RULES

    load_passes()
    saved = dict(PASSES), dict(RULES)
    yield
    for registry, before in zip((PASSES, RULES), saved):
        registry.clear()
        registry.update(before)


@pytest.fixture
def mdoc_cli(capsys, fresh_registries):
    """Run `mdoc ARGS...` in-process through the real entry point (error handling included)."""
    from mdoc.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def tiny_model(opset: int = 17) -> onnx.ModelProto:
    """y = Relu(x @ W + b): the smallest model that exercises initializers, two ops and a name."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], rng.standard_normal(12).astype(np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], rng.standard_normal(3).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm"),
         helper.make_node("Add", ["xw", "b"], ["xwb"], name="add"),
         helper.make_node("Relu", ["xwb"], ["y"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), path)
    return path


def reference_conv(x, w, strides, pads, group: int = 1):
    """ONNX's reference Conv of float32 `x` and `w`, in float64: what the integer kernels' tests compare with."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(strides), pads=list(pads), group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, None),
                                            helper.make_tensor_value_info("w", 1, None)],
                              [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": x, "w": w})[0].astype(np.float64)
