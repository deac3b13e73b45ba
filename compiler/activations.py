"""The unary activations a conv or matmul may carry fused (`mdoc.conv`, `mdoc.matmul`): the one list.

Why one module: the fusion pass (`passes/fuse_epilogue.py`) decides which nodes an op
absorbs, the reference evaluator and the exporter give the fused op its meaning, and
every backend maps the same names to its own code (`targets/cpu_kernels` to TE in the
register tile, `targets/relax` to Relax ops); they all read this table, so they cannot
disagree about what is fusable.

Each activation has a name (the `activation` attribute of the fused ops), its ONNX
parameters as (alpha, beta) with their defaults, a numpy reference, and the ONNX ops
that compute it (`activation_of(node)` says which activation a node is, if any):

    relu         onnx.Relu
    tanh         onnx.Tanh
    sigmoid      onnx.Sigmoid
    silu         mdoc.silu                      x * sigmoid(x)
    gelu         onnx.Gelu, mdoc.gelu           exact (erf); mdoc.gelu only without its bias
    gelu_tanh    onnx.Gelu, mdoc.gelu           approximate = "tanh"
    clip         onnx.Clip                      alpha = min, beta = max, both constant scalars
    leaky_relu   onnx.LeakyRelu                 alpha
    hardsigmoid  onnx.HardSigmoid               clip(alpha * x + beta, 0, 1)
    hardswish    onnx.HardSwish                 x * clip(x / 6 + 0.5, 0, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

_ERF = np.vectorize(math.erf, otypes=[np.float64])


@dataclass(frozen=True)
class Activation:
    name: str
    reference: Callable[[np.ndarray, float, float], np.ndarray]  # float64 in, float64 out
    alpha: float = 0.0  # defaults of the ONNX attributes (0.0 where the activation has none)
    beta: float = 0.0
    params: int = 0  # how many of (alpha, beta) the activation reads


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in [
    Activation("relu", lambda x, a, b: np.maximum(x, 0.0)),
    Activation("tanh", lambda x, a, b: np.tanh(x)),
    Activation("sigmoid", lambda x, a, b: _sigmoid(x)),
    Activation("silu", lambda x, a, b: x * _sigmoid(x)),
    Activation("gelu", lambda x, a, b: 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))),
    Activation("gelu_tanh", lambda x, a, b: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                                      * (x + 0.044715 * x ** 3)))),
    Activation("clip", lambda x, a, b: np.minimum(np.maximum(x, a), b), 0.0, 6.0, 2),
    Activation("leaky_relu", lambda x, a, b: np.where(x >= 0.0, x, x * a), 0.01, 0.0, 1),
    Activation("hardsigmoid", lambda x, a, b: np.clip(x * a + b, 0.0, 1.0), 0.2, 0.5, 2),
    Activation("hardswish", lambda x, a, b: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)),
]}

# the ops `activation_of` recognizes (a fusion pattern's root takes any of them)
ACTIVATION_OPS = ("onnx.Relu", "onnx.Tanh", "onnx.Sigmoid", "mdoc.silu", "onnx.Gelu", "mdoc.gelu", "onnx.Clip",
                  "onnx.LeakyRelu", "onnx.HardSigmoid", "onnx.HardSwish")
_SIMPLE = {"onnx.Relu": "relu", "onnx.Tanh": "tanh", "onnx.Sigmoid": "sigmoid", "mdoc.silu": "silu",
           "onnx.HardSwish": "hardswish"}


@dataclass(frozen=True)
class Applied:
    """An activation with its parameters, as a fused op's attributes hold it."""

    name: str
    alpha: float | None = None  # None: the activation's default
    beta: float | None = None

    @property
    def params(self) -> list[float]:
        """The `activation_params` attribute: the parameters the activation reads, defaults filled in."""
        act = ACTIVATIONS[self.name]
        values = [act.alpha if self.alpha is None else self.alpha, act.beta if self.beta is None else self.beta]
        return values[:act.params]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        act = ACTIVATIONS[self.name]
        a = act.alpha if self.alpha is None else self.alpha
        b = act.beta if self.beta is None else self.beta
        return act.reference(np.asarray(x, np.float64), a, b)


def activation_of(node) -> Applied | str:
    """The activation `node` computes of its first operand, or why it is not a fusable one."""
    op = node.op
    if op in _SIMPLE:
        return Applied(_SIMPLE[op])
    if op in ("onnx.Gelu", "mdoc.gelu"):
        if node.input(1) is not None:
            return f"{op} '{node.name}' adds a bias (fuse it as the bias instead)"
        mode = node.attrs.get("approximate", "none")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode not in ("none", "tanh"):
            return f"{op} '{node.name}' has approximate = '{mode}'"
        return Applied("gelu" if mode == "none" else "gelu_tanh")
    if op == "onnx.Clip":
        bounds = [_scalar(node.input(i)) for i in (1, 2)]
        if len(node.inputs) != 3 or any(b is None for b in bounds):
            return f"onnx.Clip '{node.name}' needs constant float32 scalars for both min and max"
        return Applied("clip", *bounds)
    if op == "onnx.LeakyRelu":
        return Applied("leaky_relu", float(node.attrs.get("alpha", 0.01)))
    if op == "onnx.HardSigmoid":
        return Applied("hardsigmoid", float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)))
    return f"{op} is not a fusable activation (those are: {', '.join(ACTIVATION_OPS)})"


def applied_from_attrs(attrs: dict) -> Applied | None:
    """The activation a fused op's `activation` / `activation_params` attributes name, or None."""
    name = attrs.get("activation")
    if not name:
        return None
    name = name.decode() if isinstance(name, bytes) else str(name)
    params = [float(p) for p in attrs.get("activation_params", ())]
    return Applied(name, *(params + [None, None])[:2])


def check_attrs(attrs: dict) -> str | None:
    """Why a fused op's activation attributes are wrong, or None."""
    name = attrs.get("activation")
    if not name:
        return "has activation_params but no activation" if attrs.get("activation_params") else None
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name not in ACTIVATIONS:
        return f"activation = '{name}'; it must be one of {', '.join(ACTIVATIONS)}"
    have, want = len(attrs.get("activation_params", ())), ACTIVATIONS[name].params
    if have != want:
        return f"activation '{name}' takes {want} activation_params, has {have}"
    return None


def _scalar(value) -> float | None:
    array = value.const_value if value is not None else None
    if array is None or np.asarray(array).size != 1 or np.asarray(array).dtype != np.float32:
        return None
    return float(np.asarray(array).reshape(()))
