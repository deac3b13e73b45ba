"""ResNet-18 and ResNet-50 (torchvision layout, v1.5 stride on the 3x3 conv).

The bread and butter of a CNN compiler: Conv + BatchNormalization + Relu
chains to fuse, residual Adds (Conv+Add+Relu fusion), MaxPool,
GlobalAveragePool, Flatten and a Gemm classifier.  BatchNorm is kept as its
own op (a real export would fold it) so that the compiler's folding pass has
something to do.
"""

from __future__ import annotations

import onnx

from mdoc.models.builder import FLOAT, Dim, GraphBuilder
from mdoc.models.layers import batch_norm, classifier, conv, pool_flatten, relu

RESIDUAL_GAMMA = (0.2, 0.5)
"""Scale range of a residual branch's last BatchNorm: keeps the residual stream's variance from doubling per block."""


def _downsample(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    y = conv(b, x, f"{name}.downsample.0", cin, cout, 1, stride=stride, gain=1.0)
    return batch_norm(b, y, f"{name}.downsample.1", cout)


def _basic_block(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    y = batch_norm(b, conv(b, x, f"{name}.conv1", cin, cout, 3, stride=stride), f"{name}.bn1", cout)
    y = relu(b, y, f"{name}.relu")
    y = batch_norm(b, conv(b, y, f"{name}.conv2", cout, cout, 3, gain=1.0), f"{name}.bn2", cout, gamma=RESIDUAL_GAMMA)
    shortcut = x if stride == 1 and cin == cout else _downsample(b, x, name, cin, cout, stride)
    with b.scope(name):
        y = b.op("Add", [y, shortcut])
    return relu(b, y, f"{name}.relu_1")


def _bottleneck(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    mid = cout // 4
    y = relu(b, batch_norm(b, conv(b, x, f"{name}.conv1", cin, mid, 1), f"{name}.bn1", mid), f"{name}.relu")
    y = batch_norm(b, conv(b, y, f"{name}.conv2", mid, mid, 3, stride=stride), f"{name}.bn2", mid)
    y = relu(b, y, f"{name}.relu_1")
    y = batch_norm(b, conv(b, y, f"{name}.conv3", mid, cout, 1, gain=1.0), f"{name}.bn3", cout, gamma=RESIDUAL_GAMMA)
    shortcut = x if stride == 1 and cin == cout else _downsample(b, x, name, cin, cout, stride)
    with b.scope(name):
        y = b.op("Add", [y, shortcut])
    return relu(b, y, f"{name}.relu_2")


def _resnet(
    name: str,
    block,
    depths: tuple[int, ...],
    expansion: int,
    *,
    batch: Dim,
    image_size: int,
    width: int,
    num_classes: int,
    seed: int,
) -> onnx.ModelProto:
    b = GraphBuilder(name, seed)
    x = b.input("image", FLOAT, [batch, 3, image_size, image_size])
    x = relu(b, batch_norm(b, conv(b, x, "conv1", 3, width, 7, stride=2), "bn1", width), "relu")
    with b.scope("maxpool"):
        x = b.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    cin = width
    for stage, depth in enumerate(depths):
        cout = width * 2**stage * expansion
        for i in range(depth):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(b, x, f"layer{stage + 1}.{i}", cin, cout, stride)
            cin = cout
    logits = b.rename(classifier(b, pool_flatten(b, x), "fc", cin, num_classes), "logits")
    return b.model(
        [(logits, FLOAT, [batch, num_classes])],
        doc=f"{name}: torchvision layout, width {width}, {image_size}x{image_size} input, seeded random weights",
        example_dims={"N": 1},
    )


def resnet18(
    *, batch: Dim = "N", image_size: int = 224, width: int = 64, num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    """ResNet-18: four stages of two basic blocks; ``width`` is the stem's channel count (64 in the paper)."""
    return _resnet(
        "resnet18", _basic_block, (2, 2, 2, 2), 1,
        batch=batch, image_size=image_size, width=width, num_classes=num_classes, seed=seed,
    )


def resnet50(
    *, batch: Dim = "N", image_size: int = 224, width: int = 64, num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3) with expansion 4; ``width`` as in `resnet18`."""
    return _resnet(
        "resnet50", _bottleneck, (3, 4, 6, 3), 4,
        batch=batch, image_size=image_size, width=width, num_classes=num_classes, seed=seed,
    )
