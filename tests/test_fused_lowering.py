"""mdoc.conv / mdoc.matmul through the backend: every activation of the one list, on the CPU kernels
(epilogue in the register tile) and on the generic path (the tail expanded in Relax), against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

tvm = pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")

from mdoc.activations import ACTIVATIONS  # noqa: E402
from mdoc.targets.cpu_kernels.common import TE_ACTIVATIONS  # noqa: E402
from mdoc.targets.relax import Kernels  # noqa: E402
from mdoc.targets.relax.kernels import RELAX_ACTIVATIONS  # noqa: E402
from test_cpu_strategy import check, make_model  # noqa: E402
from test_relax_lowering import f32  # noqa: E402

N = helper.make_node
# each activation of mdoc.activations as ONNX writes it
ONNX_FORMS = {
    "relu": lambda x, y: [N("Relu", [x], [y])],
    "tanh": lambda x, y: [N("Tanh", [x], [y])],
    "sigmoid": lambda x, y: [N("Sigmoid", [x], [y])],
    "silu": lambda x, y: [N("Sigmoid", [x], [y + "_s"]), N("Mul", [x, y + "_s"], [y])],
    "gelu": lambda x, y: [N("Gelu", [x], [y])],
    "gelu_tanh": lambda x, y: [N("Gelu", [x], [y], approximate="tanh")],
    "clip": lambda x, y: [N("Clip", [x, "lo", "hi"], [y])],
    "leaky_relu": lambda x, y: [N("LeakyRelu", [x], [y], alpha=0.3)],
    "hardsigmoid": lambda x, y: [N("HardSigmoid", [x], [y], alpha=0.3, beta=0.4)],
    "hardswish": lambda x, y: [N("HardSwish", [x], [y])],
}


def test_the_activation_list_exists_once():
    """The kernels' TE forms and the Relax expansions cover exactly mdoc.activations' list."""
    assert set(TE_ACTIVATIONS) == set(ACTIVATIONS)
    assert set(RELAX_ACTIVATIONS) == set(ACTIVATIONS) == set(ONNX_FORMS)


def _model():
    """Per activation: a 3x3 conv + residual + act, and a dense layer with scale, bias, residual, act."""
    x, v = f32(1, 16, 6, 6), f32(4, 24)
    inits = {"w": f32(16, 16, 3, 3, scale=0.2), "b": f32(16), "wm": f32(24, 24, scale=0.3), "bm": f32(24),
             "k": np.array(0.5, np.float32), "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}
    nodes, outs = [], []
    for name, form in ONNX_FORMS.items():
        nodes += [N("Conv", ["x", "w", "b"], [f"{name}_c"], pads=[1, 1, 1, 1]), N("Add", [f"{name}_c", "x"], [f"{name}_r"]),
                  *form(f"{name}_r", f"conv_{name}"),
                  N("MatMul", ["v", "wm"], [f"{name}_m"]), N("Mul", [f"{name}_m", "k"], [f"{name}_k"]),
                  N("Add", [f"{name}_k", "bm"], [f"{name}_b"]), N("Add", [f"{name}_b", "v"], [f"{name}_v"]),
                  *form(f"{name}_v", f"dense_{name}")]
        outs += [f"conv_{name}", f"dense_{name}"]
    return make_model(nodes, {"x": x, "v": v}, outs, inits, opset=20), {"x": x, "v": v}


@pytest.mark.parametrize("kernels", [None, Kernels()], ids=["cpu-kernels", "generic"])
def test_every_activation_fuses_and_matches_onnxruntime(kernels):
    m, feeds = _model()
    names = check(m, feeds, kernels=kernels, rtol=2e-4, atol=2e-5)
    if kernels is None:  # each tail is its kernel's epilogue: one kernel per product, no elementwise op left
        for name in ACTIVATIONS:
            assert f"conv2d_3x3s1p1_16x6x6_16_bias_res_{name}" in names, (name, names)
            assert f"dense_4x24x24_scale_bias_res_{name}" in names, (name, names)
