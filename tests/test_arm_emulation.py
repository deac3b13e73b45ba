"""The ARM edge-device route: cross-compile a Relax module for aarch64 and run it under qemu.

Needs `.ci/setup-arm.sh` (the aarch64 cross compiler, qemu-user-static and the
arm64 root with the aarch64 TVM runtime); skipped with the reason otherwise.
Each emulated run starts a fresh aarch64 python: about 2 s.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from mdoc.tooling.emulation import run_aarch64, why_no_arm_root

tvm = pytest.importorskip("tvm")
from tvm.script import relax as R  # noqa: E402
from tvm.support import cc  # noqa: E402  (tvm.contrib.cc moved here in 0.27)

AARCH64_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
CROSS_CC = "aarch64-linux-gnu-gcc"


def _unavailable() -> str | None:
    if shutil.which(CROSS_CC) is None:
        return f"{CROSS_CC} is not on PATH: run .ci/setup-arm.sh"
    return why_no_arm_root()


needs_arm = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


@tvm.script.ir_module
class ConvReluMatmul:
    @R.function
    def main(
        x: R.Tensor((1, 3, 16, 16), "float32"),
        w: R.Tensor((8, 3, 3, 3), "float32"),
        m: R.Tensor((2048, 10), "float32"),
    ):
        with R.dataflow():
            y = R.nn.relu(R.nn.conv2d(x, w, padding=[1, 1, 1, 1]))
            z = R.matmul(R.reshape(y, (1, 2048)), m)
            out = (z, y)
            R.output(out)
        return out


def _reference(x: np.ndarray, w: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((1, 8, 16, 16), np.float64)
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, i : i + 16, j : j + 16], w[:, :, i, j])
    y = np.maximum(y, 0)
    return y.reshape(1, -1) @ m, y


@pytest.fixture(scope="module")
def aarch64_lib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arm") / "conv_relu_matmul.so"
    ex = tvm.compile(ConvReluMatmul, tvm.target.Target(AARCH64_TARGET))
    # a fresh cross_compiler per export: it appends export options to its own list
    ex.export_library(str(path), fcompile=cc.cross_compiler(CROSS_CC))
    return path


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((1, 3, 16, 16), dtype=np.float32),
        "w": rng.standard_normal((8, 3, 3, 3), dtype=np.float32),
        "m": rng.standard_normal((2048, 10), dtype=np.float32),
    }


@pytest.mark.slow
@needs_arm
def test_aarch64_artifact_matches_numpy_under_qemu(aarch64_lib, inputs):
    # the inputs are given out of parameter order on purpose: they are matched by name
    outputs = run_aarch64(aarch64_lib, {k: inputs[k] for k in ("m", "x", "w")})
    expected = _reference(inputs["x"].astype(np.float64), inputs["w"], inputs["m"])
    assert [o.shape for o in outputs] == [(1, 10), (1, 8, 16, 16)]
    assert all(o.dtype == np.float32 for o in outputs)
    np.testing.assert_allclose(outputs[0], expected[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(outputs[1], expected[1], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_arm
def test_bfloat16_and_onnx_style_names_cross(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from tvm import relax

    bb = relax.BlockBuilder()
    # ONNX names are not identifiers, and "file" would collide with np.savez's own argument
    a = relax.Var("input.1", relax.TensorType((4, 8), "bfloat16"))
    b = relax.Var("file", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            doubled = bb.emit(relax.op.add(a, a))
            total = bb.emit_output(relax.op.add(relax.op.astype(doubled, "float32"), b))
        bb.emit_func_output(relax.Tuple([doubled, total]))
    path = tmp_path / "bf16.so"
    tvm.compile(bb.get(), tvm.target.Target(AARCH64_TARGET)).export_library(
        str(path), fcompile=cc.cross_compiler(CROSS_CC)
    )
    x = np.arange(32, dtype=np.float32).reshape(4, 8).astype(ml_dtypes.bfloat16)
    y = np.full((4, 8), 0.5, np.float32)
    doubled, total = run_aarch64(path, {"input.1": x, "file": y})
    assert doubled.dtype == ml_dtypes.bfloat16 and total.dtype == np.float32
    np.testing.assert_array_equal(doubled.astype(np.float32), 2 * x.astype(np.float32))
    np.testing.assert_array_equal(total, 2 * x.astype(np.float32) + 0.5)


@pytest.mark.slow
@needs_arm
def test_wrong_input_names_give_one_line_error(aarch64_lib, inputs):
    with pytest.raises(RuntimeError) as err:
        run_aarch64(aarch64_lib, {"x": inputs["x"], "w": inputs["w"]})
    assert str(err.value) == "run_aarch64: conv_relu_matmul.so: main takes inputs (x, w, m) but was given (x, w)"


@pytest.mark.slow
@needs_arm
def test_wrong_input_shape_names_the_parameter(aarch64_lib, inputs):
    with pytest.raises(RuntimeError) as err:
        run_aarch64(aarch64_lib, dict(inputs, x=inputs["x"][:, :2]))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("run_aarch64: conv_relu_matmul.so: main failed:")
    assert "param=x" in message


@pytest.mark.skipif(platform.machine() != "x86_64", reason="needs an x86-64 host library")
def test_host_library_is_refused_before_emulation():
    host_lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so"
    with pytest.raises(RuntimeError, match=r"is built for x86-64, not aarch64; compile with target") as err:
        run_aarch64(host_lib, {})
    assert "\n" not in str(err.value)


def test_missing_library_is_named(tmp_path):
    with pytest.raises(RuntimeError, match=r"^run_aarch64: library .*nothing\.so does not exist$"):
        run_aarch64(tmp_path / "nothing.so", {})
