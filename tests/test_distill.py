"""mdoc distill: layer-wise least squares after pruning, bias correction after quantization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mdoc.distill import distill
from mdoc.errors import MdocError
from mdoc.onnx_import import import_model
from mdoc.pruning.api import prune_model
from mdoc.quantize import quantize_static

N = helper.make_node


def _cnn() -> onnx.ModelProto:
    """Conv(16) -> Relu -> Conv(16) + residual -> Relu -> GlobalAveragePool -> Flatten -> Gemm(10), seeded
    (the residual Add after a conv is what onnxruntime fuses away unless told not to)."""
    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((16, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(16) * 0.1,
             "w2": rng.standard_normal((16, 16, 3, 3)) * 0.15, "b2": rng.standard_normal(16) * 0.1,
             "fw": rng.standard_normal((10, 16)) * 0.3, "fb": rng.standard_normal(10) * 0.1}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, name="conv2"), N("Add", ["c2", "r1"], ["s"]),
             N("Relu", ["s"], ["r2"]),
             N("GlobalAveragePool", ["r2"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_distill_brings_a_pruned_model_closer_to_its_teacher():
    student, _ = prune_model(import_model(_cnn()), channels=0.5)
    fitted, report = distill(student, import_model(_cnn()), _samples(64, 0), eval_samples=_samples(32, 1))
    assert [r["layer"] for r in report["layers"]] == ["conv2", "fc"]
    assert all(r["error_after"] < r["error_before"] for r in report["layers"])
    assert report["accuracy_after"] > report["accuracy_before"] + 0.01
    assert next(n for n in fitted.graph if n.name == "conv2").input(1).const_value.shape == (8, 8, 3, 3)


@pytest.mark.parametrize("int8", ["requantize", "bias"])
def test_an_int8_model_refitted_on_its_grid_or_bias_corrected(int8):
    quantized, _ = quantize_static(import_model(_cnn()), _samples(16, 0))
    fitted, report = distill(quantized, import_model(_cnn()), _samples(64, 0), eval_samples=_samples(32, 1), int8=int8)
    assert {r["mode"] for r in report["layers"]} == {int8} and len(report["layers"]) == 3
    assert all(r["error_after"] <= r["error_before"] for r in report["layers"])
    if int8 == "requantize":
        assert report["accuracy_after"] > report["accuracy_before"]
        dq = next(n for n in fitted.graph if n.op == "onnx.DequantizeLinear" and n.input(0).const_value is not None)
        assert dq.input(0).const_value.dtype == np.int8
    else:  # the centered metric hardly sees a mean shift
        assert abs(report["accuracy_after"] - report["accuracy_before"]) < 0.01


def test_scale_mode_stretches_a_channel_back_and_keeps_the_int8_values():
    """A quantized conv whose channel 3 dequantizes 1.5x too large: the per-channel slope puts it back exactly
    (the slope goes into the scale, the int8 values stay), and it also reaches the depthwise conv."""
    teacher = _cnn()
    dw = numpy_helper.from_array((np.random.default_rng(2).standard_normal((16, 1, 3, 3)) * 0.5).astype(np.float32), "dw")
    teacher.graph.initializer.append(dw)
    nodes = list(teacher.graph.node)
    nodes[1].output[0] = "r1a"
    nodes.insert(2, N("Conv", ["r1a", "dw"], ["r1"], pads=[1] * 4, group=16, name="dwconv"))
    del teacher.graph.node[:]
    teacher.graph.node.extend(nodes)
    quantized, _ = quantize_static(import_model(teacher), _samples(16, 0))
    dq = next(n for n in quantized.graph if n.op == "onnx.DequantizeLinear" and n.input(0).const_value is not None
              and n.output.uses()[0][0].name == "conv2")
    levels = dq.input(0).const_value.copy()
    scale = dq.input(1).const_value.copy()
    scale[3] *= 1.5
    dq.set_input(1, quantized.graph.constant(scale, name="bad_scale", before=dq))
    fitted, report = distill(quantized, import_model(teacher), _samples(64, 0), eval_samples=_samples(32, 1),
                             int8="scale", ridge=1e-6)
    rows = {r["layer"]: r for r in report["layers"]}
    assert set(rows) == {"conv1", "dwconv", "conv2", "fc"} and {r["mode"] for r in rows.values()} == {"scale"}
    assert rows["conv2"]["error_after"] < 0.2 * rows["conv2"]["error_before"]
    assert report["accuracy_after"] > report["accuracy_before"]
    conv2 = next(n for n in fitted.graph if n.name == "conv2").input(1).producer()
    np.testing.assert_array_equal(conv2.input(0).const_value, levels)
    assert abs(conv2.input(1).const_value[3] / scale[3] - 1 / 1.5) < 0.05


def test_distill_refuses_a_student_with_nothing_to_fit():
    with pytest.raises(MdocError, match="nothing to distill"):
        distill(import_model(_cnn()), import_model(_cnn()), _samples(2, 0))


def test_cli_distill(tmp_path, mdoc_cli):
    onnx.save(_cnn(), tmp_path / "teacher.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((48, 1, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32))
    r = mdoc_cli("prune", tmp_path / "teacher.onnx", "-o", tmp_path / "student.onnx", "--channels", "0.5")
    assert r.code == 0, r.err
    r = mdoc_cli("distill", tmp_path / "student.onnx", "--teacher", tmp_path / "teacher.onnx", "--calib",
                 tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz", "-o", tmp_path / "distilled.onnx")
    assert r.code == 0, r.err
    assert "conv2 (refit): error" in r.out and "of the gap to 1 closed" in r.out
    assert (tmp_path / "distilled.onnx").is_file()
    r = mdoc_cli("distill", tmp_path / "teacher.onnx", "--teacher", tmp_path / "teacher.onnx", "--calib",
                 tmp_path / "calib.npz", "-o", tmp_path / "same.onnx")
    assert r.code == 2 and "nothing to distill" in r.err and not (tmp_path / "same.onnx").exists()


def test_int8_resnet_block_values_stay_readable():
    """A QDQ ResNet's conv before a residual Add: onnxruntime's extended fusions would swallow its output."""
    from mdoc.models.resnet import resnet18

    rng = np.random.default_rng(0)
    samples = [{"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    teacher = resnet18(image_size=32, width=8, num_classes=10)
    quantized, _ = quantize_static(import_model(teacher), samples)
    _, report = distill(quantized, import_model(teacher), samples, int8="requantize")
    assert len(report["layers"]) == 21 and report["accuracy_after"] > report["accuracy_before"]
