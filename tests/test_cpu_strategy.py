"""The CPU kernel strategy (targets/relax/cpu_strategy.py): every route through the lowering,
checked against onnxruntime, and which kernel each matmul got.

Each test builds one small ONNX graph whose outputs end the chains under test (a graph
output stops epilogue fusion, so intermediates are never outputs here), runs -O2's fusions
on it (`FUSE`: the backend fuses only what the IR says), lowers it with `CpuKernels`, builds
it for the host and compares every output with onnxruntime's.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

ort = pytest.importorskip("onnxruntime")
tvm = pytest.importorskip("tvm")

from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.pass_manager import PassManager, parse_pipeline  # noqa: E402
from mdoc.targets.cpu_kernels import CpuSpec  # noqa: E402
from mdoc.targets.presets import resolve_target  # noqa: E402
from mdoc.targets.relax import Kernels, Runner, build, lower, run  # noqa: E402
from mdoc.targets.relax.cpu_strategy import CpuKernels, cpu_kernels_for  # noqa: E402
from mdoc.targets.relax.fuse_inverted_residual import FuseInvertedResidual  # noqa: E402
from mdoc.targets.relax.plan_layout import PlanLayout  # noqa: E402
from test_relax_lowering import f32  # noqa: E402
from test_relax_lowering import make_model as _make_model  # noqa: E402

TARGET = resolve_target("x86").tvm
N = helper.make_node
FUSE = "infer-shapes,fuse-layer-norm,fuse-gelu,fuse-silu,fuse-epilogue"


def make_model(nodes, inputs: dict, outputs: list[str], inits: dict, opset: int = 17) -> onnx.ModelProto:
    """test_relax_lowering's model builder; inputs given as a shape list are float32."""
    inputs = {k: v if isinstance(v, np.ndarray) else ("float32", v) for k, v in inputs.items()}
    return _make_model(nodes, inputs, outputs, inits, opset)


def lowered(m: onnx.ModelProto, kernels=None, target=TARGET, fuse=FUSE, **kw):
    """The model after `fuse` and the target's own fusion (as `TvmBackend.lower` runs it), and its module."""
    model = import_model(m)
    PassManager(parse_pipeline(fuse) + target_passes(target)).run(model)
    mod = lower(model, target=target, kernels=kernels or CpuKernels(CpuSpec.from_target(target)), **kw)
    return model, mod


def target_passes(target=TARGET, layout: bool = True) -> list:
    """What `TvmBackend.lower` runs for a CPU target after the generic pipeline."""
    passes = [FuseInvertedResidual(target=json.dumps(target))]
    return passes + [PlanLayout(target=json.dumps(target))] if layout else passes


def kernel_names(mod) -> set[str]:
    return {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def check(m: onnx.ModelProto, feeds: dict, kernels=None, rtol=1e-4, atol=1e-5, target=TARGET):
    """Build with the strategy, compare with onnxruntime; returns the lowered module's kernel names."""
    model, mod = lowered(m, kernels, target)
    got = run(build(mod, target), feeds, model)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in m.graph.output], sess.run(None, feeds)))
    for name, r in ref.items():
        np.testing.assert_allclose(got[name], r, rtol=rtol, atol=atol, err_msg=name)
    return kernel_names(mod)


def gelu_nodes(x: str, out: str, tag: str) -> list:
    """GELU as PyTorch exports it: x * (erf(x / sqrt 2) + 1) * 0.5."""
    return [N("Div", [x, "sqrt2"], [f"{tag}_d"]), N("Erf", [f"{tag}_d"], [f"{tag}_e"]),
            N("Add", [f"{tag}_e", "one"], [f"{tag}_a"]), N("Mul", [x, f"{tag}_a"], [f"{tag}_m"]),
            N("Mul", [f"{tag}_m", "half"], [out])]


SCALARS = {"sqrt2": np.array(1.4142135381698608, np.float32), "one": np.array(1.0, np.float32),
           "half": np.array(0.5, np.float32), "lo": np.array(-1.0, np.float32), "hi": np.array(1.0, np.float32)}


def test_dense_with_fused_tails():
    x = f32(2, 8, 24)
    inits = {**SCALARS, **{f"w{i}": f32(24, n, scale=0.3) for i, n in enumerate([40, 24, 24, 24, 24])},
             "b0": f32(40), "b1": f32(24), "b3": f32(1, 24)}
    nodes = [
        # bias + GELU, ragged N = 40 (masked store)
        N("MatMul", ["x", "w0"], ["m0"]), N("Add", ["m0", "b0"], ["a0"]), *gelu_nodes("a0", "gelu", "g"),
        # bias first operand, then residual, then Relu
        N("MatMul", ["x", "w1"], ["m1"]), N("Add", ["b1", "m1"], ["a1"]), N("Add", ["a1", "x"], ["r1"]),
        N("Relu", ["r1"], ["res_relu"]),
        # scale then Tanh
        N("MatMul", ["x", "w2"], ["m2"]), N("Mul", ["m2", "half"], ["s2"]), N("Tanh", ["s2"], ["scale_tanh"]),
        # a [1, N] bias whose sum is used twice: the bias fuses, the activations do not
        N("MatMul", ["x", "w3"], ["m3"]), N("Add", ["m3", "b3"], ["a3"]), N("Relu", ["a3"], ["twice_relu"]),
        N("Sigmoid", ["a3"], ["twice_sigmoid"]),
        # Clip with constant bounds
        N("MatMul", ["x", "w4"], ["m4"]), N("Clip", ["m4", "lo", "hi"], ["clip"]),
    ]
    outs = ["gelu", "res_relu", "scale_tanh", "twice_relu", "twice_sigmoid", "clip"]
    names = check(make_model(nodes, {"x": x}, outs, inits), {"x": x})
    assert {"dense_16x24x40_bias_gelu", "dense_16x24x24_bias_res_relu", "dense_16x24x24_scale_tanh",
            "dense_16x24x24_bias", "dense_16x24x24_clip"} <= names, names


def test_gemm_routes_to_dense():
    a, at = f32(3, 24), f32(24, 3)
    inits = {"b": f32(40, 24), "c": f32(40), "bn": f32(24, 40)}
    nodes = [N("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5, beta=2.0),
             N("Gemm", ["at", "bn"], ["z"], transA=1)]
    names = check(make_model(nodes, {"a": a, "at": at}, ["y", "z"], inits), {"a": a, "at": at})
    # transB is undone by the weight packing, so both products share one PrimFunc
    assert {n for n in names if "matmul" in n or "dense" in n} == {"dense_3x24x40_tb"}, names


def test_attention_batch_matmuls():
    q, k, v = f32(1, 2, 16, 8), f32(1, 2, 16, 8), f32(1, 2, 16, 8)
    mask = f32(1, 1, 1, 16)
    nodes = [N("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["q", "kt"], ["s"]),
             N("Div", ["s", "sqrt_d"], ["sd"]), N("Add", ["sd", "mask"], ["sm"]),
             N("Softmax", ["sm"], ["p"], axis=-1), N("MatMul", ["p", "v"], ["ctx"]),
             # a 2-D right operand shared by every batch, and a same-shape residual
             N("MatMul", ["q", "w"], ["qw"]), N("Add", ["qw", "q"], ["qw_res"])]
    w = f32(8, 8)
    feeds = {"q": q, "k": k, "v": v, "mask": mask, "w": w}
    m = make_model(nodes, feeds, ["ctx", "qw_res"], {"sqrt_d": np.array(np.sqrt(8.0), np.float32)})
    names = check(m, feeds)
    assert {"batch_matmul_2x16x8x16_scale", "batch_matmul_2x16x16x8", "batch_matmul_2x16x8x8_res"} <= names, names


def test_fallbacks_to_default_kernels():
    """A 1-D operand and a true batch broadcast keep the default path."""
    a, b = f32(2, 1, 4, 8), f32(1, 3, 8, 5)
    vec = f32(24)
    nodes = [N("MatMul", ["vec", "w"], ["onedim"]), N("MatMul", ["a", "b"], ["bcast"])]
    m = make_model(nodes, {"vec": vec, "a": a, "b": b}, ["onedim", "bcast"], {"w": f32(24, 16)})
    feeds = {"vec": vec, "a": a, "b": b}
    model, mod = lowered(m)
    assert not any(n.startswith(("dense", "batch_matmul")) for n in kernel_names(mod))
    got = run(build(mod, TARGET), feeds, model)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, r in zip(["onedim", "bcast"], sess.run(None, feeds)):
        np.testing.assert_allclose(got[name], r, rtol=1e-4, atol=1e-5, err_msg=name)


def test_symbolic_dims_reach_the_kernels():
    """Rows, batch and key length known only at run time: one build of the dense, batch matmul,
    softmax and layer norm kernels serves two sizes."""
    nodes = [N("MatMul", ["x", "w"], ["h"]), N("Add", ["h", "bias"], ["hb"]),
             N("Transpose", ["hb"], ["ht"], perm=[0, 2, 1]), N("MatMul", ["hb", "ht"], ["s"]),
             N("Softmax", ["s"], ["p"], axis=-1), N("MatMul", ["p", "hb"], ["c"]),
             N("LayerNormalization", ["c", "gamma", "beta"], ["y"], axis=-1)]
    m = make_model(nodes, {"x": ["n", "s", 24]}, ["y"], {"w": f32(24, 16), "bias": f32(16), "gamma": f32(16),
                                                          "beta": f32(16)})
    # onnx.LayerNormalization itself (mdoc.layer_norm's CPU kernel takes static rows only)
    model, mod = lowered(m, fuse="infer-shapes,fuse-epilogue")
    names = kernel_names(mod)
    assert {"dense_d0x24x16_bias", "batch_matmul_d0xd1x16xd1", "batch_matmul_d0xd1xd1x16", "softmax_d0xd1",
            "layer_norm_d0x16"} <= names, names
    ex = build(mod, TARGET)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 5, 24), (3, 17, 24)):
        feeds = {"x": f32(*shape)}
        np.testing.assert_allclose(run(ex, feeds, model)["y"], sess.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def test_weights_as_parameters_use_batch_matmul():
    """With weights lowered as function parameters (`Runner`), B is an activation to the strategy."""
    x = f32(1, 8, 48)
    m = make_model([N("MatMul", ["x", "w"], ["y"])], {"x": x}, ["y"], {"w": f32(48, 32)})  # >= 1024 elements
    model, mod = lowered(m, params_as_constants=False)
    assert "batch_matmul_1x8x48x32" in kernel_names(mod)
    got = Runner(build(mod, TARGET), model)({"x": x})["y"]
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_strategy_choice_per_target():
    assert isinstance(cpu_kernels_for(CpuSpec.from_target(TARGET)), CpuKernels)
    assert cpu_kernels_for(resolve_target("aarch64").cpu).spec.lanes == 4
    generic = cpu_kernels_for(CpuSpec.from_target({"kind": "llvm", "mcpu": "x86-64"}))  # no FMA vectors
    assert type(generic) is Kernels


def test_aarch64_artifact_matches_onnxruntime(tmp_path):
    """The same kernels for NEON (4 lanes): `mdoc compile -t aarch64`, run under qemu when set up."""
    import shutil

    import mdoc
    from mdoc.tooling.emulation import arm_root

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu)")
    x, k = f32(1, 8, 24), f32(1, 2, 8, 12)
    inits = {**SCALARS, "w": f32(24, 20), "b": f32(20)}
    nodes = [N("MatMul", ["x", "w"], ["m"]), N("Add", ["m", "b"], ["a"]), *gelu_nodes("a", "y", "g"),
             N("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["k", "kt"], ["kk"])]
    m = make_model(nodes, {"x": x, "k": k}, ["y", "kk"], inits)
    spec = resolve_target("aarch64")
    names = kernel_names(lowered(m, cpu_kernels_for(spec.cpu), spec.tvm)[1])
    assert {"dense_8x24x20_bias_gelu", "batch_matmul_2x8x12x8"} <= names, names
    onnx.save(m, tmp_path / "m.onnx")
    art = mdoc.compile(tmp_path / "m.onnx", "aarch64", tmp_path / "m.arm", show_progress=False)
    if arm_root() is None:
        pytest.skip("no arm64 root for emulation (.ci/setup-arm.sh)")
    got = mdoc.load(art)(x=x, k=k)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x, "k": k})
    for name, w in zip(["y", "kk"], want):
        np.testing.assert_allclose(got[name], w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_convs_with_fused_tails():
    x = f32(1, 16, 10, 10)
    inits = {"w3": f32(16, 16, 3, 3, scale=0.2), "b3": f32(16), "wd": f32(16, 1, 3, 3), "bd": f32(16),
             "wg": f32(24, 8, 3, 3, scale=0.2), "w1": f32(20, 16, 1, 1), "b1": f32(20),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [
        # 3x3 + bias, then a residual Add and Relu (ResNet's block tail)
        N("Conv", ["x", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1]), N("Add", ["c3", "x"], ["r3"]),
        N("Relu", ["r3"], ["resnet"]),
        # depthwise stride 2 + bias + Clip(0, 6) (MobileNetV2)
        N("Conv", ["x", "wd", "bd"], ["cd"], group=16, strides=[2, 2], pads=[1, 1, 1, 1]),
        N("Clip", ["cd", "lo", "hi"], ["mobilenet"]),
        # grouped, no bias, asymmetric pads, dilation
        N("Conv", ["x", "wg"], ["grouped"], group=2, pads=[0, 1, 2, 1], dilations=[2, 1]),
        # pointwise + bias, its result used twice: no tail fused
        N("Conv", ["x", "w1", "b1"], ["c1"]), N("Relu", ["c1"], ["pw_relu"]), N("Sigmoid", ["c1"], ["pw_sigmoid"]),
    ]
    outs = ["resnet", "mobilenet", "grouped", "pw_relu", "pw_sigmoid"]
    names = check(make_model(nodes, {"x": x}, outs, inits), {"x": x})
    want = {"conv2d_3x3s1p1_16x10x10_16_bias_res_relu", "conv2d_1x1s1p0_16x10x10_20_bias"}
    assert want <= names and "dwconv2d_3x3s2p1_16x10x10_bias_clip" in names, names


def test_mobilenet_blocks_fuse_into_one_kernel_each():
    """The stem and the depthwise block after it, then an inverted residual block with its residual,
    each run as one NCHWc kernel (`inverted_residual`); the pooled head reads the blocked result."""
    x = f32(1, 3, 32, 32)
    inits = {"ws": f32(16, 3, 3, 3, scale=0.3), "bs": f32(16), "wd1": f32(16, 1, 3, 3, scale=0.3), "bd1": f32(16),
             "wp1": f32(16, 16, 1, 1, scale=0.3), "bp1": f32(16), "we": f32(64, 16, 1, 1, scale=0.3), "be": f32(64),
             "wd2": f32(64, 1, 3, 3, scale=0.3), "bd2": f32(64), "wp2": f32(16, 64, 1, 1, scale=0.2), "bp2": f32(16),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [N("Conv", ["x", "ws", "bs"], ["s"], strides=[2, 2], pads=[1, 1, 1, 1]), N("Clip", ["s", "lo", "hi"], ["s6"]),
             N("Conv", ["s6", "wd1", "bd1"], ["d1"], group=16, pads=[1, 1, 1, 1]), N("Clip", ["d1", "lo", "hi"], ["d16"]),
             N("Conv", ["d16", "wp1", "bp1"], ["p1"]),
             N("Conv", ["p1", "we", "be"], ["e"]), N("Clip", ["e", "lo", "hi"], ["e6"]),
             N("Conv", ["e6", "wd2", "bd2"], ["d2"], group=64, pads=[1, 1, 1, 1]), N("Clip", ["d2", "lo", "hi"], ["d26"]),
             N("Conv", ["d26", "wp2", "bp2"], ["p2"]), N("Add", ["p1", "p2"], ["block"]),
             N("GlobalAveragePool", ["block"], ["pooled"])]
    names = check(make_model(nodes, {"x": x}, ["pooled"], inits), {"x": x}, rtol=1e-4, atol=1e-4)
    want = {"invres_3x32x32_16_k3x3s2_dw3x3s1_16", "invres_16x16x16_64_dw3x3s1_16_res",
            "global_avg_pool2d_nchwc_16x16x16"}
    assert want <= names and not any(n.startswith("conv2d") or n.startswith("dwconv") for n in names), names


def test_conv_fallbacks():
    """1-d convs, weights given at run time and a residual defined after the conv keep working."""
    x1, x2 = f32(1, 4, 12), f32(1, 4, 6, 6)
    inits = {"w1d": f32(8, 4, 3), "w": f32(4, 4, 3, 3)}
    nodes = [N("Conv", ["x1", "w1d"], ["conv1d"], pads=[1, 1]),
             N("Conv", ["x2", "wr"], ["runtime_w"], pads=[1, 1, 1, 1]),
             # the Add's other operand is computed after the conv: the Add stays a separate op
             N("Conv", ["x2", "w"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["x2"], ["later"]),
             N("Add", ["c", "later"], ["late_residual"])]
    feeds = {"x1": x1, "x2": x2, "wr": f32(4, 4, 3, 3)}
    names = check(make_model(nodes, feeds, ["conv1d", "runtime_w", "late_residual"], inits), feeds)
    assert "conv2d_3x3s1p1_4x6x6_4" in names, names


def test_pooling():
    x = f32(1, 5, 11, 11)
    nodes = [N("MaxPool", ["x"], ["max"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             N("AveragePool", ["x"], ["avg"], kernel_shape=[3, 2], pads=[1, 0, 1, 1], count_include_pad=0),
             N("AveragePool", ["x"], ["avg_incpad"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0],
               count_include_pad=1),
             N("MaxPool", ["x"], ["max_ceil"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             # 1-d pooling and ceil mode with count_include_pad keep the default path
             N("Reshape", ["x", "flat"], ["x1d"]), N("MaxPool", ["x1d"], ["max1d"], kernel_shape=[3]),
             N("AveragePool", ["x"], ["avg_ceil_incpad"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1,
               count_include_pad=1)]
    outs = ["max", "avg", "avg_incpad", "max_ceil", "max1d", "avg_ceil_incpad"]
    names = check(make_model(nodes, {"x": x}, outs, {"flat": np.array([1, 5, 121], np.int64)}), {"x": x})
    assert {"maxpool2d_3x3s2p1_5x11x11", "maxpool2d_2x2s2p0_5x11x11_ceil"} <= names, names


def layer_norm_nodes(x: str, out: str, tag: str, gamma: str, beta: str) -> list:
    """LayerNorm over the last axis as PyTorch exports it before opset 17."""
    t = tag
    return [N("ReduceMean", [x], [f"{t}_mean"], axes=[-1]), N("Sub", [x, f"{t}_mean"], [f"{t}_d"]),
            N("Pow", [f"{t}_d", "two"], [f"{t}_p"]), N("ReduceMean", [f"{t}_p"], [f"{t}_v"], axes=[-1]),
            N("Add", [f"{t}_v", "eps"], [f"{t}_ve"]), N("Sqrt", [f"{t}_ve"], [f"{t}_s"]),
            N("Div", [f"{t}_d", f"{t}_s"], [f"{t}_n"]), N("Mul", [f"{t}_n", gamma], [f"{t}_g"]),
            N("Add", [f"{t}_g", beta], [out])]


def test_layer_norm_and_softmax():
    x = f32(2, 6, 40)
    inits = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32), "g": f32(40), "b": f32(40)}
    nodes = [*layer_norm_nodes("x", "ln", "a", "g", "b"),
             N("LayerNormalization", ["x", "g", "b"], ["ln_op"], axis=-1, epsilon=1e-3),
             N("Softmax", ["x"], ["softmax"], axis=-1),
             N("Softmax", ["x"], ["softmax_axis1"], axis=1),  # not the last axis: default path
             # a decomposed LayerNorm whose centered value is also an output is left alone
             *layer_norm_nodes("x", "ln_shared", "c", "g", "b")]
    m = make_model(nodes, {"x": x}, ["ln", "ln_op", "softmax", "softmax_axis1", "ln_shared", "c_d"], inits)
    names = check(m, {"x": x})
    assert {"layer_norm_12x40", "softmax_12x40"} <= names, names
    model, mod = lowered(m)
    calls = mod["main"].script().count("layer_norm_12x40")
    assert calls == 2, f"expected 2 layer_norm kernel calls (the pattern and the op), found {calls}"


def test_avx2_vectors():
    """8-lane AVX2 kernels (16 registers: smaller tiles) through the same routes, run on this host."""
    x = f32(1, 8, 9, 9)
    inits = {"w": f32(12, 8, 3, 3, scale=0.2), "b": f32(12), "wd": f32(8, 1, 3, 3), "fc": f32(972, 20, scale=0.05)}
    nodes = [N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["r"]),
             N("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Conv", ["x", "wd"], ["dw"], group=8, pads=[1, 1, 1, 1]),
             N("Flatten", ["r"], ["flat"]), N("MatMul", ["flat", "fc"], ["y"]), N("Softmax", ["y"], ["prob"])]
    names = check(make_model(nodes, {"x": x}, ["p", "dw", "prob"], inits), {"x": x},
                  target=resolve_target("x86-avx2").tvm)
    assert {"conv2d_3x3s1p1_8x9x9_12_bias_relu", "dense_1x972x20", "softmax_1x20"} <= names, names
