"""A small YOLO-style detector: strided SiLU backbone, a three-level FPN, anchor heads.

It gathers the ops that classification models lack: Resize in both the forms
PyTorch exports (nearest with constant ``scales``, as ``F.interpolate(x,
scale_factor=2)``; linear with run-time ``sizes`` taken from the lateral's
Shape, as ``F.interpolate(x, size=y.shape[-2:], mode="bilinear")``), the
5-D Reshape and Transpose that turn head maps into per-anchor rows, Concat of
the three levels, and a final Sigmoid.
"""

from __future__ import annotations

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, Dim, GraphBuilder
from mdoc.models.layers import batch_norm, conv, silu


def _conv_bn_silu(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
    y = batch_norm(b, conv(b, x, f"{name}.conv", cin, cout, k, stride=stride), f"{name}.bn", cout)
    return silu(b, y, f"{name}.act")


def detector_head(
    *,
    batch: Dim = "N",
    image_size: int = 320,
    width: int = 16,
    fpn_channels: int = 64,
    anchors: int = 3,
    num_classes: int = 80,
    seed: int = 0,
) -> onnx.ModelProto:
    """``image`` [batch, 3, image_size, image_size] to ``predictions`` [batch, boxes, 5 + num_classes]
    (box, objectness, class scores, all through a Sigmoid) with
    ``boxes = anchors * (s8**2 + s16**2 + s32**2)`` for the feature maps at strides 8, 16 and 32.
    """
    if image_size % 32:
        raise ValueError(f"detector_head: image_size ({image_size}) must be a multiple of 32")
    b = GraphBuilder("detector_head", seed)
    image = b.input("image", FLOAT, [batch, 3, image_size, image_size])

    # Backbone: stride 2 stem, then one strided and one plain conv per stage; keep strides 8, 16, 32.
    x = _conv_bn_silu(b, image, "backbone.stem", 3, width, 3, 2)
    cin, features = width, []
    for stage in range(4):
        cout = width * 2 ** (stage + 1)
        x = _conv_bn_silu(b, x, f"backbone.stage{stage}.0", cin, cout, 3, 2)
        x = _conv_bn_silu(b, x, f"backbone.stage{stage}.1", cout, cout, 3)
        cin = cout
        if stage > 0:
            features.append((x, cout))

    # FPN: lateral 1x1 convs, top-down path with the two Resize forms, 3x3 smoothing.
    c3, c4, c5 = (
        conv(b, f, f"fpn.lateral{i}", c, fpn_channels, 1, bias=True, gain=1.0) for i, (f, c) in enumerate(features)
    )
    with b.scope("fpn.up5"):
        scales = b.const([1.0, 1.0, 2.0, 2.0])
        up = b.op(
            "Resize", [c5, "", scales],
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
        )
        p4 = b.op("Add", [c4, up])

    def shape_slice(t: str, start: int, end: int) -> str:
        bounds = [b.const([start], np.int64), b.const([end], np.int64), b.const([0], np.int64)]
        return b.op("Slice", [b.op("Shape", [t]), *bounds])

    with b.scope("fpn.up4"):
        sizes = b.op("Concat", [shape_slice(p4, 0, 2), shape_slice(c3, 2, 4)], axis=0)
        up = b.op("Resize", [p4, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
        p3 = b.op("Add", [c3, up])
    levels = [
        _conv_bn_silu(b, p, f"fpn.smooth{i}", fpn_channels, fpn_channels, 3) for i, p in enumerate((p3, p4, c5))
    ]

    # Heads: a 1x1 conv per level to anchors * (5 + classes) maps, then [N, A, 5+C, H, W] -> [N, A*H*W, 5+C].
    outputs = 5 + num_classes
    rows = []
    for i, p in enumerate(levels):
        side = image_size // 2 ** (3 + i)
        y = conv(b, p, f"head.{i}", fpn_channels, anchors * outputs, 1, bias=True, gain=1.0)
        with b.scope(f"head.{i}"):
            y = b.op("Reshape", [y, b.const([0, anchors, outputs, side, side], np.int64)])
            y = b.op("Transpose", [y], perm=[0, 1, 3, 4, 2])
            rows.append(b.op("Reshape", [y, b.const([0, -1, outputs], np.int64)]))
    with b.scope(""):
        predictions = b.op("Sigmoid", [b.op("Concat", rows, axis=1)], outputs=["predictions"])
    boxes = anchors * sum((image_size // 2**s) ** 2 for s in (3, 4, 5))
    return b.model(
        [(predictions, FLOAT, [batch, boxes, outputs])],
        doc=f"detector_head: 3-level FPN, {anchors} anchors, {num_classes} classes, seeded random weights",
        example_dims={"N": 1},
    )
