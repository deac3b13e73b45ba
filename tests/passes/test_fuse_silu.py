"""fuse-silu: x * Sigmoid(x) becomes mdoc.silu, which the CPU backend fuses into the conv before it."""

from __future__ import annotations

import pytest

from mdoc.models import ZOO, build, example_inputs
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS
from pass_testing import apply, assert_golden, assert_properties, assert_same_outputs, copies_of


@pytest.mark.parametrize("order", ["%x, %s", "%s, %x"])
def test_x_times_sigmoid_x_becomes_silu(order):
    assert_golden("fuse-silu", f"""
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {{
  %s = onnx.Sigmoid(%x) : f32[2,4]
  %y = onnx.Mul({order}) : f32[2,4]
  return %y
}}""", """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %y = mdoc.silu(%x) : f32[2,4] from("silu")
  return %y
}""")


def test_sigmoid_of_another_value_is_not_silu():
    _, changed = apply("""
graph @g(%x: f32[2,4], %z: f32[2,4]) -> (%y: f32[2,4]) {
  %s = onnx.Sigmoid(%z) : f32[2,4]
  %y = onnx.Mul(%x, %s) : f32[2,4]
  return %y
}""", "fuse-silu")
    assert not changed


def test_detector_silus_fuse_and_keep_the_outputs():
    proto = build("detector_head", **ZOO["detector_head"].test_kwargs)
    make = copies_of(lambda: _cleaned(proto))
    original, model = assert_properties(make, "fuse-silu")
    assert sum(n.op == "mdoc.silu" for n in model.graph) == 12
    assert not any(n.op == "onnx.Mul" for n in model.graph)
    assert_same_outputs(original, model, feeds=example_inputs(proto))


def _cleaned(proto):
    model = import_model(proto)
    apply(model, OPT_LEVELS[1])
    return model
