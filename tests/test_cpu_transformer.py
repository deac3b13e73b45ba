"""mdoc's transformer ops in the backend: the CPU kernels they route to (cpu_transformer.py, the matmul
epilogue for mdoc.gelu) and the generic Relax converters (symbolic shapes), checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")

from mdoc.ir import Graph, Model  # noqa: E402
from mdoc.models import ZOO, build, example_inputs  # noqa: E402
from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.pass_manager import PassManager, pipeline_for_level  # noqa: E402
from mdoc.shape_inference import infer_types  # noqa: E402
from mdoc.targets.cpu_kernels import CpuSpec  # noqa: E402
from mdoc.targets.presets import resolve_target  # noqa: E402
from mdoc.targets.relax import Kernels, build as build_module, lower, run  # noqa: E402
from mdoc.targets.relax.cpu_strategy import CpuKernels  # noqa: E402
from mdoc.types import DType, TensorType  # noqa: E402

TARGET = resolve_target("x86").tvm


def kernel_names(mod) -> set[str]:
    return {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def compiled(model: Model, kernels, feeds):
    mod = lower(model, target=TARGET, kernels=kernels)
    return kernel_names(mod), run(build_module(mod, TARGET), feeds, model)


def onnxruntime_outputs(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in proto.graph.output], sess.run(None, feeds)))


def test_fused_bert_reaches_the_same_kernels_and_outputs():
    proto = build("bert_encoder", **{**ZOO["bert_encoder"].test_kwargs, "batch": 1, "seq": 16})
    feeds = example_inputs(proto)
    model = import_model(proto)
    PassManager(pipeline_for_level(2)).run(model)
    ops = {n.op for n in model.graph}
    assert {"mdoc.layer_norm", "mdoc.attention", "mdoc.matmul"} <= ops and "onnx.Softmax" not in ops
    # GELU is the activation of the dense layer before it (fuse-epilogue)
    assert "mdoc.gelu" not in ops and any(n.attrs.get("activation") == "gelu" for n in model.graph)
    names, got = compiled(model, CpuKernels(CpuSpec.from_target(TARGET)), feeds)
    # LayerNorm on its kernel, GELU in the dense kernel's epilogue, attention on batch_matmul + softmax
    assert any(n.startswith("layer_norm_") for n in names)
    assert any(n.startswith("dense_") and n.endswith("_gelu") for n in names)
    assert any(n.startswith("softmax_") for n in names)
    assert any(n.startswith("batch_matmul_") and n.endswith("_scale") for n in names)
    for name, want in onnxruntime_outputs(proto, feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_symbolic_dims_take_the_generic_converters():
    proto = build("bert_encoder", **ZOO["bert_encoder"].test_kwargs)  # batch N, sequence S
    feeds = example_inputs(proto)
    model = import_model(proto)
    PassManager(pipeline_for_level(2)).run(model)
    assert any(n.op == "mdoc.attention" for n in model.graph)
    _, got = compiled(model, CpuKernels(CpuSpec.from_target(TARGET)), feeds)
    for name, want in onnxruntime_outputs(proto, feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def skip_layer_norm_model() -> tuple[Model, dict]:
    rng = np.random.default_rng(0)
    g = Graph("g")
    x, skip = (g.add_input(TensorType(DType.F32, (2, 3, 8)), n) for n in ("x", "skip"))
    gamma, beta, bias = (g.constant(rng.standard_normal(8).astype(np.float32)) for _ in range(3))
    node = g.add("mdoc.skip_layer_norm", [x, skip, gamma, beta, bias], {"epsilon": 1e-5}, outputs=2,
                 output_names=["y", "sum"])
    g.outputs.extend(node.outputs)
    model = Model(g, {"": 17})
    infer_types(model)
    feeds = {n: rng.standard_normal((2, 3, 8)).astype(np.float32) for n in ("x", "skip")}
    return model, feeds


@pytest.mark.parametrize("strategy", ["cpu", "generic"])
def test_skip_layer_norm_on_either_path_matches_its_export(strategy):
    from mdoc.onnx_export import export_model

    model, feeds = skip_layer_norm_model()
    kernels = CpuKernels(CpuSpec.from_target(TARGET)) if strategy == "cpu" else Kernels()
    names, got = compiled(model, kernels, feeds)
    assert any(n.startswith("layer_norm_") for n in names) == (strategy == "cpu")
    for name, want in onnxruntime_outputs(export_model(model), feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_silu_is_fused_into_the_conv_kernels():
    proto = build("detector_head", **{**ZOO["detector_head"].test_kwargs, "batch": 1})  # static: conv kernels
    feeds = example_inputs(proto)
    model = import_model(proto)
    PassManager(pipeline_for_level(2)).run(model)
    kernels = CpuKernels(CpuSpec.from_target(TARGET))
    _, got = compiled(model, kernels, feeds)
    # each of the 12 conv + BatchNorm + SiLU blocks is one conv kernel with a silu epilogue
    assert sum(r.builder == "conv2d" and "silu" in r.key for r in kernels.requests.elements()) == 12
    for name, want in onnxruntime_outputs(proto, feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)
