"""A Silero-VAD-like voice activity detector: sample-rate Ifs, an STFT-like front end, an LSTM with state.

What it gathers, as Silero's exported ONNX model has it: a run-time sample
rate input that selects the front end through **nested If** nodes (16 kHz;
else 8 kHz; else decimate by two and use the 16 kHz path), branches whose
feature maps have **different lengths** (so the If's result has a run-time
shape), an STFT written as a strided Conv1d with reflection padding and a
magnitude (Split, Mul, Add, Sqrt), Conv1d+ReLU encoder layers, and an LSTM
decoder whose state ``[2, batch, hidden]`` (h and c) goes in and comes back out,
then a Conv1d and a Sigmoid to one speech probability per chunk.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, INT64, Dim, GraphBuilder
from mdoc.models.recurrent import recurrent_weights


def _conv1d(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, *, stride: int = 1,
            pad: int = 0, gain: float = 2.0) -> str:
    w = b.normal(f"{name}.weight", (cout, cin, k), math.sqrt(gain / (cin * k)))
    bias = b.normal(f"{name}.bias", (cout,), 0.1)
    with b.scope(name):
        return b.op("Conv", [x, w, bias], dilations=[1], group=1, kernel_shape=[k], pads=[pad, pad], strides=[stride])


def _front_end_weights(b: GraphBuilder, name: str, n_fft: int, channels: int) -> list[str]:
    """The STFT basis (a fixed, Hann-windowed DFT: real rows, then imaginary rows) and a 1x1 projection."""
    bins = n_fft // 2 + 1
    t = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * t / n_fft)
    freqs = np.arange(bins)[:, None] * t[None, :] * 2 * np.pi / n_fft
    basis = np.concatenate([np.cos(freqs), -np.sin(freqs)]) * window / math.sqrt(n_fft)
    proj = [b.normal(f"{name}.proj.weight", (channels, bins, 1), math.sqrt(1.0 / bins)),
            b.normal(f"{name}.proj.bias", (channels,), 0.1)]
    return [b.param(f"{name}.stft.forward_basis_buffer", basis[:, None, :].astype(np.float32)), *proj]


def _stft_features(b: GraphBuilder, x: str, name: str, n_fft: int, weights: list[str]) -> str:
    """[1, samples] audio -> [1, channels, frames]: reflect-pad, Conv1d STFT (hop n_fft / 2), magnitude, 1x1 conv."""
    basis, proj_w, proj_b = weights
    bins = n_fft // 2 + 1
    with b.scope(name):
        x = b.op("Unsqueeze", [x, b.const([1], np.int64)])
        x = b.op("Pad", [x, b.const([0, 0, n_fft // 4, 0, 0, n_fft // 4], np.int64)], mode="reflect")
    with b.scope(f"{name}.stft"):
        spec = b.op("Conv", [x, basis], dilations=[1], group=1, kernel_shape=[n_fft], pads=[0, 0],
                    strides=[n_fft // 2])
        real, imag = b.op("Split", [spec, b.const([bins, bins], np.int64)], outputs=2, axis=1)
        power = b.op("Add", [b.op("Mul", [real, real]), b.op("Mul", [imag, imag])])
        magnitude = b.op("Sqrt", [b.op("Add", [power, b.const(1e-6)])])
    with b.scope(f"{name}.proj"):
        y = b.op("Conv", [magnitude, proj_w, proj_b], dilations=[1], group=1, kernel_shape=[1], pads=[0, 0],
                 strides=[1])
        return b.op("Relu", [y])


def _branch(b: GraphBuilder, name: str, build) -> onnx.GraphProto:
    """An If branch computing features from the outer `input` (captured by name)."""
    with b.body() as nodes:
        out = build()
    return b.make_body(nodes, name, [], [(out, FLOAT, None)])


def silero_vad(
    *,
    batch: Dim = "N",
    chunk: int = 512,
    n_fft: int = 256,
    channels: int = 64,
    hidden: int = 64,
    seed: int = 0,
) -> onnx.ModelProto:
    """``input`` [batch, chunk] audio, ``state`` [2, batch, hidden], ``sr`` (int64 scalar: 16000, 8000 or
    another rate, handled as twice 16000) to ``output`` [batch, 1] (speech probability) and ``stateN``
    [2, batch, hidden].
    """
    if chunk % n_fft:
        raise ValueError(f"silero_vad: chunk ({chunk}) must be a multiple of n_fft ({n_fft})")
    b = GraphBuilder("silero_vad", seed)
    audio = b.input("input", FLOAT, [batch, chunk])
    state = b.input("state", FLOAT, [2, batch, hidden])
    sr = b.input("sr", INT64, [])

    # the front ends' weights live in the outer graph; the branches read them by name
    w16 = _front_end_weights(b, "feature_extractor_16k", n_fft, channels)
    w8 = _front_end_weights(b, "feature_extractor_8k", n_fft // 2, channels)

    def decimated() -> str:  # other rates: average pairs of samples, then the 16 kHz path
        with b.scope("resample"):
            pairs = b.op("Reshape", [audio, b.const([0, chunk // 2, 2], np.int64)])
            x = b.op("ReduceMean", [pairs], axes=[2], keepdims=0)
        return _stft_features(b, x, "feature_extractor_16k", n_fft, w16)

    then16 = _branch(b, "then_16k", lambda: _stft_features(b, audio, "feature_extractor_16k", n_fft, w16))
    other = _branch(b, "else_other", decimated)
    then8 = _branch(b, "then_8k", lambda: _stft_features(b, audio, "feature_extractor_8k", n_fft // 2, w8))
    with b.body() as nodes:
        with b.scope("sr_8k"):
            is8 = b.op("Equal", [sr, b.const(8000, np.int64)])
            feats8 = b.op("If", [is8], then_branch=then8, else_branch=other)
    else16 = b.make_body(nodes, "else_16k", [], [(feats8, FLOAT, None)])
    with b.scope("sr_16k"):
        is16 = b.op("Equal", [sr, b.const(16000, np.int64)])
        x = b.op("If", [is16], then_branch=then16, else_branch=else16)

    # encoder: Conv1d + ReLU over the (run-time long) frames, a strided one, then the mean over time
    x = _conv1d(b, x, "encoder.0", channels, channels, 3, pad=1)
    with b.scope("encoder.0"):
        x = b.op("Relu", [x])
    x = _conv1d(b, x, "encoder.1", channels, channels, 3, stride=2, pad=1)
    with b.scope("encoder.1"):
        x = b.op("ReduceMean", [b.op("Relu", [x])], axes=[2], keepdims=0)

    # decoder: one LSTM step from the incoming state, the new state out, then Conv1d + Sigmoid
    with b.scope("decoder.rnn"):
        seq = b.op("Unsqueeze", [x, b.const([0], np.int64)])  # [1 step, batch, channels]
        h0, c0 = b.op("Split", [state, b.const([1, 1], np.int64)], outputs=2, axis=0)
        weights = recurrent_weights(b, "decoder.rnn", 4, 1, channels, hidden)
        y, h, c = b.op("LSTM", [seq, *weights, "", h0, c0], outputs=3, hidden_size=hidden)
        state_out = b.op("Concat", [h, c], axis=0, outputs=["stateN"])
        y = b.op("Relu", [b.op("Squeeze", [y, b.const([0, 1], np.int64)])])  # [batch, hidden]
    with b.scope("decoder"):
        y = b.op("Unsqueeze", [y, b.const([2], np.int64)])
    y = _conv1d(b, y, "decoder.decoder.2", hidden, 1, 1, gain=1.0)
    with b.scope("decoder"):
        out = b.op("Squeeze", [b.op("Sigmoid", [y]), b.const([2], np.int64)], outputs=["output"])
    return b.model(
        [(out, FLOAT, [batch, 1]), (state_out, FLOAT, [2, batch, hidden])],
        doc=f"silero_vad: nested If on the sample rate, STFT front ends, LSTM({hidden}) with state, seeded weights",
        example_dims={"N": 1},
        int_ranges={"sr": (8000, 8001)},
    )
