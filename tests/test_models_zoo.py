"""The model zoo: every model builds small, passes the full ONNX checker, runs in
onnxruntime with sane outputs, and keeps the op patterns the passes are written against.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mdoc.models import ZOO, build, example_inputs, list_models

BATCH = 2


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(value.type.tensor_type.shape.dim)


def _declared_shape(value: onnx.ValueInfoProto, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else sizes[d.dim_param] for d in _dims(value))


@pytest.fixture(scope="module", params=list_models())
def small(request) -> tuple[str, onnx.ModelProto]:
    name = request.param
    return name, build(name, **ZOO[name].test_kwargs)


def test_registry_lists_every_model_once():
    assert list_models() == sorted(ZOO)
    for name, entry in ZOO.items():
        assert entry.name == name
        assert entry.description and "\n" not in entry.description


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown zoo model 'resnet'; the zoo has: .*resnet18"):
        build("resnet")


def test_model_is_valid_onnx(small):
    _, model = small
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_model_runs_with_declared_shapes_and_live_outputs(small):
    name, model = small
    feeds = example_inputs(model, dims={"N": BATCH})
    outputs = _run(model, feeds)
    sizes = {d.dim_param: n for v in model.graph.input for d, n in zip(_dims(v), feeds[v.name].shape) if d.dim_param}
    for value, out in zip(model.graph.output, outputs):
        where = f"{name}: output {value.name!r}"
        assert out.shape == _declared_shape(value, sizes), where
        assert np.isfinite(out).all(), where
        assert out.std() > 1e-2, f"{where} is degenerate (std {out.std():.2e})"
        if out.shape[0] == BATCH:
            assert not np.allclose(out[0], out[1], rtol=1e-3, atol=1e-4), f"{where}: batch items are identical"


def test_model_is_seeded(small):
    name, model = small
    again = build(name, **ZOO[name].test_kwargs)
    assert again.SerializeToString() == model.SerializeToString()
    other = build(name, **ZOO[name].test_kwargs, seed=1)
    assert other.graph.initializer[0].raw_data != model.graph.initializer[0].raw_data


# The patterns the compiler's passes are written against; a builder refactor must keep them.
SIGNATURES = {
    "sample": {"Conv": 5, "BatchNormalization": 5, "Relu": 5, "Add": 1, "MaxPool": 1, "Shape": 1, "Gemm": 1},
    "resnet18": {"Conv": 20, "BatchNormalization": 20, "Relu": 17, "Add": 8, "MaxPool": 1, "Flatten": 1, "Gemm": 1},
    "resnet50": {"Conv": 53, "BatchNormalization": 53, "Relu": 49, "Add": 16, "Gemm": 1},
    # at width_mult 0.25 the first block maps 8 to 8 channels, so it gains a residual Add (10 at full width)
    "mobilenetv2": {"Conv": 52, "BatchNormalization": 52, "Clip": 35, "Add": 11, "Gemm": 1},
    "bert_encoder": {"MatMul": 16, "ReduceMean": 10, "Pow": 5, "Sqrt": 5, "Erf": 2, "Softmax": 2, "Cast": 1, "Tanh": 1},
    "vit_tiny": {"Conv": 1, "MatMul": 16, "Expand": 1, "ReduceMean": 10, "Erf": 2, "Softmax": 2, "Gemm": 1},
    "lstm_seq": {"LSTM": 1, "GRU": 1, "Gemm": 1},
    "detector_head": {"Resize": 2, "Sigmoid": 13, "Concat": 2, "Transpose": 3},
    "silero_vad": {"If": 1, "Equal": 1, "LSTM": 1, "Conv": 3, "Sigmoid": 1},
    "ppocr_rec": {"Conv": 9, "HardSwish": 9, "Shape": 2, "Gather": 2, "LSTM": 1, "Softmax": 1},
    "yolo_detector": {"Conv": 64, "Split": 10, "MaxPool": 3, "Resize": 2, "Shape": 5, "Softmax": 1, "Transpose": 2},
}


def test_model_keeps_its_op_signature(small):
    name, model = small
    histogram = Counter(node.op_type for node in model.graph.node)
    assert {op: histogram[op] for op in SIGNATURES[name]} == SIGNATURES[name]
    assert "LayerNormalization" not in histogram and "Gelu" not in histogram


def test_mobilenet_has_depthwise_convs_and_clip_with_inputs():
    model = build("mobilenetv2", **ZOO["mobilenetv2"].test_kwargs)
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sum(g > 1 for g in groups) == 17
    assert all(len(n.input) == 3 for n in model.graph.node if n.op_type == "Clip")


def test_detector_resizes_both_ways():
    model = build("detector_head", **ZOO["detector_head"].test_kwargs)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    modes = {onnx.helper.get_attribute_value(a) for n in resizes for a in n.attribute if a.name == "mode"}
    assert modes == {b"nearest", b"linear"}
    assert {len(n.input) for n in resizes} == {3, 4}  # scales, then sizes


def test_silero_nests_its_sample_rate_ifs_and_each_rate_differs():
    model = build("silero_vad", **ZOO["silero_vad"].test_kwargs)
    (outer,) = [n for n in model.graph.node if n.op_type == "If"]
    else_branch = next(a.g for a in outer.attribute if a.name == "else_branch")
    assert [n.op_type for n in else_branch.node if n.op_type == "If"] == ["If"]
    feeds = example_inputs(model, dims={"N": 2})
    probs = []
    for sr in (16000, 8000, 32000):
        feeds["sr"] = np.array(sr, np.int64)
        probs.append(_run(model, feeds)[0])
    assert not np.allclose(probs[0], probs[1]) and not np.allclose(probs[0], probs[2])


def test_bert_attention_mask_changes_the_output():
    model = build("bert_encoder", **ZOO["bert_encoder"].test_kwargs)
    feeds = example_inputs(model, dims={"N": 1})
    feeds["attention_mask"][:] = 1
    full = _run(model, feeds)[0]
    feeds["attention_mask"][:, -4:] = 0
    padded = _run(model, feeds)[0]
    assert not np.allclose(full[:, :-4], padded[:, :-4], rtol=1e-3, atol=1e-4)


def test_bert_runs_at_any_sequence_length():
    model = build("bert_encoder", **ZOO["bert_encoder"].test_kwargs)
    for seq in (1, 7):
        (hidden, _) = _run(model, example_inputs(model, dims={"N": 3, "S": seq}))
        assert hidden.shape == (3, seq, 32)


def test_example_inputs_refuses_an_unknown_symbol():
    model = build("bert_encoder", **ZOO["bert_encoder"].test_kwargs)
    del model.metadata_props[:]
    with pytest.raises(ValueError, match=r"symbolic dimension 'N' with no example size; pass dims=\{'N': \.\.\.\}"):
        example_inputs(model)
