"""The integer kernels (`cpu_kernels/int8.py`): numbers against numpy for uint8 / int8 activations, float and
requantized results, on AVX-512 VNNI and on AVX2 (both run on this host when it has VNNI); the dot-product
instruction in the generated assembly of each target (vpdpbusd, AVX2's vpmaddwd, aarch64's sdot); quantized models
compiled for this host, for x86-avx2 and (under qemu) for the Raspberry Pi 5 agreeing with onnxruntime."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from onnx import helper
from conftest import reference_conv

from mdoc.targets.cpu_kernels import CpuSpec
from mdoc.targets.cpu_kernels.int8 import QEpilogue, has_vnni, qconv2d, qdense
from mdoc.targets.presets import resolve_target

needs_vnni = pytest.mark.skipif(not has_vnni(CpuSpec.host()), reason="this host has no AVX-512 VNNI")
RNG = np.random.default_rng(0)
# the specs whose kernels run here: VNNI (the host) and AVX2 (a subset of it)
SPECS = [pytest.param("x86", id="vnni"), pytest.param("x86-avx2", id="avx2")]


def _spec(preset: str) -> CpuSpec:
    return resolve_target(preset).cpu


def _weights(shape) -> np.ndarray:
    # the full range: pairs of 255 * +-127 would saturate an int16 sum (vpmaddubsw), which no step may do
    return RNG.integers(-127, 128, shape).astype(np.int8)


def _run(kernel, *arrays, spec: CpuSpec) -> np.ndarray:
    compiled = kernel.compile(spec.target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    args.append(tvm.runtime.tensor(np.zeros(kernel.output.shape, kernel.output.dtype), dev))
    compiled.fn(*args)
    return args[-1].numpy()


def _activation(shape, signed: bool) -> np.ndarray:
    return (RNG.integers(-128, 128, shape).astype(np.int8) if signed else RNG.integers(0, 256, shape).astype(np.uint8))


def _offset(w_sums: np.ndarray, xz: int, signed: bool) -> np.ndarray:
    return (-(xz + (128 if signed else 0)) * w_sums).astype(np.int32)


def _requantized(t: np.ndarray, epi: QEpilogue) -> np.ndarray:
    if epi.y_scale is None:
        return t
    info = np.iinfo(epi.out_dtype)
    return np.clip(np.rint(t / epi.y_scale) + epi.y_zero_point, info.min, info.max)


@needs_vnni
@pytest.mark.parametrize("preset", SPECS)
@pytest.mark.parametrize("signed,requantize", [(False, False), (True, True)])
def test_qdense_matches_numpy(signed, requantize, preset):
    spec = _spec(preset)
    m, k, n, xz = 13, 70, 40, (3 if signed else 130)  # K not a multiple of 4, N not of 16, M not of the tile
    epi = QEpilogue(signed=signed, bias=True, activation="relu", y_scale=0.5 if requantize else None,
                    y_zero_point=-2 if requantize else 0, out_dtype="int8" if requantize else "float32")
    kernel = qdense((m, k), (k, n), epilogue=epi, spec=spec)
    a, w = _activation((m, k), signed), _weights((k, n))
    mult, bias = (RNG.random(n) * 0.01).astype(np.float32), RNG.standard_normal(n).astype(np.float32)
    got = _run(kernel, a, kernel.packers["weight"](w), _offset(w.astype(np.int32).sum(0), xz, signed), mult,
               bias, spec=spec)
    want = _requantized(np.maximum((a.astype(np.int64) - xz) @ w.astype(np.int64) * mult + bias, 0), epi)
    np.testing.assert_allclose(got.astype(np.float64), want, atol=1 if requantize else 1e-3)


@needs_vnni
@pytest.mark.parametrize("preset", SPECS)
@pytest.mark.parametrize("shape,oc,k,stride,pad,signed,requantize", [
    ((1, 3, 20, 20), 20, 3, 2, 1, False, False),  # a stem: 3 channels padded to 4, stride 2
    ((2, 16, 9, 11), 32, 3, 1, 1, True, True),  # int8 activations, batch 2, requantized
    ((1, 24, 7, 7), 40, 1, 1, 0, False, True),  # 1x1, ragged output channels
])
def test_qconv2d_matches_the_reference_conv(shape, oc, k, stride, pad, signed, requantize, preset):
    spec = _spec(preset)
    xz = 5 if signed else 120
    epi = QEpilogue(signed=signed, bias=True, residual=True, activation="relu", y_scale=0.05 if requantize else None,
                    out_dtype="uint8" if requantize else "float32")
    kernel = qconv2d(shape, (oc, shape[1], k, k), strides=(stride,) * 2, padding=(pad,) * 4, x_zero_point=xz,
                     epilogue=epi, spec=spec)
    x, w = _activation(shape, signed), _weights((oc, shape[1], k, k))
    mult, bias = (RNG.random(oc) * 1e-3).astype(np.float32), RNG.standard_normal(oc).astype(np.float32)
    residual = RNG.standard_normal(kernel.output.shape).astype(np.float32)
    got = _run(kernel, x, kernel.packers["weight"](w), _offset(w.astype(np.int32).sum((1, 2, 3)), xz, signed),
               mult, bias, residual, spec=spec)
    t = reference_conv(x.astype(np.float32) - xz, w.astype(np.float32), (stride,) * 2, (pad,) * 4)
    want = _requantized(np.maximum(t * mult[:, None, None] + bias[:, None, None] + residual, 0), epi)
    np.testing.assert_allclose(got.astype(np.float64), want, atol=1 if requantize else 1e-3)


@pytest.mark.parametrize("preset,instruction", [("x86", "vpdpbusd"), ("x86-avx2", "vpmaddwd"), ("rpi5", "sdot")])
@pytest.mark.parametrize("build", [
    lambda spec: qdense((8, 64), (64, 32), spec=spec),
    lambda spec: qconv2d((1, 8, 6, 6), (16, 8, 3, 3), padding=(1, 1, 1, 1), spec=spec),
], ids=["qdense", "qconv2d"])
def test_the_generated_assembly_computes_with_the_dot_product(build, preset, instruction):
    spec = resolve_target(preset).cpu
    asm = tvm.compile(build(spec).module(), tvm.target.Target(spec.target)).mod.inspect_source("asm")
    assert instruction in asm


@needs_vnni
@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
def test_the_host_library_holds_vpdpbusd(tmp_path):
    kernel = qconv2d((1, 8, 6, 6), (16, 8, 3, 3), padding=(1, 1, 1, 1))
    tvm.compile(kernel.module(), tvm.target.Target(CpuSpec.host().target)).export_library(str(tmp_path / "k.so"))
    asm = subprocess.run(["objdump", "-d", str(tmp_path / "k.so")], capture_output=True, text=True, check=True).stdout
    assert "vpdpbusd" in asm


def _compiled_agrees(proto, feeds: dict, tmp_path, atol: float, target: str = "x86") -> dict:
    """Compile `proto` for `target` (run here), check it against onnxruntime on `feeds`; the manifest's kernels."""
    import json

    import mdoc
    from mdoc.reference import run_onnxruntime

    import onnx

    onnx.save(proto, tmp_path / "model.onnx")
    mdoc.compile(tmp_path / "model.onnx", target=target, output=tmp_path / "art")
    got, want = mdoc.load(tmp_path / "art")(**feeds), run_onnxruntime(proto, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=atol)
    return json.loads((tmp_path / "art" / "manifest.json").read_text())["kernels"]


def _qdq_cnn(batch: int | str = 1):
    sys.path.insert(0, str(Path(__file__).parent / "passes"))
    from test_fuse_quantized import _cnn, _samples

    from mdoc.onnx_export import export_model
    from mdoc.onnx_import import import_model
    from mdoc.quantize import quantize_static

    qdq, _ = quantize_static(import_model(_cnn(batch)), _samples())
    return export_model(qdq), _samples(1)[0]


# The tolerance: float results of integer accumulators are the same up to float rounding, but a requantized
# activation may land one step off where onnxruntime's float product sits on a rounding edge (+-1 in the
# quantized tensor), which moves the float logits by a few hundredths at most on this model.
ATOL = 0.05


@needs_vnni
@pytest.mark.parametrize("preset", SPECS)
def test_a_static_qdq_model_compiles_to_the_integer_kernels_and_agrees_with_onnxruntime(tmp_path, preset):
    proto, feeds = _qdq_cnn()
    kernels = _compiled_agrees(proto, feeds, tmp_path, atol=ATOL, target=preset)
    names = [k for ks in kernels.values() for k in ks]
    assert sum(k.startswith("qconv2d") for k in names) == 3 and any(k.startswith("qdense") for k in names), kernels


@needs_vnni
def test_a_run_time_batch_keeps_the_integer_convs(tmp_path):
    proto, _ = _qdq_cnn("N")
    x = {"x": RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)}
    kernels = _compiled_agrees(proto, x, tmp_path, atol=ATOL)
    assert sum(k.startswith("qconv2d_dx") for ks in kernels.values() for k in ks) == 3, kernels


@needs_vnni
def test_a_dynamically_quantized_matmul_runs_on_qdense_with_its_run_time_scale_and_rows(tmp_path):
    from onnx import TensorProto, numpy_helper

    from mdoc.onnx_export import export_model
    from mdoc.onnx_import import import_model
    from mdoc.quantize import quantize_dynamic

    w = numpy_helper.from_array(RNG.standard_normal((64, 48)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.standard_normal(48).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 48])], [w, b])
    proto = export_model(quantize_dynamic(import_model(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)])))[0])
    # one kernel for every batch and sequence length: rows known at run time, the last tile clamped
    kernels = _compiled_agrees(proto, {"x": RNG.standard_normal((2, 5, 64)).astype(np.float32)}, tmp_path, atol=1e-4)
    assert any(k.startswith("qdense_dx64x48_bias_relu") for ks in kernels.values() for k in ks), kernels
    import mdoc
    from mdoc.reference import run_onnxruntime

    x = {"x": RNG.standard_normal((3, 17, 64)).astype(np.float32)}
    np.testing.assert_allclose(mdoc.load(tmp_path / "art")(**x)["y"], run_onnxruntime(proto, x)["y"], atol=1e-4)


@pytest.mark.slow
def test_the_raspberry_pi_5_artifact_runs_sdot_kernels_under_qemu(tmp_path):
    import json

    import onnx

    import mdoc
    from mdoc.reference import run_onnxruntime
    from mdoc.tooling.emulation import run_aarch64, why_no_arm_root

    if shutil.which("aarch64-linux-gnu-gcc") is None or why_no_arm_root() is not None:
        pytest.skip(why_no_arm_root() or "aarch64-linux-gnu-gcc is not on PATH: run .ci/setup-arm.sh")
    proto, feeds = _qdq_cnn()
    onnx.save(proto, tmp_path / "model.onnx")
    mdoc.compile(tmp_path / "model.onnx", target="rpi5", output=tmp_path / "art")
    kernels = json.loads((tmp_path / "art" / "manifest.json").read_text())["kernels"]
    assert sum(k.startswith("qconv2d") for ks in kernels.values() for k in ks) == 3, kernels
    (got,) = run_aarch64(tmp_path / "art" / "model.so", feeds)
    np.testing.assert_allclose(got, run_onnxruntime(proto, feeds)["y"], atol=ATOL)


def test_the_generic_lowering_every_target_gets_agrees_with_onnxruntime():
    """mdoc.qconv / mdoc.qmatmul through the default `Kernels` (int32 Relax ops): what CUDA and CPUs
    without a dot product run."""
    from mdoc.onnx_import import import_model
    from mdoc.pass_manager import OPT_LEVELS, PassManager, parse_pipeline
    from mdoc.reference import run_onnxruntime
    from mdoc.targets.relax import build, lower, run

    proto, feeds = _qdq_cnn()
    model = import_model(proto)
    PassManager(parse_pipeline(OPT_LEVELS[2])).run(model)
    assert sum(n.op == "mdoc.qconv" for n in model.graph) == 3
    got = run(build(lower(model), resolve_target("x86").tvm), feeds, model)
    np.testing.assert_allclose(got["y"], run_onnxruntime(proto, feeds)["y"], atol=ATOL)
