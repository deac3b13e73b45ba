"""A recurrent sequence classifier: bidirectional LSTM, then GRU, then a Gemm.

TVM has no LSTM or GRU, so these are what the compiler's decomposition passes
must lower (forward and reverse directions, and the GRU's
``linear_before_reset=1`` variant that PyTorch exports).  The surrounding
Transposes and Reshape are those of a ``batch_first=True`` PyTorch model.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from mdoc.models.builder import FLOAT, Dim, GraphBuilder
from mdoc.models.layers import classifier


def recurrent_weights(b: GraphBuilder, name: str, gates: int, directions: int, cin: int, hidden: int) -> list[str]:
    """W, R and B for an ONNX LSTM (4 gates) or GRU (3 gates), drawn as PyTorch does: U(-1/sqrt(H), 1/sqrt(H)).

    The range is doubled so that the recurrence actually carries state rather
    than decaying to the biases within a few steps.
    """
    r = 2.0 / math.sqrt(hidden)
    return [
        b.uniform(f"{name}.W", (directions, gates * hidden, cin), -r, r),
        b.uniform(f"{name}.R", (directions, gates * hidden, hidden), -r, r),
        b.uniform(f"{name}.B", (directions, 2 * gates * hidden), -r, r),
    ]


def lstm_seq(
    *,
    batch: Dim = "N",
    seq: Dim = "S",
    features: int = 64,
    hidden: int = 128,
    num_classes: int = 10,
    example_seq: int = 32,
    seed: int = 0,
) -> onnx.ModelProto:
    """``x`` [batch, seq, features] to ``logits`` [batch, num_classes] (from the GRU's last
    state) and ``encoded`` [batch, seq, hidden] (the GRU's whole output sequence).
    """
    b = GraphBuilder("lstm_seq", seed)
    x = b.input("x", FLOAT, [batch, seq, features])
    with b.scope("lstm"):
        y = b.op("Transpose", [x], perm=[1, 0, 2])
        weights = recurrent_weights(b, "lstm", 4, 2, features, hidden)
        y, _, _ = b.op("LSTM", [y, *weights], outputs=3, direction="bidirectional", hidden_size=hidden)
        # Y is [seq, 2, batch, hidden]; torch concatenates the directions on the last axis.
        y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
        y = b.op("Reshape", [y, b.const([0, 0, 2 * hidden], np.int64)])
    with b.scope("gru"):
        weights = recurrent_weights(b, "gru", 3, 1, 2 * hidden, hidden)
        y, h = b.op("GRU", [y, *weights], outputs=2, hidden_size=hidden, linear_before_reset=1)
        encoded = b.op("Transpose", [b.op("Squeeze", [y, b.const([1], np.int64)])], perm=[1, 0, 2])
        last = b.op("Squeeze", [h, b.const([0], np.int64)])
    encoded = b.rename(encoded, "encoded")
    logits = b.rename(classifier(b, last, "fc", hidden, num_classes), "logits")
    return b.model(
        [(logits, FLOAT, [batch, num_classes]), (encoded, FLOAT, [batch, seq, hidden])],
        doc=f"lstm_seq: bidirectional LSTM({hidden}) -> GRU({hidden}) -> Gemm, seeded random weights",
        example_dims={"N": 1, "S": example_seq},
    )
