"""fuse-inverted-residual (the CPU target's pass): MobileNet blocks become mdoc.inverted_residual, whose
meaning (evaluator, export) equals the three convs', and which lowers to one kernel where the layout plan
runs it NCHWc and to its three convs elsewhere, with equal outputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

from mdoc.evaluator import try_fold  # noqa: E402
from mdoc.onnx_export import export_model  # noqa: E402
from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.parser import parse_model  # noqa: E402
from mdoc.printer import print_model  # noqa: E402
from mdoc.pass_manager import PassManager, parse_pipeline  # noqa: E402
from mdoc.reference import run_onnxruntime  # noqa: E402
from mdoc.rewrite import explain  # noqa: E402
from mdoc.targets.relax import build, lower, run  # noqa: E402
from mdoc.targets.presets import resolve_target  # noqa: E402
from mdoc.targets.relax.cpu_strategy import cpu_kernels_for  # noqa: E402
from test_cpu_strategy import FUSE, TARGET, check, kernel_names, make_model, target_passes  # noqa: E402
from test_relax_lowering import f32  # noqa: E402

N = helper.make_node


def block_model(batch: int = 1):
    """An expand 1x1 + Clip, a depthwise 3x3 + Clip and a 1x1 projection with a residual Add."""
    inits = {"we": f32(64, 16, 1, 1, scale=0.3), "be": f32(64), "wd": f32(64, 1, 3, 3, scale=0.3), "bd": f32(64),
             "wp": f32(16, 64, 1, 1, scale=0.2), "bp": f32(16),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [N("Relu", ["x"], ["r"]),
             N("Conv", ["r", "we", "be"], ["e"]), N("Clip", ["e", "lo", "hi"], ["e6"]),
             N("Conv", ["e6", "wd", "bd"], ["d"], group=64, pads=[1, 1, 1, 1]), N("Clip", ["d", "lo", "hi"], ["d6"]),
             N("Conv", ["d6", "wp", "bp"], ["p"]), N("Add", ["p", "r"], ["y"])]
    x = f32(batch, 16, 16, 16)
    return make_model(nodes, {"x": x}, ["y"], inits), {"x": x}


def fused(m):
    model = import_model(m)
    PassManager(parse_pipeline(FUSE + ",fuse-inverted-residual{target=x86}")).run(model)
    return model


def test_a_block_becomes_one_op_whose_meaning_is_the_three_convs():
    m, feeds = block_model()
    model = fused(m)
    ops = [n.op for n in model.graph if n.op != "onnx.Constant"]
    assert ops == ["onnx.Relu", "mdoc.inverted_residual"], ops
    block = next(n for n in model.graph if n.op == "mdoc.inverted_residual")
    assert block.attrs["expand_activation"] == "clip" and block.attrs["dw_activation"] == "clip"
    assert block.input(7) is not None and "project_activation" not in block.attrs
    want = run_onnxruntime(m, feeds)["y"]
    np.testing.assert_allclose(run_onnxruntime(export_model(model), feeds)["y"], want, rtol=1e-4, atol=1e-4)
    relu = np.maximum(feeds["x"], 0)
    (got,) = try_fold(block, 17, [relu] + [v.const_value if v is not None else None for v in block.inputs[1:7]] + [relu])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_batch_of_two_is_refused_with_its_reason():
    m, _ = block_model(batch=2)
    model = fused(m)
    assert not any(n.op == "mdoc.inverted_residual" for n in model.graph)
    lines = " ".join(explain(model.graph, "inverted-residual", model))
    assert "batch 1" in lines or "bands" in lines, lines


def test_the_block_lowers_to_one_kernel_where_planned_nchwc():
    m, feeds = block_model()
    names = check(m, feeds, rtol=1e-4, atol=1e-4)
    assert [n for n in names if n.startswith("invres")] == ["invres_16x16x16_64_dw3x3s1_16_res"], names


def test_a_block_left_nchw_lowers_to_its_three_convs():
    """Without plan-layout's annotation the block runs NCHW, as its three conv kernels."""
    m, feeds = block_model()
    model = import_model(m)
    PassManager(parse_pipeline(FUSE) + target_passes(layout=False)).run(model)
    assert any(n.op == "mdoc.inverted_residual" and "mdoc.layout" not in n.attrs for n in model.graph)
    mod = lower(model, target=TARGET, kernels=cpu_kernels_for(resolve_target("x86").cpu))
    names = kernel_names(mod)
    assert not any(n.startswith("invres") for n in names) and {
        "conv2d_1x1s1p0_16x16x16_64_bias_clip", "dwconv2d_3x3s1p1_64x16x16_bias_clip",
        "conv2d_1x1s1p0_64x16x16_16_bias_res"} <= names, names
    want = run_onnxruntime(m, feeds)["y"]
    np.testing.assert_allclose(run(build(mod, TARGET), feeds, model)["y"], want, rtol=1e-4, atol=1e-4)


def test_plan_layout_annotates_and_the_export_leaves_it_out():
    m, feeds = block_model()
    model = import_model(m)
    PassManager(parse_pipeline(FUSE) + target_passes()).run(model)
    block = next(n for n in model.graph if n.op == "mdoc.inverted_residual")
    assert block.attrs["mdoc.layout"] == "NCHWc"
    text = print_model(model, {}, inline_limit=10**7)
    assert 'mdoc.layout = "NCHWc"' in text and print_model(parse_model(text), {}, inline_limit=10**7) == text
    exported = export_model(model)
    assert not any(a.name.startswith("mdoc.") for n in exported.graph.node for a in n.attribute)
    np.testing.assert_allclose(run_onnxruntime(exported, feeds)["y"], run_onnxruntime(m, feeds)["y"],
                               rtol=1e-4, atol=1e-4)
