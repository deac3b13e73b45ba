"""A PP-OCR-like text line recognizer (CRNN): conv backbone, feature map to sequence, BiLSTM, CTC head.

The shape of PaddleOCR's recognition models as they reach ONNX: a small
MobileNet-like backbone (Conv+BatchNorm+HardSwish, depthwise-separable blocks
that stride the height only, so the text line keeps its horizontal
resolution), a MaxPool that brings the height to 1, the "im2seq" neck
(Reshape through a Shape/Gather/Concat chain, as PyTorch exports
``x.reshape(B, C, -1)``, then a Transpose to time-major), a bidirectional LSTM
whose two directions are concatenated on the feature axis, and a linear layer
to the CTC vocabulary (blank included) followed by a Softmax.
"""

from __future__ import annotations

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, Dim, GraphBuilder
from mdoc.models.layers import batch_norm, linear
from mdoc.models.recurrent import recurrent_weights


def _conv_bn_hswish(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, *,
                    stride: tuple[int, int] = (1, 1), groups: int = 1) -> str:
    fan_in = cin // groups * k * k
    w = b.normal(f"{name}.conv.weight", (cout, cin // groups, k, k), (2.0 / fan_in) ** 0.5)
    with b.scope(f"{name}.conv"):
        y = b.op("Conv", [x, w], dilations=[1, 1], group=groups, kernel_shape=[k, k], pads=[k // 2] * 4,
                 strides=list(stride))
    y = batch_norm(b, y, f"{name}.bn", cout)
    with b.scope(f"{name}.act"):
        return b.op("HardSwish", [y])


def ppocr_rec(
    *,
    batch: Dim = "N",
    height: int = 32,
    width: int = 160,
    channels: int = 32,
    hidden: int = 48,
    vocab: int = 96,
    seed: int = 0,
) -> onnx.ModelProto:
    """``x`` [batch, 3, height, width] text line to ``probs`` [batch, width / 4, vocab + 1]: per time step,
    a distribution over the characters and the CTC blank (index 0)."""
    if height != 32 or width % 4:
        raise ValueError(f"ppocr_rec: height must be 32 and width a multiple of 4 (got {height}x{width})")
    b = GraphBuilder("ppocr_rec", seed)
    x = b.input("x", FLOAT, [batch, 3, height, width])

    # backbone: stride-2 stem, then depthwise-separable blocks that halve the height only
    x = _conv_bn_hswish(b, x, "backbone.conv1", 3, channels, 3, stride=(2, 2))
    cin = channels
    for i, cout in enumerate((channels, 2 * channels, 2 * channels, 4 * channels)):
        stride = (2, 1) if i > 0 else (1, 1)
        x = _conv_bn_hswish(b, x, f"backbone.block{i}.dw", cin, cin, 3, stride=stride, groups=cin)
        x = _conv_bn_hswish(b, x, f"backbone.block{i}.pw", cin, cout, 1)
        cin = cout
    with b.scope("backbone.pool"):
        x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])  # [N, C, 1, W/4]

    # neck: im2seq, x.reshape(B, C, -1).permute(2, 0, 1) -> [T, N, C]
    with b.scope("neck"):
        x = b.op("Reshape", [x, b.shape_of(x, keep=[0, 1], tail=[-1])])
        x = b.op("Transpose", [x], perm=[2, 0, 1])
    with b.scope("neck.encoder.lstm"):
        weights = recurrent_weights(b, "neck.encoder.lstm", 4, 2, cin, hidden)
        y, _, _ = b.op("LSTM", [x, *weights], outputs=3, direction="bidirectional", hidden_size=hidden)
        # Y is [T, 2, N, H]; both directions side by side on the last axis, then batch-major
        y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
        y = b.op("Reshape", [y, b.const([0, 0, 2 * hidden], np.int64)])
        y = b.op("Transpose", [y], perm=[1, 0, 2])
    logits = linear(b, y, "head.fc", 2 * hidden, vocab + 1, gain=4.0)
    with b.scope("head"):
        probs = b.op("Softmax", [logits], axis=2, outputs=["probs"])
    return b.model(
        [(probs, FLOAT, [batch, width // 4, vocab + 1])],
        doc=f"ppocr_rec: HardSwish backbone, BiLSTM({hidden}), CTC head over {vocab} characters, seeded weights",
        example_dims={"N": 1},
    )
