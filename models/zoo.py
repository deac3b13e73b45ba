"""The registry of reference models, and example inputs to run them on.

Each entry names a builder and the keyword arguments of a small variant that
builds and runs in milliseconds, for tests.  The registry is a plain dict:
the zoo is small and fixed, and the CLI (``mdoc zoo list``, ``mdoc zoo
build``) only reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mdoc.models.bert import bert_encoder
from mdoc.models.builder import EXAMPLE_INPUTS_KEY
from mdoc.models.detector import detector_head
from mdoc.models.mobilenet import mobilenetv2
from mdoc.models.ppocr import ppocr_rec
from mdoc.models.recurrent import lstm_seq
from mdoc.models.resnet import resnet18, resnet50
from mdoc.models.sample import sample
from mdoc.models.silero_vad import silero_vad
from mdoc.models.vit import vit_tiny
from mdoc.models.yolo import yolo_detector


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    builder: Callable[..., onnx.ModelProto]
    test_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Arguments of a small variant for tests: same ops and structure, tiny sizes."""


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "sample", "small CIFAR-sized CNN (Conv/BN/Relu, residual Add, Gemm); the README's first model",
            sample, {"width": 8},
        ),
        ZooEntry(
            "resnet18", "ResNet-18: Conv+BatchNorm+Relu, residual Adds, MaxPool, GlobalAveragePool, Gemm",
            resnet18, {"image_size": 32, "width": 8, "num_classes": 10},
        ),
        ZooEntry(
            "resnet50", "ResNet-50: bottleneck blocks, 53 convs with BatchNorm",
            resnet50, {"image_size": 32, "width": 8, "num_classes": 10},
        ),
        ZooEntry(
            "mobilenetv2", "MobileNetV2: depthwise convs, Clip as ReLU6, inverted residuals",
            mobilenetv2, {"image_size": 32, "width_mult": 0.25, "num_classes": 10},
        ),
        ZooEntry(
            "bert_encoder", "BERT-mini encoder as PyTorch exports it: decomposed LayerNorm, erf GELU, attention",
            bert_encoder,
            {"layers": 2, "hidden": 32, "heads": 2, "vocab_size": 100, "max_positions": 32, "example_seq": 16},
        ),
        ZooEntry(
            "vit_tiny", "ViT-Ti/16: patch Conv, class token, pre-norm encoder layers, classifier",
            vit_tiny, {"image_size": 32, "patch": 8, "hidden": 32, "layers": 2, "heads": 2, "num_classes": 10},
        ),
        ZooEntry(
            "lstm_seq", "sequence classifier: bidirectional LSTM, GRU, Gemm",
            lstm_seq, {"features": 8, "hidden": 16, "num_classes": 5, "example_seq": 8},
        ),
        ZooEntry(
            "detector_head", "YOLO-style detector: SiLU convs, FPN with nearest and linear Resize, anchor heads",
            detector_head, {"image_size": 64, "width": 4, "fpn_channels": 8, "num_classes": 3},
        ),
        ZooEntry(
            "silero_vad", "Silero-VAD-like: nested If on the sample rate, STFT Conv1d front ends, LSTM with state",
            silero_vad, {"chunk": 128, "n_fft": 32, "channels": 8, "hidden": 16},
        ),
        ZooEntry(
            "ppocr_rec", "PP-OCR-like text recognizer: HardSwish conv backbone, im2seq, BiLSTM, CTC Softmax",
            ppocr_rec, {"width": 64, "channels": 8, "hidden": 16, "vocab": 20},
        ),
        ZooEntry(
            "yolo_detector", "YOLOv8-style detector: C2f, SPPF, FPN+PAN, DFL and box decode in the graph",
            yolo_detector, {"image_size": 64, "width": 4, "num_classes": 3, "reg_max": 4},
        ),
    ]
}


def list_models() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(ZOO)


def build(name: str, **kwargs: Any) -> onnx.ModelProto:
    """Build zoo model ``name``; ``kwargs`` go to its builder (see its docstring for sizes)."""
    try:
        entry = ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; the zoo has: {', '.join(list_models())}") from None
    return entry.builder(**kwargs)


def example_inputs(
    model: onnx.ModelProto, *, seed: int = 0, dims: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Seeded random inputs for ``model``: standard normal floats, integers in their valid range.

    Symbolic dimensions take the sizes the builder recorded in the model's
    metadata (batch 1, a typical sequence length), overridden by ``dims``;
    integer inputs (token ids, masks) take the ranges recorded there.  So a
    zoo model saved to disk can still be fed without knowing its builder.
    """
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props.get(EXAMPLE_INPUTS_KEY, "{}"))
    sizes = {**meta.get("example_dims", {}), **(dims or {})}
    int_ranges = meta.get("int_ranges", {})
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = []
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif d.dim_param in sizes:
                shape.append(sizes[d.dim_param])
            else:
                raise ValueError(
                    f"input {value.name!r} has symbolic dimension {d.dim_param!r} with no example size; "
                    f"pass dims={{{d.dim_param!r}: ...}}"
                )
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif value.name in int_ranges:
            low, high = int_ranges[value.name]
            feeds[value.name] = rng.integers(low, high, shape).astype(dtype)
        else:
            raise ValueError(
                f"input {value.name!r} is {dtype} with no recorded value range; "
                f"example_inputs only knows the integer inputs of zoo models"
            )
    return feeds
