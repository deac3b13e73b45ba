"""MobileNetV2 (torchvision layout).

Brings what ResNet lacks: depthwise convolutions (Conv with ``group`` equal to
the channel count), ReLU6 written as Clip with min and max *inputs* (so a
fusion has to look through two Constant nodes), linear bottlenecks with no
activation after the projection, and inverted residuals whose Add joins two
un-activated tensors.
"""

from __future__ import annotations

import onnx

from mdoc.models.builder import FLOAT, Dim, GraphBuilder
from mdoc.models.layers import BN_GAMMA, batch_norm, classifier, conv, pool_flatten, relu6

INVERTED_RESIDUAL_SETTING = (
    # expansion t, output channels c, repeats n, first stride s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

RESIDUAL_GAMMA = (0.3, 0.7)
"""Scale range of the projection BatchNorm in blocks with a residual Add, so the stream grows slowly."""


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never more than 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, stride: int, groups: int) -> str:
    y = conv(b, x, f"{name}.0", cin, cout, k, stride=stride, groups=groups)
    return relu6(b, batch_norm(b, y, f"{name}.1", cout), f"{name}.2")


def _inverted_residual(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int, t: int) -> str:
    hidden = cin * t
    y, i = x, 0
    if t != 1:
        y = _conv_bn_relu6(b, y, f"{name}.conv.0", cin, hidden, 1, 1, 1)
        i = 1
    y = _conv_bn_relu6(b, y, f"{name}.conv.{i}", hidden, hidden, 3, stride, hidden)
    y = conv(b, y, f"{name}.conv.{i + 1}", hidden, cout, 1, gain=1.0)
    residual = stride == 1 and cin == cout
    y = batch_norm(b, y, f"{name}.conv.{i + 2}", cout, gamma=RESIDUAL_GAMMA if residual else BN_GAMMA)
    if residual:
        with b.scope(name):
            y = b.op("Add", [x, y])
    return y


def mobilenetv2(
    *,
    batch: Dim = "N",
    image_size: int = 224,
    width_mult: float = 1.0,
    num_classes: int = 1000,
    seed: int = 0,
) -> onnx.ModelProto:
    """MobileNetV2; ``width_mult`` scales every layer's channels as torchvision's ``width_mult`` does."""
    b = GraphBuilder("mobilenetv2", seed)
    x = b.input("image", FLOAT, [batch, 3, image_size, image_size])
    cin = _make_divisible(32 * width_mult)
    last = _make_divisible(1280 * max(1.0, width_mult))
    x = _conv_bn_relu6(b, x, "features.0", 3, cin, 3, 2, 1)
    index = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        cout = _make_divisible(c * width_mult)
        for i in range(n):
            x = _inverted_residual(b, x, f"features.{index}", cin, cout, s if i == 0 else 1, t)
            cin, index = cout, index + 1
    x = _conv_bn_relu6(b, x, f"features.{index}", cin, last, 1, 1, 1)
    logits = b.rename(classifier(b, pool_flatten(b, x), "classifier.1", last, num_classes), "logits")
    return b.model(
        [(logits, FLOAT, [batch, num_classes])],
        doc=f"mobilenetv2: width_mult {width_mult}, {image_size}x{image_size} input, seeded random weights",
        example_dims={"N": 1},
    )
