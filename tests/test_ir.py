"""The graph API keeps every read of a value current: operands, graph outputs and nested bodies' outputs."""

from __future__ import annotations

import numpy as np
import pytest

from mdoc.errors import MdocError
from mdoc.ir import Graph
from mdoc.types import DType, TensorType

F32 = TensorType(DType.F32, (2,))
BOOL = TensorType(DType.BOOL, ())


def _if_returning(outer_value, name: str) -> Graph:
    """A branch body that returns `outer_value` (defined outside it) directly: implicit capture, no node reads it."""
    body = Graph(name)
    body.outputs = [outer_value]
    return body


def test_replace_reaches_bodies_that_return_an_outer_value():
    g = Graph("main")
    x, c = g.add_input(F32, "x"), g.add_input(BOOL, "c")
    old = g.add("onnx.Relu", [x], outputs=[F32]).output
    # an If whose else-branch holds another If: both inner branches return `old` directly
    inner = Graph("inner")
    inner_if = inner.add("onnx.If", [c], {"then_branch": _if_returning(old, "t2"), "else_branch": _if_returning(old, "e2")},
                         outputs=[F32])
    inner.outputs = [inner_if.output]
    outer_if = g.add("onnx.If", [c], {"then_branch": _if_returning(old, "t1"), "else_branch": inner}, outputs=[F32])
    g.outputs = [outer_if.output]

    new = g.add("onnx.Abs", [x], outputs=[F32]).output
    g.replace_all_uses(old, new)

    bodies = [outer_if.attrs["then_branch"], inner_if.attrs["then_branch"], inner_if.attrs["else_branch"]]
    assert all(b.outputs == [new] for b in bodies)
    g.erase(old.producer())  # nothing reads it any more


def test_erased_holders_are_forgotten():
    g = Graph("main")
    c = g.add_input(BOOL, "c")
    k = g.constant(np.zeros(2, np.float32))
    holder = g.add("onnx.If", [c], {"then_branch": _if_returning(k, "t"), "else_branch": _if_returning(k, "e")},
                   outputs=[F32])
    g.erase(holder)
    other = g.constant(np.ones(2, np.float32))
    g.replace_all_uses(k, other)  # the erased If's bodies are not touched
    assert holder.attrs["then_branch"].outputs == [k]


def test_graph_output_keeps_its_name_and_erase_names_the_users():
    g = Graph("main")
    x = g.add_input(F32, "x")
    y = g.add("onnx.Relu", [x], outputs=[F32], output_names=["y"]).output
    z = g.add("onnx.Neg", [y], outputs=[F32], output_names=["z"]).output
    g.outputs = [y, z]
    with pytest.raises(MdocError, match=r"result %y is used by onnx.Neg"):
        g.erase(y.producer())
    y2 = g.add("onnx.Abs", [x], outputs=[F32]).output
    g.replace_all_uses(y, y2)
    assert g.outputs[0] is y2 and y2.name == "y" and z.producer().inputs == (y2,)
