"""The verifier names the node, its op and the broken rule; random damage gives a VerifyError, nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_model
from mdoc.errors import VerifyError
from mdoc.ir import Graph, Model, Node
from mdoc.onnx_import import import_model
from mdoc.types import DType, TensorType
from mdoc.verifier import verify

F32 = TensorType(DType.F32, (2, 3))


def _model() -> Model:
    return import_model(tiny_model())


def _node(model: Model, name: str) -> Node:
    return next(n for n in model.graph if n.name == name)


def _fails(model: Model, *fragments: str) -> VerifyError:
    with pytest.raises(VerifyError) as e:
        verify(model)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return e.value


def test_clean_model_verifies():
    verify(_model())


def test_wrong_arity():
    m = _model()
    relu = _node(m, "relu")
    relu.set_input(1, relu.input(0))
    err = _fails(m, "node 'relu' (onnx.Relu)", "expects 1 operands, has 2")
    assert ">> " in err.context and "onnx.Relu" in err.context


def test_unknown_attribute():
    m = _model()
    _node(m, "add").attrs["alpha"] = 1.0
    _fails(m, "node 'add' (onnx.Add)", "unknown attribute 'alpha'")


def test_attribute_kind():
    m = _model()
    g = m.graph
    x = g.inputs[0]
    g.add("onnx.Softmax", [x], {"axis": 1.5}, outputs=[F32], name="sm", before=_node(m, "relu"))
    _fails(m, "node 'sm' (onnx.Softmax)", "attribute 'axis' should be int, got float")


def test_missing_required_attribute():
    m = _model()
    m.graph.add("onnx.Cast", [m.graph.inputs[0]], {}, outputs=1, name="c")
    _fails(m, "node 'c' (onnx.Cast)", "required attribute 'to' is missing")


def test_operand_dtype():
    m = _model()
    ints = m.graph.constant(np.arange(3, dtype=np.int64), before=_node(m, "relu"))
    m.graph.add("onnx.Sqrt", [ints], outputs=1, name="sq")
    _fails(m, "node 'sq' (onnx.Sqrt)", "operand 0 (X) has type i64")


def test_mixed_dtypes_of_one_type_parameter():
    m = _model()
    g = m.graph
    half = g.constant(np.ones(3, np.float16))
    g.add("onnx.Add", [g.inputs[0], half], outputs=1, name="mix")
    _fails(m, "node 'mix' (onnx.Add)", "has type f16 but T is already f32")


def test_use_before_definition():
    m = _model()
    relu, mm = _node(m, "relu"), _node(m, "mm")
    mm.set_input(0, relu.output)
    _fails(m, "node 'mm' (onnx.MatMul)", "operand 0 %y is used before it is defined")


def test_value_from_another_graph():
    m = _model()
    other = Graph("other")
    stray = other.add_input(F32, "stray")
    _node(m, "relu").set_input(0, stray)
    _fails(m, "node 'relu' (onnx.Relu)", "used before it is defined (or is defined in another graph)")


def test_undefined_output():
    m = _model()
    m.graph.outputs.append(Graph("g2").add_input(F32, "ghost"))
    _fails(m, "graph @tiny", "output 1 %ghost is not defined")


def test_constant_type_mismatch():
    m = _model()
    w = next(n for n in m.graph if n.op == "onnx.Constant")
    w.outputs[0].type = TensorType(DType.F32, (9,))
    _fails(m, "(onnx.Constant)", "does not match its value f32[4,3]")


def test_stale_use_list():
    m = _model()
    relu = _node(m, "relu")
    relu.input(0)._uses.clear()
    _fails(m, "node 'relu' (onnx.Relu)", "missing from its value's use list")


def test_unknown_mdoc_op():
    m = _model()
    m.graph.add("mdoc.nonesuch", [m.graph.inputs[0]], outputs=1, name="n")
    _fails(m, "node 'n' (mdoc.nonesuch)", "is not a defined mdoc op")


def test_custom_domain_ops_are_opaque():
    m = _model()
    m.graph.add("com.example.Frob", [m.graph.inputs[0]], {"anything": 3}, outputs=2, name="f")
    verify(m)


# -- property: any random damage is reported as a VerifyError -----------------------------
_MUTATIONS = ["drop_operand", "add_operand", "attr", "swap_order", "retype_const", "foreign", "stale_use"]


def _mutate(m: Model, kind: str, data) -> None:
    g = m.graph
    nodes = g.nodes()
    node = data.draw(st.sampled_from(nodes))
    if kind == "drop_operand" and node.inputs:
        node.set_input(0, None)
    elif kind == "add_operand":
        node.set_input(len(node.inputs) + data.draw(st.integers(0, 2)), g.inputs[0])
    elif kind == "attr":
        node.attrs[data.draw(st.sampled_from(["axis", "alpha", "to", "zzz"]))] = data.draw(
            st.one_of(st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=3), st.just((1, 2))))
    elif kind == "swap_order":
        other = data.draw(st.sampled_from(nodes))
        if other is not node:
            g.move_before(other, node)
    elif kind == "retype_const" and node.op == "onnx.Constant":
        node.output.type = TensorType(data.draw(st.sampled_from(list(DType)[:8])), (data.draw(st.integers(0, 5)),))
    elif kind == "foreign" and node.inputs:
        node.set_input(0, Graph("x").add_input(F32, "alien"))
    elif kind == "stale_use" and node.outputs[0].has_uses():
        node.outputs[0]._uses.append((node, 7))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_MUTATIONS), min_size=1, max_size=3), st.data())
def test_random_damage_gives_verify_error(kinds, data):
    m = _model()
    for kind in kinds:
        _mutate(m, kind, data)
    try:
        verify(m)
    except VerifyError as e:
        assert "\n" not in str(e) and str(e).startswith("verify: ")
