"""The int8 depthwise conv (`cpu_kernels/int8_depthwise.py`): numbers against onnx's reference conv for uint8 / int8
activations, float and requantized results, strides 1 and 2 and a 7x7 plane; a QDQ depthwise model compiled for this
host runs it (no float kernel, no dequantized tensor) and agrees with onnxruntime's QDQ result."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from conftest import reference_conv

from mdoc.targets.cpu_kernels import CpuSpec
from mdoc.targets.cpu_kernels.int8 import QEpilogue, has_vnni
from mdoc.targets.cpu_kernels.int8_depthwise import qdepthwise_conv2d
from mdoc.targets.presets import resolve_target

RNG = np.random.default_rng(0)
# the x86 preset's kernels run here only on an AVX-512 VNNI host (as tests/test_int8_kernels.py's)
needs_vnni = pytest.mark.skipif(not has_vnni(CpuSpec.host()), reason="this host has no AVX-512 VNNI")


@needs_vnni
@pytest.mark.parametrize("preset", ["x86", "x86-avx2"])
@pytest.mark.parametrize("shape,stride,signed,requantize", [
    ((1, 32, 20, 20), 1, False, True),
    ((2, 24, 15, 13), 2, True, False),  # int8 activations, batch 2, odd sizes, stride 2 (computed at full width)
    ((1, 40, 7, 7), 1, False, True),  # a plane narrower than a vector
])
def test_qdepthwise_matches_the_reference_conv(shape, stride, signed, requantize, preset):
    spec = resolve_target(preset).cpu
    c, xz = shape[1], (5 if signed else 120)
    epi = QEpilogue(signed=signed, bias=True, residual=True, activation="relu", y_scale=0.05 if requantize else None,
                    out_dtype="uint8" if requantize else "float32")
    kernel = qdepthwise_conv2d(shape, (c, 1, 3, 3), strides=(stride,) * 2, padding=(1,) * 4, x_zero_point=xz,
                               epilogue=epi, spec=spec)
    x = RNG.integers(-128, 128, shape).astype(np.int8) if signed else RNG.integers(0, 256, shape).astype(np.uint8)
    w = RNG.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
    mult, bias = (RNG.random(c) * 1e-3).astype(np.float32), RNG.standard_normal(c).astype(np.float32)
    residual = RNG.standard_normal(kernel.output.shape).astype(np.float32)
    offset = (-xz * w.astype(np.int32).sum((1, 2, 3))).astype(np.int32)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x, kernel.packers["weight"](w), offset, mult, bias, residual)]
    args.append(tvm.runtime.tensor(np.zeros(kernel.output.shape, kernel.output.dtype), dev))
    kernel.compile(spec.target).fn(*args)
    t = reference_conv(x.astype(np.float32) - xz, w.astype(np.float32), (stride,) * 2, (1,) * 4, group=x.shape[1])
    want = np.maximum(t * mult[:, None, None] + bias[:, None, None] + residual, 0)
    if requantize:
        want = np.clip(np.rint(want / epi.y_scale), 0, 255)
    np.testing.assert_allclose(args[-1].numpy().astype(np.float64), want, atol=1 if requantize else 1e-3)


def _qdq_depthwise():
    """x -> Q -> DQ -> depthwise Conv (per-channel int8 weights) + bias -> Relu -> Q -> DQ: the QDQ form of one
    MobileNetV2 depthwise layer."""
    c = 32
    w = RNG.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array((RNG.random(c) * 0.02).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(c, np.int8), "wz"),
             numpy_helper.from_array(RNG.standard_normal(c).astype(np.float32), "b"),
             numpy_helper.from_array(np.float32(0.02), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(np.float32(0.05), "ys"), numpy_helper.from_array(np.uint8(0), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf", "b"], ["c"], group=c, pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 18, 18])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 9, 9])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@needs_vnni
def test_a_qdq_depthwise_model_runs_the_integer_kernel_and_agrees_with_onnxruntime(tmp_path):
    import json

    import onnx

    import mdoc
    from mdoc.reference import run_onnxruntime

    proto = _qdq_depthwise()
    onnx.save(proto, tmp_path / "model.onnx")
    mdoc.compile(tmp_path / "model.onnx", target="x86", output=tmp_path / "art")
    feeds = {"x": RNG.standard_normal((1, 32, 18, 18)).astype(np.float32)}
    got, want = mdoc.load(tmp_path / "art")(**feeds)["y"], run_onnxruntime(proto, feeds)["y"]
    # one quantization step (ys) where onnxruntime's float product sits on a rounding edge
    np.testing.assert_allclose(got, want, atol=0.05 + 1e-6)
    assert np.mean(got == want) > 0.99
    kernels = [k for ks in json.loads((tmp_path / "art" / "manifest.json").read_text())["kernels"].values() for k in ks]
    assert any(k.startswith("qdwconv2d") for k in kernels) and not any(k.startswith("dwconv2d") for k in kernels), kernels


@pytest.mark.parametrize("preset,instruction", [("x86", "vpdpwssd"), ("x86-avx2", "vpmaddwd"), ("rpi5", "mla\tv")])
def test_the_taps_multiply_add_integer_vectors(preset, instruction):
    """LLVM reads the widened bytes as int16 pairs: AVX-512 VNNI's vpdpwssd, AVX2's vpmaddwd, NEON's vector mla."""
    spec = resolve_target(preset).cpu
    kernel = qdepthwise_conv2d((1, 16, 16, 16), (16, 1, 3, 3), padding=(1,) * 4, x_zero_point=3, spec=spec)
    assert instruction in tvm.compile(kernel.module(), tvm.target.Target(spec.target)).mod.inspect_source("asm")
