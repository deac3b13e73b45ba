"""ViT-Tiny (ViT-Ti/16: hidden 192, 12 layers, 3 heads), shaped like HuggingFace's ``ViTModel`` export.

Shares the attention, LayerNorm and GELU subgraphs with `mdoc.models.bert`
but arranges them pre-norm (x + Attn(LN(x))), and adds what a vision
transformer brings: a strided patch-embedding Conv flattened into tokens by a
run-time Reshape and a Transpose, a class token broadcast to the batch with
Expand and joined by Concat, a learned position embedding added to all
tokens, and a classifier on the class token (Gather) after the final LayerNorm.
"""

from __future__ import annotations

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, Dim, GraphBuilder
from mdoc.models.layers import classifier, conv, feed_forward, layer_norm, self_attention


def _encoder_layer(b: GraphBuilder, x: str, name: str, hidden: int, heads: int, mlp: int) -> str:
    """A pre-norm ViT layer: x = x + Attn(LN(x)); x = x + MLP(LN(x))."""
    h = layer_norm(b, x, f"{name}.layernorm_before", hidden, eps=1e-6)
    a = self_attention(b, h, f"{name}.attention", hidden, heads, mask=None)
    with b.scope(name):
        x = b.op("Add", [a, x])
    f = feed_forward(b, layer_norm(b, x, f"{name}.layernorm_after", hidden, eps=1e-6), name, hidden, mlp)
    with b.scope(name):
        return b.op("Add", [f, x])


def vit_tiny(
    *,
    batch: Dim = "N",
    image_size: int = 224,
    patch: int = 16,
    hidden: int = 192,
    layers: int = 12,
    heads: int = 3,
    mlp: int | None = None,
    num_classes: int = 1000,
    seed: int = 0,
) -> onnx.ModelProto:
    """ViT classifier: ``image`` [batch, 3, image_size, image_size] to ``logits`` [batch, num_classes]."""
    if image_size % patch or hidden % heads:
        raise ValueError(
            f"vit_tiny: image_size ({image_size}) must be a multiple of patch ({patch}) "
            f"and hidden ({hidden}) a multiple of heads ({heads})"
        )
    mlp = mlp or 4 * hidden
    tokens = (image_size // patch) ** 2 + 1
    b = GraphBuilder("vit_tiny", seed)
    image = b.input("image", FLOAT, [batch, 3, image_size, image_size])

    # Patch embedding: Conv(k=s=patch), then x.flatten(2).transpose(1, 2).
    x = conv(
        b, image, "embeddings.patch_embeddings.projection", 3, hidden, patch, stride=patch, bias=True, pad=0, gain=1.0
    )
    with b.scope("embeddings.patch_embeddings"):
        x = b.op("Reshape", [x, b.shape_of(x, keep=[0, 1], tail=[-1])])
        x = b.op("Transpose", [x], perm=[0, 2, 1])

    # cls_token.expand(batch, -1, -1), concatenated in front, plus position embeddings.
    cls_token = b.normal("embeddings.cls_token", (1, 1, hidden), 1.0)
    positions = b.normal("embeddings.position_embeddings", (1, tokens, hidden), 0.5)
    with b.scope("embeddings"):
        cls = b.op("Expand", [cls_token, b.shape_of(image, keep=[0], tail=[1, 1])])
        x = b.op("Add", [b.op("Concat", [cls, x], axis=1), positions])

    for i in range(layers):
        x = _encoder_layer(b, x, f"encoder.layer.{i}", hidden, heads, mlp)
    x = layer_norm(b, x, "layernorm", hidden, eps=1e-6)
    with b.scope(""):
        first = b.op("Gather", [x, b.const(0, np.int64)], axis=1)
    logits = b.rename(classifier(b, first, "classifier", hidden, num_classes), "logits")
    return b.model(
        [(logits, FLOAT, [batch, num_classes])],
        doc=f"vit_tiny: {layers} layers, hidden {hidden}, {heads} heads, patch {patch}, seeded random weights",
        example_dims={"N": 1},
    )
