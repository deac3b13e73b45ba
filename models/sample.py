"""The bundled sample model: a small CIFAR-sized CNN for the README's first command.

It builds in milliseconds and runs in well under a millisecond, yet every
default pass has something to do on it: four Conv + BatchNormalization + Relu
chains to fuse, a residual Add to fuse into a conv epilogue, a MaxPool, and
the ``x.view(x.size(0), -1)`` Shape chain that the exporter writes before the
classifier, which constant folding collapses because the batch is static.
"""

from __future__ import annotations

import onnx

from mdoc.models.builder import FLOAT, GraphBuilder
from mdoc.models.layers import BN_GAMMA, batch_norm, classifier, conv, relu

RESIDUAL_GAMMA = (0.3, 0.6)


def _conv_bn(
    b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int = 1, gamma: tuple[float, float] = BN_GAMMA
) -> str:
    return batch_norm(b, conv(b, x, f"{name}.conv", cin, cout, 3, stride=stride), f"{name}.bn", cout, gamma=gamma)


def sample(
    *, batch: int = 1, image_size: int = 32, width: int = 16, num_classes: int = 10, seed: int = 0
) -> onnx.ModelProto:
    """``image`` [batch, 3, image_size, image_size] to ``logits`` [batch, num_classes].

    The batch is static on purpose, so that the Shape chain before the classifier folds away.
    """
    b = GraphBuilder("sample", seed)
    x = b.input("image", FLOAT, [batch, 3, image_size, image_size])
    x = relu(b, _conv_bn(b, x, "block1", 3, width), "block1.relu")
    x = relu(b, _conv_bn(b, x, "block2", width, 2 * width, stride=2), "block2.relu")
    y = relu(b, _conv_bn(b, x, "res.0", 2 * width, 2 * width), "res.0.relu")
    y = _conv_bn(b, y, "res.1", 2 * width, 2 * width, gamma=RESIDUAL_GAMMA)
    with b.scope("res"):
        x = b.op("Add", [y, x])
    x = relu(b, x, "res.relu")
    with b.scope("pool"):
        x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = relu(b, _conv_bn(b, x, "block3", 2 * width, 4 * width, stride=2), "block3.relu")
    with b.scope("avgpool"):
        x = b.op("GlobalAveragePool", [x])
    with b.scope(""):
        x = b.op("Reshape", [x, b.shape_of(x, keep=[0], tail=[-1])])
    logits = b.rename(classifier(b, x, "fc", 4 * width, num_classes), "logits")
    return b.model(
        [(logits, FLOAT, [batch, num_classes])],
        doc=f"sample: small CNN, {image_size}x{image_size} input, seeded random weights",
    )
