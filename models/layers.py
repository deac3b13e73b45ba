"""Layers shared by the zoo's builders, each written as the ONNX subgraph PyTorch's exporter emits.

Parameter names follow the PyTorch module paths (``layer1.0.bn1.running_var``)
and node names the exporter's scopes (``/layer1/0/bn1/BatchNormalization``),
so printed IR reads like a real exported model.

Weights are small random values chosen to keep activations near unit scale
through deep stacks: He-style normal weights for convolutions and linear
layers, BatchNorm statistics and affine parameters that are far from the
identity (so folding BatchNorm into a convolution is a visible change) but
roughly variance-preserving, and LayerNorm gains near one.  That keeps fp32
outputs neither saturated nor vanishing, so comparisons at rtol 1e-3 mean
something.
"""

from __future__ import annotations

import math

import numpy as np

from mdoc.models.builder import FLOAT, GraphBuilder


# -- convolutional layers ---------------------------------------------------------


def conv(
    b: GraphBuilder,
    x: str,
    name: str,
    cin: int,
    cout: int,
    k: int,
    *,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    pad: int | None = None,
    gain: float = 2.0,
) -> str:
    """A square ``k x k`` Conv, padded by ``k // 2`` unless ``pad`` is given;
    ``gain`` is 2 before a ReLU-like activation, 1 before none.
    """
    fan_in = cin // groups * k * k
    inputs = [x, b.normal(f"{name}.weight", (cout, cin // groups, k, k), math.sqrt(gain / fan_in))]
    if bias:
        inputs.append(b.normal(f"{name}.bias", (cout,), 0.1))
    with b.scope(name):
        return b.op(
            "Conv",
            inputs,
            dilations=[1, 1],
            group=groups,
            kernel_shape=[k, k],
            pads=[k // 2 if pad is None else pad] * 4,
            strides=[stride, stride],
        )


BN_GAMMA = (0.6, 1.4)
"""Default range of BatchNorm scales: far enough from 1 that folding BatchNorm changes the weights visibly."""


def batch_norm(b: GraphBuilder, x: str, name: str, channels: int, *, gamma: tuple[float, float] = BN_GAMMA) -> str:
    """Inference BatchNormalization with non-trivial running statistics and affine parameters.

    ``gamma`` bounds the scale; a residual branch's last BatchNorm uses a
    smaller one (as zero-init-residual training would leave it) so that the
    variance grows only slowly along the residual stream.
    """
    scale = b.uniform(f"{name}.weight", (channels,), *gamma)
    shift = b.normal(f"{name}.bias", (channels,), 0.1)
    mean = b.normal(f"{name}.running_mean", (channels,), 0.1)
    var = b.uniform(f"{name}.running_var", (channels,), 0.5, 1.5)
    with b.scope(name):
        return b.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5, momentum=0.9)


def relu(b: GraphBuilder, x: str, name: str) -> str:
    with b.scope(name):
        return b.op("Relu", [x])


def relu6(b: GraphBuilder, x: str, name: str) -> str:
    """ReLU6 as the exporter writes ``nn.ReLU6`` from opset 11 on: Clip with min and max as inputs."""
    with b.scope(name):
        return b.op("Clip", [x, b.const(0.0), b.const(6.0)])


def silu(b: GraphBuilder, x: str, name: str) -> str:
    """SiLU as the exporter writes ``nn.SiLU``: x * Sigmoid(x)."""
    with b.scope(name):
        return b.op("Mul", [x, b.op("Sigmoid", [x])])


def classifier(b: GraphBuilder, x: str, name: str, cin: int, cout: int) -> str:
    """``nn.Linear`` on a 2-D input, which the exporter writes as Gemm with a transposed weight."""
    w = b.normal(f"{name}.weight", (cout, cin), 1.0 / math.sqrt(cin))
    bias = b.normal(f"{name}.bias", (cout,), 0.1)
    with b.scope(name):
        return b.op("Gemm", [x, w, bias], alpha=1.0, beta=1.0, transB=1)


def pool_flatten(b: GraphBuilder, x: str) -> str:
    """``adaptive_avg_pool2d(x, 1)`` then ``torch.flatten(x, 1)``: GlobalAveragePool, Flatten."""
    with b.scope("avgpool"):
        x = b.op("GlobalAveragePool", [x])
    with b.scope(""):
        return b.op("Flatten", [x], axis=1)


# -- transformer layers -------------------------------------------------------------


def linear(b: GraphBuilder, x: str, name: str, cin: int, cout: int, *, gain: float = 1.0) -> str:
    """``nn.Linear`` on a 3-D input: MatMul with the transposed weight, then Add(bias, .) (bias first, as exported)."""
    w = b.normal(f"{name}.weight_t", (cin, cout), math.sqrt(gain / cin))
    bias = b.normal(f"{name}.bias", (cout,), 0.02)
    with b.scope(name):
        return b.op("Add", [bias, b.op("MatMul", [x, w])])


def layer_norm(b: GraphBuilder, x: str, name: str, hidden: int, *, eps: float = 1e-12) -> str:
    """``nn.LayerNorm`` as the exporter writes it below opset 17, and as most exported
    transformers in the wild still look: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add.
    """
    gamma = b.uniform(f"{name}.weight", (hidden,), 0.8, 1.2)
    beta = b.normal(f"{name}.bias", (hidden,), 0.05)
    with b.scope(name):
        mean = b.op("ReduceMean", [x], axes=[-1], keepdims=1)
        centered = b.op("Sub", [x, mean])
        var = b.op("ReduceMean", [b.op("Pow", [centered, b.const(2.0)])], axes=[-1], keepdims=1)
        std = b.op("Sqrt", [b.op("Add", [var, b.const(eps)])])
        normed = b.op("Div", [centered, std])
        return b.op("Add", [b.op("Mul", [normed, gamma]), beta])


def gelu(b: GraphBuilder, x: str, name: str) -> str:
    """Exact (erf) GELU as exported: Div(x, sqrt 2), Erf, Add 1, Mul x, Mul 0.5."""
    with b.scope(name):
        erf = b.op("Erf", [b.op("Div", [x, b.const(1.4142135381698608)])])
        return b.op("Mul", [b.op("Mul", [x, b.op("Add", [erf, b.const(1.0)])]), b.const(0.5)])


def self_attention(b: GraphBuilder, x: str, name: str, hidden: int, heads: int, *, mask: str | None) -> str:
    """Multi-head self-attention written the way a HuggingFace BERT or ViT layer exports
    with dynamic batch and sequence axes.

    Q, K, V are each a MatMul+Add; each is split into heads by a Reshape whose
    shape is computed at run time (Shape, Gather, Unsqueeze, Concat, one chain per
    use: the exporter does no CSE) and a Transpose; K's two transposes are merged
    into one ``perm=[0, 2, 3, 1]`` as the exporter's peephole pass does.  Then
    MatMul, Div by sqrt(head_dim), Add the additive mask, Softmax, MatMul,
    Transpose, Reshape back and the output projection.
    """
    head_dim = hidden // heads
    q = linear(b, x, f"{name}.self.query", hidden, hidden)
    k = linear(b, x, f"{name}.self.key", hidden, hidden)
    v = linear(b, x, f"{name}.self.value", hidden, hidden)

    def split_heads(t: str, perm: list[int]) -> str:
        shape = b.shape_of(t, keep=[0, 1], tail=[heads, head_dim])
        return b.op("Transpose", [b.op("Reshape", [t, shape])], perm=perm)

    with b.scope(f"{name}.self"):
        q = split_heads(q, [0, 2, 1, 3])
        k = split_heads(k, [0, 2, 3, 1])
        v = split_heads(v, [0, 2, 1, 3])
        scores = b.op("Div", [b.op("MatMul", [q, k]), b.const(math.sqrt(head_dim))])
        if mask is not None:
            scores = b.op("Add", [scores, mask])
        probs = b.op("Softmax", [scores], axis=-1)
        context = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        context = b.op("Reshape", [context, b.shape_of(context, keep=[0, 1], tail=[hidden])])
    return linear(b, context, f"{name}.output.dense", hidden, hidden)


def feed_forward(b: GraphBuilder, x: str, name: str, hidden: int, intermediate: int) -> str:
    """The transformer MLP: Linear, GELU, Linear."""
    h = gelu(b, linear(b, x, f"{name}.intermediate.dense", hidden, intermediate, gain=2.0), f"{name}.intermediate.gelu")
    return linear(b, h, f"{name}.output.dense", intermediate, hidden)


def attention_mask_bias(b: GraphBuilder, mask: str) -> str:
    """HuggingFace's extended attention mask: ``(1.0 - mask[:, None, None, :]) * -10000.0``,
    exported as Unsqueeze, Unsqueeze, Cast, Sub from 1, Mul by -10000.
    """
    with b.scope("extended_attention_mask"):
        m = b.op("Unsqueeze", [mask, b.const([1], np.int64)])
        m = b.op("Unsqueeze", [m, b.const([2], np.int64)])
        m = b.op("Cast", [m], to=FLOAT)
        return b.op("Mul", [b.op("Sub", [b.const(1.0), m]), b.const(-10000.0)])
