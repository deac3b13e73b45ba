"""A BERT-style encoder, shaped like HuggingFace's ``BertModel`` exported by PyTorch with
dynamic batch and sequence axes.

This is the model that tests transformer fusions against the graphs people
actually have: LayerNorm, GELU and attention decomposed into primitive ops
(see `mdoc.models.layers`), reshapes whose target shapes are computed at run
time from ``Shape`` chains, scalars as ``Constant`` nodes, the attention mask
turned into an additive bias, and position ids sliced from a constant buffer
by the run-time sequence length.  Defaults are BERT-mini (4 layers, hidden
256, 4 heads) with BERT's vocabulary.
"""

from __future__ import annotations

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, INT64, Dim, GraphBuilder
from mdoc.models.layers import attention_mask_bias, classifier, feed_forward, layer_norm, self_attention


def _embeddings(b: GraphBuilder, input_ids: str, vocab_size: int, max_positions: int, hidden: int) -> str:
    """Word + position embeddings, then LayerNorm.

    Position ids are ``position_ids[:, :seq_len]`` of a registered buffer,
    exported as Shape, Gather, Unsqueeze and Slice of a constant.
    """
    words = b.normal("embeddings.word_embeddings.weight", (vocab_size, hidden), 1.0)
    positions = b.normal("embeddings.position_embeddings.weight", (max_positions, hidden), 0.5)
    position_ids = b.param("embeddings.position_ids", np.arange(max_positions, dtype=np.int64)[None, :])
    with b.scope("embeddings"):
        seq_len = b.op("Gather", [b.op("Shape", [input_ids]), b.const(1, np.int64)], axis=0)
        end = b.op("Unsqueeze", [seq_len, b.const([0], np.int64)])
        ids = b.op("Slice", [position_ids, b.const([0], np.int64), end, b.const([1], np.int64), b.const([1], np.int64)])
    with b.scope("embeddings.word_embeddings"):
        x = b.op("Gather", [words, input_ids], axis=0)
    with b.scope("embeddings.position_embeddings"):
        p = b.op("Gather", [positions, ids], axis=0)
    with b.scope("embeddings"):
        x = b.op("Add", [x, p])
    return layer_norm(b, x, "embeddings.LayerNorm", hidden)


def _encoder_layer(b: GraphBuilder, x: str, name: str, hidden: int, heads: int, intermediate: int, mask: str) -> str:
    """A post-norm BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
    a = self_attention(b, x, f"{name}.attention", hidden, heads, mask=mask)
    with b.scope(f"{name}.attention.output"):
        a = b.op("Add", [a, x])
    x = layer_norm(b, a, f"{name}.attention.output.LayerNorm", hidden)
    f = feed_forward(b, x, name, hidden, intermediate)
    with b.scope(f"{name}.output"):
        f = b.op("Add", [f, x])
    return layer_norm(b, f, f"{name}.output.LayerNorm", hidden)


def bert_encoder(
    *,
    batch: Dim = "N",
    seq: Dim = "S",
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    intermediate: int | None = None,
    vocab_size: int = 30522,
    max_positions: int = 512,
    example_seq: int = 128,
    seed: int = 0,
) -> onnx.ModelProto:
    """BERT encoder with pooler.

    Inputs: ``input_ids`` int64 [batch, seq] and ``attention_mask`` int64
    [batch, seq] (1 = attend, 0 = padding).  Outputs: ``last_hidden_state``
    [batch, seq, hidden] and ``pooler_output`` [batch, hidden] (Tanh of a
    Gemm on the first token).  ``example_seq`` is the sequence length that
    `mdoc.models.example_inputs` feeds when ``seq`` is symbolic.
    """
    if hidden % heads:
        raise ValueError(f"bert_encoder: hidden ({hidden}) must be a multiple of heads ({heads})")
    intermediate = intermediate or 4 * hidden
    b = GraphBuilder("bert_encoder", seed)
    input_ids = b.input("input_ids", INT64, [batch, seq])
    attention_mask = b.input("attention_mask", INT64, [batch, seq])
    mask = attention_mask_bias(b, attention_mask)
    x = _embeddings(b, input_ids, vocab_size, max_positions, hidden)
    for i in range(layers):
        x = _encoder_layer(b, x, f"encoder.layer.{i}", hidden, heads, intermediate, mask)
    last_hidden = b.rename(x, "last_hidden_state")
    with b.scope("pooler"):
        first = b.op("Gather", [last_hidden, b.const(0, np.int64)], axis=1)
    pooled = classifier(b, first, "pooler.dense", hidden, hidden)
    with b.scope("pooler.activation"):
        pooled = b.op("Tanh", [pooled], outputs=["pooler_output"])
    return b.model(
        [(last_hidden, FLOAT, [batch, seq, hidden]), (pooled, FLOAT, [batch, hidden])],
        doc=f"bert_encoder: {layers} layers, hidden {hidden}, {heads} heads, seeded random weights",
        example_dims={"N": 1, "S": example_seq},
        int_ranges={"input_ids": (0, vocab_size), "attention_mask": (0, 2)},
    )
