"""The zoo's third-party-style models (control flow, recurrent layers, detection decode) compiled end to end.

Silero-VAD-like (nested Ifs on a run-time sample rate, LSTM state in and
out), PP-OCR-like (BiLSTM recognizer) and YOLOv8-style (C2f, SPPF, DFL,
decode) go through `mdoc.compile` for x86 and are compared with onnxruntime at
rtol 1e-3 / atol 1e-4 on several inputs, every Silero sample-rate branch
through one artifact. The aarch64 artifacts run under qemu (slow), and the
CUDA ones are built without a GPU.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

import mdoc  # noqa: E402
from mdoc.models import ZOO, build, example_inputs  # noqa: E402
from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.tooling.emulation import why_no_arm_root  # noqa: E402

MODELS = ["silero_vad", "ppocr_rec", "yolo_detector"]
BATCH = 2


def _model(name: str) -> onnx.ModelProto:
    return build(name, **ZOO[name].test_kwargs)


def _feeds(name: str, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Two seeded inputs; for Silero, one per sample-rate branch (16 kHz, 8 kHz, other)."""
    if name == "silero_vad":
        feeds = []
        for seed, sr in enumerate((16000, 8000, 32000)):
            f = example_inputs(model, seed=seed, dims={"N": BATCH})
            f["sr"] = np.array(sr, np.int64)
            feeds.append(f)
        return feeds
    return [example_inputs(model, seed=seed, dims={"N": BATCH}) for seed in range(2)]


def _check(run, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    got = run(**feeds)
    assert list(got) == [o.name for o in model.graph.output]
    for (name, g), e in zip(got.items(), expected):
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-4, err_msg=name)


def _compile(name: str, target: str, out, **kwargs):
    return mdoc.compile(import_model(_model(name)), target, out, dims={"N": BATCH}, show_progress=False, **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_x86_matches_onnxruntime(name, tmp_path):
    model = _model(name)
    run = mdoc.load(_compile(name, "x86", tmp_path / name))
    for feeds in _feeds(name, model):
        _check(run, model, feeds)


def test_silero_state_carries_between_chunks(tmp_path):
    """Feeding stateN back as the next chunk's state, as a VAD stream does, stays equal to onnxruntime."""
    model = _model("silero_vad")
    run = mdoc.load(_compile("silero_vad", "x86", tmp_path / "vad"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds("silero_vad", model)[0]
    for seed in range(3):
        feeds["input"] = np.random.default_rng(seed).standard_normal(feeds["input"].shape).astype(np.float32)
        (prob, state), got = session.run(None, feeds), run(**feeds)
        np.testing.assert_allclose(got["output"], prob, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got["stateN"], state, rtol=1e-3, atol=1e-4)
        feeds["state"] = state


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n == "yolo_detector" else [])
                                  for n in MODELS])  # YOLO's CUDA build takes half a minute
def test_cuda_builds_without_a_gpu(name, tmp_path):
    art = _compile(name, "cuda", tmp_path / name, arch="sm_90")
    assert (art / "model.so").stat().st_size > 0


def _arm_unavailable() -> str | None:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        return "aarch64-linux-gnu-gcc is not on PATH: run .ci/setup-arm.sh"
    return why_no_arm_root()


@pytest.mark.slow
@pytest.mark.skipif(_arm_unavailable() is not None, reason=_arm_unavailable() or "")
@pytest.mark.parametrize("name", MODELS)
def test_aarch64_matches_onnxruntime_under_qemu(name, tmp_path):
    model = _model(name)
    run = mdoc.load(_compile(name, "rpi4", tmp_path / name))
    for feeds in _feeds(name, model):
        _check(run, model, feeds)
