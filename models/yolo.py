"""A YOLOv8-style detector with its box decoding in the graph, as ``model.export(format="onnx")`` writes it.

Beyond `detector_head` (anchor heads, no decoding), this has what real
exported YOLO models carry: Conv+BatchNorm+SiLU everywhere, C2f blocks (a 1x1
conv, Split in two, bottlenecks on one half, Concat of every stage, a 1x1
conv), an SPPF (three chained MaxPools of 5, Concat), a top-down FPN with
nearest Resize and Concat and a bottom-up path with strided convs, decoupled
box and class heads per level, their maps flattened through Shape/Gather/
Concat Reshapes and concatenated over the levels, the DFL (Softmax over
distance bins and a fixed-weight 1x1 Conv), and the decode: anchor points
minus / plus the distances, centre and size, times the level strides, class
Sigmoids, and a final Transpose to ``[N, boxes, 4 + classes]``.
"""

from __future__ import annotations

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, Dim, GraphBuilder
from mdoc.models.layers import batch_norm, conv, silu

STRIDES = (8, 16, 32)


def _cbs(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int = 1, stride: int = 1) -> str:
    """Ultralytics' ``Conv``: Conv, BatchNorm, SiLU."""
    y = batch_norm(b, conv(b, x, f"{name}.conv", cin, cout, k, stride=stride), f"{name}.bn", cout)
    return silu(b, y, f"{name}.act")


def _c2f(b: GraphBuilder, x: str, name: str, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> str:
    half = cout // 2
    y = _cbs(b, x, f"{name}.cv1", cin, 2 * half)
    with b.scope(name):
        parts = list(b.op("Split", [y, b.const([half, half], np.int64)], outputs=2, axis=1))
    for i in range(n):
        m = _cbs(b, parts[-1], f"{name}.m.{i}.cv1", half, half, 3)
        m = _cbs(b, m, f"{name}.m.{i}.cv2", half, half, 3)
        if shortcut:
            with b.scope(f"{name}.m.{i}"):
                m = b.op("Add", [parts[-1], m])
        parts.append(m)
    with b.scope(name):
        y = b.op("Concat", parts, axis=1)
    return _cbs(b, y, f"{name}.cv2", (2 + n) * half, cout)


def _sppf(b: GraphBuilder, x: str, name: str, cin: int, cout: int) -> str:
    half = cin // 2
    y = _cbs(b, x, f"{name}.cv1", cin, half)
    pools = [y]
    with b.scope(f"{name}.m"):
        for _ in range(3):
            pools.append(b.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2],
                              dilations=[1, 1], ceil_mode=0))
    with b.scope(name):
        y = b.op("Concat", pools, axis=1)
    return _cbs(b, y, f"{name}.cv2", 4 * half, cout)


def _upsample_concat(b: GraphBuilder, x: str, lateral: str, name: str) -> str:
    with b.scope(name):
        up = b.op("Resize", [x, "", b.const([1.0, 1.0, 2.0, 2.0])], mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return b.op("Concat", [up, lateral], axis=1)


def _anchors(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor points [2, boxes] (cell centres, in cells) and strides [1, boxes], level after level."""
    points, strides = [], []
    for s in STRIDES:
        side = image_size // s
        ys, xs = np.meshgrid(np.arange(side) + 0.5, np.arange(side) + 0.5, indexing="ij")
        points.append(np.stack([xs.reshape(-1), ys.reshape(-1)]))
        strides.append(np.full(side * side, s))
    return np.concatenate(points, 1).astype(np.float32), np.concatenate(strides)[None].astype(np.float32)


def yolo_detector(
    *,
    batch: Dim = "N",
    image_size: int = 320,
    width: int = 16,
    num_classes: int = 80,
    reg_max: int = 16,
    seed: int = 0,
) -> onnx.ModelProto:
    """``images`` [batch, 3, image_size, image_size] to ``output0`` [batch, boxes, 4 + num_classes]: box centre
    and size in pixels, then class scores, for ``boxes = sum((image_size / s)**2 for s in (8, 16, 32))``.
    """
    if image_size % 32:
        raise ValueError(f"yolo_detector: image_size ({image_size}) must be a multiple of 32")
    w = width
    b = GraphBuilder("yolo_detector", seed)
    images = b.input("images", FLOAT, [batch, 3, image_size, image_size])

    # backbone
    x = _cbs(b, images, "model.0", 3, w, 3, 2)
    x = _cbs(b, x, "model.1", w, 2 * w, 3, 2)
    x = _c2f(b, x, "model.2", 2 * w, 2 * w)
    x = _cbs(b, x, "model.3", 2 * w, 4 * w, 3, 2)
    p3 = _c2f(b, x, "model.4", 4 * w, 4 * w, n=2)
    x = _cbs(b, p3, "model.5", 4 * w, 8 * w, 3, 2)
    p4 = _c2f(b, x, "model.6", 8 * w, 8 * w, n=2)
    x = _cbs(b, p4, "model.7", 8 * w, 8 * w, 3, 2)
    x = _c2f(b, x, "model.8", 8 * w, 8 * w)
    p5 = _sppf(b, x, "model.9", 8 * w, 8 * w)

    # neck: top-down, then bottom-up
    x = _upsample_concat(b, p5, p4, "model.10")
    n4 = _c2f(b, x, "model.12", 16 * w, 8 * w, shortcut=False)
    x = _upsample_concat(b, n4, p3, "model.13")
    out3 = _c2f(b, x, "model.15", 12 * w, 4 * w, shortcut=False)
    x = _cbs(b, out3, "model.16", 4 * w, 4 * w, 3, 2)
    with b.scope("model.17"):
        x = b.op("Concat", [x, n4], axis=1)
    out4 = _c2f(b, x, "model.18", 12 * w, 8 * w, shortcut=False)
    x = _cbs(b, out4, "model.19", 8 * w, 8 * w, 3, 2)
    with b.scope("model.20"):
        x = b.op("Concat", [x, p5], axis=1)
    out5 = _c2f(b, x, "model.21", 16 * w, 8 * w, shortcut=False)

    # detect: decoupled heads, each level flattened to [N, 4 * reg_max + classes, H * W]
    outputs = 4 * reg_max + num_classes
    c_box, c_cls = max(16, 4 * reg_max // 4, w), max(w, num_classes)
    rows = []
    for i, (feat, cin) in enumerate(((out3, 4 * w), (out4, 8 * w), (out5, 8 * w))):
        box = _cbs(b, feat, f"model.22.cv2.{i}.0", cin, c_box, 3)
        box = _cbs(b, box, f"model.22.cv2.{i}.1", c_box, c_box, 3)
        box = conv(b, box, f"model.22.cv2.{i}.2", c_box, 4 * reg_max, 1, bias=True, gain=1.0)
        cls = _cbs(b, feat, f"model.22.cv3.{i}.0", cin, c_cls, 3)
        cls = _cbs(b, cls, f"model.22.cv3.{i}.1", c_cls, c_cls, 3)
        cls = conv(b, cls, f"model.22.cv3.{i}.2", c_cls, num_classes, 1, bias=True, gain=1.0)
        with b.scope("model.22"):
            y = b.op("Concat", [box, cls], axis=1)
            rows.append(b.op("Reshape", [y, b.shape_of(y, keep=[0], tail=[outputs, -1])]))
    with b.scope("model.22"):
        y = b.op("Concat", rows, axis=2)
        dist, scores = b.op("Split", [y, b.const([4 * reg_max, num_classes], np.int64)], outputs=2, axis=1)
    # DFL: the expected distance over reg_max bins, as a Softmax and a 1x1 Conv with weights 0..reg_max-1
    bins = b.param("model.22.dfl.conv.weight", np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1))
    with b.scope("model.22.dfl"):
        d = b.op("Reshape", [dist, b.shape_of(dist, keep=[0], tail=[4, reg_max, -1])])
        d = b.op("Softmax", [b.op("Transpose", [d], perm=[0, 2, 1, 3])], axis=1)
        d = b.op("Conv", [d, bins], dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0],
                 strides=[1, 1])
        d = b.op("Reshape", [d, b.shape_of(d, keep=[0], tail=[4, -1])])
    # decode: dist2bbox(xywh) * strides, class Sigmoid
    anchor_points, strides = _anchors(image_size)
    with b.scope("model.22"):
        lt, rb = b.op("Split", [d, b.const([2, 2], np.int64)], outputs=2, axis=1)
        anchors = b.param("model.22.anchors", anchor_points)
        x1y1 = b.op("Sub", [anchors, lt])
        x2y2 = b.op("Add", [anchors, rb])
        centre = b.op("Div", [b.op("Add", [x1y1, x2y2]), b.const(2.0)])
        size = b.op("Sub", [x2y2, x1y1])
        boxes = b.op("Mul", [b.op("Concat", [centre, size], axis=1), b.param("model.22.strides", strides)])
        y = b.op("Concat", [boxes, b.op("Sigmoid", [scores])], axis=1)
        out = b.op("Transpose", [y], perm=[0, 2, 1], outputs=["output0"])
    total = anchor_points.shape[1]
    return b.model(
        [(out, FLOAT, [batch, total, 4 + num_classes])],
        doc=f"yolo_detector: C2f/SPPF backbone, FPN+PAN, DFL({reg_max}) decode, {num_classes} classes, seeded weights",
        example_dims={"N": 1},
    )
