"""A Llama-style decoder with past key/values, shaped like transformers' LlamaForCausalLM exported by
torch.onnx (TorchScript) as Optimum's decoder-with-past, built with numpy so that tests need no torch.

What makes it Llama and not GPT-2, each written the way the exporter writes it:

- RMSNorm: Pow, ReduceMean, Add eps, Sqrt, Div(1, .) (torch's rsqrt), Mul, then Mul by the weight;
- rotary embeddings: cos and sin of position_ids x inv_freq (concatenated twice over the head dim),
  applied to q and k as ``x * cos + rotate_half(x) * sin``, rotate_half being
  Concat(Neg(Slice(x, hd/2:)), Slice(x, :hd/2));
- grouped-query attention: fewer key/value heads than query heads; the cache holds the kv heads,
  each repeated for its query group by Unsqueeze, Expand and Reshape (transformers' repeat_kv);
- a causal mask from attention_mask and position_ids (key t is seen by query s when
  t <= position s and attention_mask[t] is 1), added to the scores as 0 / -1e9;
- a SiLU-gated MLP: down(silu(gate(x)) * up(x)), x * Sigmoid(x) as the SiLU;
- an untied LM head.

Inputs: ``input_ids`` [N, S], ``attention_mask`` [N, T], ``position_ids`` [N, S] and
``past_key_values.{i}.key`` / ``.value`` [N, kv_heads, P, head_dim]; outputs: ``logits``
[N, S, vocab] and ``present.{i}.key`` / ``.value`` [N, kv_heads, T, head_dim] with T = P + S.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, INT64, ExternalWeights, GraphBuilder


def _rms_norm(b: GraphBuilder, x: str, name: str, hidden: int, eps: float) -> str:
    weight = b.uniform(f"{name}.weight", (hidden,), 0.8, 1.2)
    with b.scope(name):
        ms = b.op("ReduceMean", [b.op("Pow", [x, b.const(2.0)])], axes=[-1], keepdims=1)
        inv = b.op("Div", [b.const(1.0), b.op("Sqrt", [b.op("Add", [ms, b.const(eps)])])])
        return b.op("Mul", [weight, b.op("Mul", [x, inv])])


def _proj(b: GraphBuilder, x: str, name: str, cin: int, cout: int) -> str:
    """A bias-free nn.Linear: MatMul with the transposed weight."""
    w = b.normal(f"{name}.weight_t", (cin, cout), 1 / math.sqrt(cin))
    with b.scope(name):
        return b.op("MatMul", [x, w])


def _rotate(b: GraphBuilder, x: str, cos: str, sin: str, half: int) -> str:
    """x * cos + rotate_half(x) * sin over the last axis (x: [N, heads, S, head_dim])."""
    axis, one = b.const([3], np.int64), b.const([1], np.int64)
    lo = b.op("Slice", [x, b.const([0], np.int64), b.const([half], np.int64), axis, one])
    hi = b.op("Slice", [x, b.const([half], np.int64), b.const([2**63 - 1], np.int64), axis, one])
    rotated = b.op("Concat", [b.op("Neg", [hi]), lo], axis=-1)
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rotated, sin])])


def _heads(b: GraphBuilder, t: str, heads: int, head_dim: int) -> str:
    """[N, S, heads * head_dim] -> [N, heads, S, head_dim]."""
    return b.op("Transpose", [b.op("Reshape", [t, b.const([0, 0, heads, head_dim], np.int64)])], perm=[0, 2, 1, 3])


def _repeat_kv(b: GraphBuilder, t: str, heads: int, kv_heads: int, head_dim: int) -> str:
    """transformers' repeat_kv: [N, kv, T, hd] -> [N, heads, T, hd], each kv head repeated for its group."""
    if heads == kv_heads:
        return t
    t = b.op("Unsqueeze", [t, b.const([2], np.int64)])
    t = b.op("Expand", [t, b.const([1, 1, heads // kv_heads, 1, 1], np.int64)])
    return b.op("Reshape", [t, b.const([0, heads, -1, head_dim], np.int64)])


def _attention(b: GraphBuilder, x: str, layer: int, dims: dict, cos: str, sin: str, mask: str) -> tuple[str, str, str]:
    """Self-attention over the cache; returns the output and the layer's present key and value."""
    name, heads, kv, hd, hidden = f"model.layers.{layer}.self_attn", dims["heads"], dims["kv"], dims["hd"], dims["hidden"]
    q = _proj(b, x, f"{name}.q_proj", hidden, heads * hd)
    k = _proj(b, x, f"{name}.k_proj", hidden, kv * hd)
    v = _proj(b, x, f"{name}.v_proj", hidden, kv * hd)
    with b.scope(name):
        q = _rotate(b, _heads(b, q, heads, hd), cos, sin, hd // 2)
        k = _rotate(b, _heads(b, k, kv, hd), cos, sin, hd // 2)
        key = b.op("Concat", [f"past_key_values.{layer}.key", k], axis=-2, outputs=[f"present.{layer}.key"])
        value = b.op("Concat", [f"past_key_values.{layer}.value", _heads(b, v, kv, hd)], axis=-2,
                     outputs=[f"present.{layer}.value"])
        kt = b.op("Transpose", [_repeat_kv(b, key, heads, kv, hd)], perm=[0, 1, 3, 2])
        scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, kt]), b.const(1 / math.sqrt(hd))]), mask])
        probs = b.op("Softmax", [scores], axis=-1)
        context = b.op("MatMul", [probs, _repeat_kv(b, value, heads, kv, hd)])
        context = b.op("Reshape", [b.op("Transpose", [context], perm=[0, 2, 1, 3]),
                                   b.const([0, 0, heads * hd], np.int64)])
    return _proj(b, context, f"{name}.o_proj", heads * hd, hidden), key, value


def _mlp(b: GraphBuilder, x: str, layer: int, hidden: int, intermediate: int) -> str:
    name = f"model.layers.{layer}.mlp"
    gate = _proj(b, x, f"{name}.gate_proj", hidden, intermediate)
    up = _proj(b, x, f"{name}.up_proj", hidden, intermediate)
    with b.scope(f"{name}.act_fn"):
        act = b.op("Mul", [gate, b.op("Sigmoid", [gate])])
    with b.scope(name):
        h = b.op("Mul", [act, up])
    return _proj(b, h, f"{name}.down_proj", intermediate, hidden)


def _rotary_tables(b: GraphBuilder, position_ids: str, head_dim: int, theta: float) -> tuple[str, str]:
    """cos and sin of position x inv_freq, [N, 1, S, head_dim] (the frequencies concatenated twice)."""
    inv_freq = b.param("model.rotary_emb.inv_freq",
                       (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32))
    with b.scope("model.rotary_emb"):
        pos = b.op("Unsqueeze", [b.op("Cast", [position_ids], to=FLOAT), b.const([-1], np.int64)])
        freqs = b.op("Mul", [pos, inv_freq])
        emb = b.op("Concat", [freqs, freqs], axis=-1)
        one = b.const([1], np.int64)
        return (b.op("Unsqueeze", [b.op("Cos", [emb]), one]), b.op("Unsqueeze", [b.op("Sin", [emb]), one]))


def _causal_mask(b: GraphBuilder, attention_mask: str, position_ids: str) -> str:
    """[N, 1, S, T] additive mask: 0 where key t <= the query's position and attention_mask[t] == 1, else -1e9."""
    with b.scope("model.mask"):
        total = b.op("Gather", [b.op("Shape", [attention_mask]), b.const(1, np.int64)], axis=0)
        keys = b.op("Range", [b.const(0, np.int64), total, b.const(1, np.int64)])
        causal = b.op("LessOrEqual", [keys, b.op("Unsqueeze", [position_ids, b.const([-1], np.int64)])])
        present = b.op("Equal", [b.op("Unsqueeze", [attention_mask, b.const([1], np.int64)]), b.const(1, np.int64)])
        seen = b.op("Unsqueeze", [b.op("And", [causal, present]), b.const([1], np.int64)])
        return b.op("Where", [seen, b.const(0.0), b.const(-1e9)])


def llama_decoder(
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 96,
    vocab_size: int = 128,
    rope_theta: float = 10000.0,
    eps: float = 1e-6,
    seed: int = 0,
    external: ExternalWeights | None = None,
) -> onnx.ModelProto:
    """A Llama decoder with past key/values (see the module docstring for its inputs and outputs).

    With `external`, the weights are streamed to its file as they are drawn (a 1B model: benchmarks/big_model.py).
    """
    if hidden % heads or heads % kv_heads or (hidden // heads) % 2:
        raise ValueError(f"llama_decoder: hidden {hidden}, heads {heads}, kv_heads {kv_heads}: want hidden a "
                         "multiple of heads, heads a multiple of kv_heads and an even head_dim")
    hd = hidden // heads
    b = GraphBuilder("llama_decoder", seed, external)
    input_ids = b.input("input_ids", INT64, ["N", "S"])
    attention_mask = b.input("attention_mask", INT64, ["N", "T"])
    position_ids = b.input("position_ids", INT64, ["N", "S"])
    for i in range(layers):
        for kv in ("key", "value"):
            b.input(f"past_key_values.{i}.{kv}", FLOAT, ["N", kv_heads, "P", hd])
    embed = b.normal("model.embed_tokens.weight", (vocab_size, hidden), 1.0)
    with b.scope("model.embed_tokens"):
        x = b.op("Gather", [embed, input_ids], axis=0)
    cos, sin = _rotary_tables(b, position_ids, hd, rope_theta)
    mask = _causal_mask(b, attention_mask, position_ids)
    dims = {"heads": heads, "kv": kv_heads, "hd": hd, "hidden": hidden}
    outputs = []
    for i in range(layers):
        a, key, value = _attention(b, _rms_norm(b, x, f"model.layers.{i}.input_layernorm", hidden, eps), i, dims,
                                   cos, sin, mask)
        with b.scope(f"model.layers.{i}"):
            x = b.op("Add", [x, a])
        m = _mlp(b, _rms_norm(b, x, f"model.layers.{i}.post_attention_layernorm", hidden, eps), i, hidden,
                 intermediate)
        with b.scope(f"model.layers.{i}"):
            x = b.op("Add", [x, m])
        outputs += [(key, FLOAT, ["N", kv_heads, "T", hd]), (value, FLOAT, ["N", kv_heads, "T", hd])]
    x = _rms_norm(b, x, "model.norm", hidden, eps)
    logits = b.rename(_proj(b, x, "lm_head", hidden, vocab_size), "logits")
    return b.model(
        [(logits, FLOAT, ["N", "S", vocab_size]), *outputs],
        doc=f"llama_decoder: {layers} layers, hidden {hidden}, {heads} heads / {kv_heads} kv heads, seeded random "
            "weights, with past key/values",
        example_dims={"N": 1, "S": 4, "T": 4, "P": 0},
        int_ranges={"input_ids": (0, vocab_size), "attention_mask": (1, 2), "position_ids": (0, 1)},
    )
