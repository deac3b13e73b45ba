"""Target presets, artifacts and the compile/run/compare commands on the bundled sample model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mdoc.errors import MdocError
from mdoc.targets.presets import host_mcpu, list_presets, resolve_target

SAMPLE = Path(__file__).resolve().parents[1] / "models" / "sample.onnx"


def test_presets_name_real_cpus():
    presets = list_presets()
    assert {"x86", "x86-avx2", "x86-avx512", "aarch64", "rpi4", "rpi5", "jetson-orin-cpu", "cuda"} <= set(presets)
    assert presets["x86"].tvm["mcpu"] == host_mcpu() != "native"
    assert presets["rpi4"].tvm["mtriple"] == "aarch64-linux-gnu" and presets["rpi4"].cross_compiler
    assert resolve_target("cuda", arch="sm_87").tvm["arch"] == "sm_87"


@pytest.mark.parametrize("text, message", [
    ("pdp11", "unknown target 'pdp11'"),
    ('{"kind": "llvm", "mcpu": "native"}', "mcpu 'native' is silently wrong"),
    ("{not json", "is not valid JSON"),
    ('{"mcpu": "znver4"}', "must be a JSON object with a 'kind'"),
    ("missing.json", "target file not found"),
])
def test_bad_targets(text, message):
    with pytest.raises(MdocError, match=message):
        resolve_target(text)


def test_arch_only_for_cuda():
    with pytest.raises(MdocError, match="only applies to CUDA"):
        resolve_target("x86", arch="sm_90")
    with pytest.raises(MdocError, match="not a CUDA architecture"):
        resolve_target("cuda", arch="90")


@pytest.fixture(scope="module")
def x86_artifact(tmp_path_factory):
    import mdoc

    out = tmp_path_factory.mktemp("art") / "sample.x86"
    return mdoc.compile(SAMPLE, "x86", out, show_progress=False)


def test_compile_run_compare(mdoc_cli, x86_artifact, tmp_path):
    manifest = json.loads((x86_artifact / "manifest.json").read_text())
    assert manifest["backend"] == "tvm" and manifest["target"]["name"] == "x86"
    assert manifest["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 3, 32, 32], "param": "image"}]
    assert set(manifest["files"]) == {"model.so"} and "fold-constants" in manifest["pipeline"]
    # the kernel each node got: the sample's convs carry their fused Relu (fuse-epilogue at -O2)
    kernels = [k for names in manifest["kernels"].values() for k in names]
    assert any(k.startswith("conv2d") and k.endswith("_relu") for k in kernels), manifest["kernels"]
    assert sum(manifest["kernel_families"].values()) == len(kernels)
    out = tmp_path / "out.npz"
    r = mdoc_cli("run", x86_artifact, "-o", out, "--repeat", "3")
    assert r.code == 0, r.err
    assert "latency: median" in r.out and np.load(out)["logits"].shape == (1, 10)
    r = mdoc_cli("compare", SAMPLE, x86_artifact, "--rtol", "1e-3", "--atol", "1e-4")
    assert r.code == 0, r.err


def test_python_api_load(x86_artifact):
    import mdoc

    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    out = mdoc.load(x86_artifact)(image=x)
    assert out["logits"].shape == (1, 10) and np.isfinite(out["logits"]).all()
    with pytest.raises(MdocError, match="input 'image' has shape \\[1, 3, 8, 8\\]"):
        mdoc.load(x86_artifact)(image=x[:, :, :8, :8])


def test_tampered_artifact_is_refused(mdoc_cli, x86_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(x86_artifact, copy)
    with open(copy / "model.so", "ab") as f:
        f.write(b"\0")
    r = mdoc_cli("run", copy)
    assert r.code == 2 and "does not match its sha256" in r.err


def test_failed_compile_leaves_nothing(mdoc_cli, tmp_path):
    out = tmp_path / "never"
    r = mdoc_cli("compile", SAMPLE, "-t", "pdp11", "-o", out)
    assert r.code == 2 and "unknown target 'pdp11'" in r.err
    assert not out.exists() and not list(tmp_path.glob(".mdoc-*"))


def test_cuda_builds_without_a_gpu(tmp_path):
    import mdoc

    art = mdoc.compile(SAMPLE, "cuda", tmp_path / "s.cuda", arch="sm_90", show_progress=False)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["target"]["device"] == "cuda" and manifest["target"]["tvm"]["arch"] == "sm_90"
    assert (art / "model.so").stat().st_size > 0


def test_aarch64_cross_compiles(tmp_path):
    import shutil
    import subprocess

    import mdoc

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu)")
    art = mdoc.compile(SAMPLE, "rpi4", tmp_path / "s.arm", show_progress=False)
    info = subprocess.run(["file", "-b", str(art / "model.so")], capture_output=True, text=True).stdout
    assert "aarch64" in info or "ARM aarch64" in info or not info
    from mdoc.tooling.emulation import arm_root

    if arm_root() is None:
        pytest.skip("no arm64 root for emulation (.ci/setup-arm.sh)")
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    from mdoc.reference import run_onnxruntime

    got = mdoc.load(art)(image=x)["logits"]
    want = run_onnxruntime(SAMPLE, {"image": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
