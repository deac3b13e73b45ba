"""The textual IR: golden texts, round trips of graphs built with the API, error messages, .mdir files,
and hypothesis properties (random graphs print to a fixpoint; mutated text never crashes the parser)."""

from __future__ import annotations

import math
import os
import re

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdoc.errors import MdocError, ParseError
from mdoc.ir import CONSTANT, Graph, Model, Value
from mdoc.parser import load_mdir, parse_graph, parse_model, parse_type
from mdoc.printer import print_graph, print_model, print_node, print_type, save_mdir
from mdoc.types import (UNKNOWN, DType, OptionalType, SequenceType, TensorType, type_from_onnx,
                        type_to_onnx)

F32 = DType.F32


def t(dtype: DType, *dims) -> TensorType:
    return TensorType(dtype, dims)


# -- structural equality (names aside) --------------------------------------------

def assert_same_model(a: Model, b: Model) -> None:
    assert (a.ir_version, a.opset_imports, a.producer_name, a.producer_version, a.metadata) == \
           (b.ir_version, b.opset_imports, b.producer_name, b.producer_version, b.metadata)
    assert_same_graph(a.graph, b.graph, {})


def assert_same_graph(ga: Graph, gb: Graph, vmap: dict) -> None:
    assert ga.name == gb.name
    assert len(ga.inputs) == len(gb.inputs)
    for va, vb in zip(ga.inputs, gb.inputs):
        assert va.type == vb.type
        vmap[va] = vb
    assert len(ga) == len(gb)
    for x, y in zip(ga, gb):
        assert (x.op, x.name, x.provenance) == (y.op, y.name, y.provenance)
        ins = list(x.inputs)
        while ins and ins[-1] is None:
            ins.pop()
        assert len(ins) == len(y.inputs)
        for vx, vy in zip(ins, y.inputs):
            assert (vx is None and vy is None) or vmap[vx] is vy
        assert sorted(x.attrs) == sorted(y.attrs)
        for k in x.attrs:
            assert_same_attr(x.attrs[k], y.attrs[k], vmap)
        assert [v.type for v in x.outputs] == [v.type for v in y.outputs]
        vmap.update(zip(x.outputs, y.outputs))
    assert len(ga.outputs) == len(gb.outputs)
    for va, vb in zip(ga.outputs, gb.outputs):
        assert vmap[va] is vb
        assert va.name == vb.name  # export names survive


def assert_same_attr(a, b, vmap) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert_same_array(a, b)
    elif isinstance(a, Graph):
        assert isinstance(b, Graph)
        assert_same_graph(a, b, vmap)
    elif isinstance(a, (tuple, list)):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_attr(x, y, vmap)
    elif isinstance(a, onnx.TypeProto):
        assert type_from_onnx(a) == type_from_onnx(b)
    elif isinstance(a, float):
        assert type(b) is float
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    else:
        if isinstance(a, (np.bool_, np.integer, np.floating)):
            a = a.item()
            return assert_same_attr(a, b, vmap)
        assert type(a) is type(b) and a == b


def assert_same_array(a: np.ndarray, b: np.ndarray) -> None:
    """Same dtype, shape and bits; any NaN equals any NaN (the text spells every NaN `nan`)."""
    assert a.shape == b.shape
    if a.dtype == object:
        assert b.dtype == object and a.tolist() == b.tolist()
        return
    assert a.dtype == b.dtype
    if a.size == 0:
        return
    same_bits = (np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(a.size, -1)
                 == np.ascontiguousarray(b).reshape(-1).view(np.uint8).reshape(b.size, -1)).all(axis=1)
    if a.dtype.kind in "fcV" or DType.from_numpy(a.dtype).is_float:
        wide = np.complex128 if a.dtype.kind == "c" else np.float64
        with np.errstate(invalid="ignore"):
            same_bits |= (np.isnan(a.astype(wide)) & np.isnan(b.astype(wide))).reshape(-1)
    assert same_bits.all()


def roundtrip(model: Model, resources: dict | None = None) -> tuple[str, Model]:
    """Print, parse, print again: the texts must be identical and the models equivalent."""
    res: dict = {} if resources is None else resources
    text = print_model(model, res)
    assert text.isascii()
    back = parse_model(text, res)
    res2: dict = {}
    assert print_model(back, res2) == text
    assert res2.keys() == res.keys()
    for k in res:
        assert_same_array(np.asarray(res[k]), res2[k])
    assert_same_model(model, back)
    return text, back


# -- golden texts -----------------------------------------------------------------

GOLDEN_CONV = """\
module {ir_version = 8, opset_imports = {"" = 17, "com.microsoft" = 1}, producer_name = "pytorch", producer_version = "2.1", metadata = {"author" = "mdoc tests", "z" = ""}}
graph @main(%x: f32[N,3,8,8], %max: f32[]) -> (%logits: f32[N,10]) {
  %conv1.weight = onnx.Constant() {value = resource<"conv1.weight">} : f32[4,3,3,3]
  %shape = onnx.Constant() {value = dense<[1, -1]>} : i64[2]
  %conv1 = onnx.Conv(%x, %conv1.weight) {kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]} : f32[N,4,4,4] loc("conv1")
  %a, %b = onnx.Split(%conv1) {axis = 1} : f32[N,2,4,4], f32[N,2,4,4] loc("split")
  %sum = onnx.Add(%a, %b) : f32[N,2,4,4]
  %clipped = onnx.Clip(%sum, none, %max) : f32[N,2,4,4]
  %flat = onnx.Reshape(%clipped, %shape) : f32[N,32]
  %fc.weight = onnx.Constant() {value = resource<"fc.weight">} : f32[10,32]
  %logits = com.microsoft.FusedGemm(%flat, %fc.weight) {activation = "Relu", transB = 1} : f32[N,10] from("fuse-gemm-relu")
  return %logits
}
"""

GOLDEN_CONTROL_FLOW = """\
module {ir_version = 8, opset_imports = {"" = 17}, producer_name = "mdoc"}
graph @main(%cond: bool[], %x: f32[2], %trip: i64[]) -> (%y: f32[2], %acc_out: f32[2], %x: f32[2]) {
  %one = onnx.Constant() {value = dense<1.0>} : f32[]
  %y = onnx.If(%cond) {else_branch = graph @else() -> (%e: f32[2]) {
    %e = onnx.Sub(%x, %one) : f32[2]
    return %e
  }, then_branch = graph @then() -> (%t: f32[2]) {
    %t = onnx.Add(%x, %one) : f32[2]
    return %t
  }} : f32[2]
  %acc_out = onnx.Loop(%trip, none, %x) {body = graph @body(%i: i64[], %c: bool[], %acc: f32[2]) -> (%c_out: bool[], %acc_next: f32[2]) {
    %c_out = onnx.Identity(%c) : bool[]
    %inner = onnx.If(%c) {else_branch = graph @e2() -> (%x: f32[2]) {
      return %x
    }, then_branch = graph @t2() -> (%z: f32[2]) {
      %z = onnx.Neg(%acc) : f32[2]
      return %z
    }} : f32[2]
    %acc_next = onnx.Mul(%inner, %y) : f32[2]
    return %c_out, %acc_next
  }} : f32[2]
  return %y, %acc_out, %x
}
"""

GOLDEN_NAMES = """\
module {ir_version = 9, opset_imports = {"" = 18, "ai.onnx.ml" = 3, "custom domain" = 1}, producer_name = ""}
graph @"my graph"(%"input:0": f32[batch,"seq len",?], %0: i64[*], %x: seq<f32[*]>, %x_1: opt<i64[2]>) -> (%"out/1": f32[batch,"seq len",?], %x: ?, %x: ?, f32[batch,"seq len",?]) {
  %"out/1" = "custom domain.Op-1"(%"input:0", none, %0) : f32[batch,"seq len",?]
  %x_2 = "return"() : ?
  %2 = onnx.ml.LabelEncoder(%x_2) {keys_strings = ["a", "\\u00e9"], values_int64s = [1, 2]} : ?
  %"12", %1 = mdoc.conv2d_relu(%2, %x, %x_1) : ?, f32[batch,"seq len",?]
  "loc"(%"12")
  none(%"out/1")
  return %"out/1", %x_2, %x_2, %1
}
"""

GOLDEN_ATTRS = """\
module {ir_version = 8, opset_imports = {"" = 17, "mdoc" = 1}, producer_name = "mdoc"}
graph @attrs() -> () {
  mdoc.attrs() {b = b"\\x00\\xffok\\"\\\\", bf = dense<[0.5, -3.140625, inf]> : bf16[3], bits = dense<[[true, false]]> : bool[1,2], bool = true, c = dense<[(1.0, -2.5), (nan, 0.0)]> : c64[2], e = [], empty = dense<[[], []]> : f32[2,0], f = 0.1, f16 = dense<[65504.0, 5.960464477539063e-08]> : f16[2], fl = [1.0, 2.5, nan, inf, -inf, -0.0, 1e-300], g = graph @sub() -> () {
    return
  }, gs = [graph @g0() -> () {
    return
  }, graph @g1() -> () {
    return
  }], i = -3, il = [1, -2, 9223372036854775807, 100000000000000000000000], mixed = [1, 2.0, "three", b"4"], s = "tab\\there \\"quoted\\"\\n", scalar = dense<-7> : i8[], sl = ["a", ""], strs = dense<["x", b"\\xff", "\\u00e9"]> : str[3], t = dense<[[1.5, -0.0], [9.999999747378752e-06, 3.4028234663852886e+38]]> : f32[2,2], tl = [dense<true> : bool[], dense<[]> : i64[0]], tp = type<seq<f32[N,?]>>, tps = [type<opt<i64[*]>>, type<?>], u64 = dense<[18446744073709551615]> : u64[1], weights = resource<"n.weights"> : f32[16], "weird key" = 1} loc("n")
  return
}
"""

GOLDEN_RESOURCES = {
    "conv1.weight": np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3) / 7,
    "fc.weight": np.linspace(-1, 1, 320, dtype=np.float32).reshape(10, 32),
    "n.weights": np.arange(16, dtype=np.float32),
}


@pytest.mark.parametrize("text", [GOLDEN_CONV, GOLDEN_CONTROL_FLOW, GOLDEN_NAMES, GOLDEN_ATTRS],
                         ids=["conv", "control-flow", "names", "attrs"])
def test_golden_text_is_a_fixpoint(text):
    model = parse_model(text, GOLDEN_RESOURCES)
    res: dict = {}
    assert print_model(model, res) == text
    for name, arr in res.items():
        assert_same_array(GOLDEN_RESOURCES[name], arr)


def test_golden_conv_reads_as_expected():
    m = parse_model(GOLDEN_CONV, GOLDEN_RESOURCES)
    assert m.opset_imports == {"": 17, "com.microsoft": 1}
    assert (m.producer_name, m.producer_version, m.metadata) == ("pytorch", "2.1", {"author": "mdoc tests", "z": ""})
    g = m.graph
    assert [v.name for v in g.inputs] == ["x", "max"]
    assert g.inputs[0].type == TensorType(F32, ("N", 3, 8, 8))
    assert [v.name for v in g.outputs] == ["logits"]
    nodes = g.nodes()
    assert nodes[0].op == CONSTANT and nodes[0].attrs["value"] is GOLDEN_RESOURCES["conv1.weight"]
    assert nodes[1].attrs["value"].dtype == np.int64 and nodes[1].attrs["value"].tolist() == [1, -1]
    conv = nodes[2]
    assert conv.name == "conv1" and conv.attrs == {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1), "strides": (2, 2)}
    split = nodes[3]
    assert [v.name for v in split.outputs] == ["a", "b"]
    clip = nodes[5]
    assert clip.inputs[1] is None and clip.inputs[2] is g.inputs[1]
    assert nodes[-1].provenance == "fuse-gemm-relu" and nodes[-1].op == "com.microsoft.FusedGemm"


def test_golden_control_flow_captures_outer_values():
    m = parse_model(GOLDEN_CONTROL_FLOW)
    g = m.graph
    x, one = g.inputs[1], g.nodes()[0].output
    if_node, loop = g.nodes()[1], g.nodes()[2]
    then = if_node.attrs["then_branch"]
    assert then.parent is if_node
    assert then.nodes()[0].inputs == (x, one)
    body = loop.attrs["body"]
    assert [v.name for v in body.inputs] == ["i", "c", "acc"]
    inner = body.nodes()[1]
    assert inner.attrs["else_branch"].outputs == [x]  # returns a value two graphs out
    assert inner.attrs["then_branch"].nodes()[0].inputs == (body.inputs[2],)
    assert body.nodes()[2].inputs[1] is if_node.output
    assert loop.inputs == (g.inputs[2], None, x)


def test_golden_names_keep_hints_and_export_names():
    g = parse_model(GOLDEN_NAMES).graph
    assert [v.name for v in g.inputs] == ["input:0", "", "x", "x_1"]
    assert [v.name for v in g.outputs] == ["out/1", "x", "x", ""]
    assert g.outputs[1] is g.outputs[2]
    ops = [n.op for n in g]
    assert ops == ["custom domain.Op-1", "return", "onnx.ml.LabelEncoder", "mdoc.conv2d_relu", "loc", "none"]
    assert g.nodes()[3].outputs[0].name == "12"
    assert g.inputs[0].type == TensorType(F32, ("batch", "seq len", None))


def test_golden_attrs_values_and_python_types():
    a = parse_model(GOLDEN_ATTRS, GOLDEN_RESOURCES).graph.nodes()[0].attrs
    assert a["b"] == b'\x00\xffok"\\'
    assert a["bool"] is True and a["i"] == -3 and a["e"] == ()
    assert type(a["f"]) is float and a["f"] == 0.1
    assert a["il"] == (1, -2, 2**63 - 1, 10**23)
    assert a["mixed"] == (1, 2.0, "three", b"4") and type(a["mixed"][1]) is float
    assert a["s"] == 'tab\there "quoted"\n'
    assert a["bf"].dtype == ml_dtypes.bfloat16 and a["bf"].astype(np.float32).tolist()[:2] == [0.5, -3.140625]
    assert a["c"].dtype == np.complex64 and a["c"][0] == 1 - 2.5j
    assert a["empty"].shape == (2, 0) and a["empty"].dtype == np.float32
    assert a["scalar"].shape == () and a["scalar"].dtype == np.int8
    assert a["strs"].dtype == object and a["strs"].tolist() == ["x", b"\xff", "\u00e9"]
    assert a["u64"][0] == 2**64 - 1
    assert type_from_onnx(a["tp"]) == SequenceType(TensorType(F32, ("N", None)))
    assert isinstance(a["g"], Graph) and [g.name for g in a["gs"]] == ["g0", "g1"]
    assert a["weights"] is GOLDEN_RESOURCES["n.weights"]
    assert a["weird key"] == 1


def test_hand_written_text_gets_canonical():
    """The module header may be left out, so may result types; `# comments` are ignored."""
    text = """
    # the STYLE.md example, with weights as inputs
    graph @conv_bn(%x: f32[1,3,8,8], %w: f32[8,3,3,3], %s: f32[8]) -> (f32[1,8,8,8]) {
      %y = onnx.Conv(%x, %w, none) {pads = [1,1,1,1], kernel_shape = [3,3]}   # trailing none dropped
      %z = onnx.BatchNormalization(%y, %s, %s, %s, %s) {epsilon = 1e-05}
      return %z
    }
    """
    m = parse_model(text)
    assert (m.ir_version, m.opset_imports, m.producer_name) == (8, {"": 17}, "mdoc")
    z = m.graph.outputs[0]
    assert z.type == TensorType(F32, (1, 8, 8, 8)) and z.name == "z"
    assert m.graph.nodes()[0].inputs == tuple(m.graph.inputs[:2])
    assert print_model(m) == """\
module {ir_version = 8, opset_imports = {"" = 17}, producer_name = "mdoc"}
graph @conv_bn(%x: f32[1,3,8,8], %w: f32[8,3,3,3], %s: f32[8]) -> (%z: f32[1,8,8,8]) {
  %y = onnx.Conv(%x, %w) {kernel_shape = [3, 3], pads = [1, 1, 1, 1]} : ?
  %z = onnx.BatchNormalization(%y, %s, %s, %s, %s) {epsilon = 1e-05} : f32[1,8,8,8]
  return %z
}
"""
    assert parse_graph(text).name == "conv_bn"


def test_module_fields_round_trip_as_written():
    m = Model(Graph(""), ir_version=3, producer_name="", producer_version="v\"1", metadata={"b": "2", "a": ""})
    m.opset_imports = {}
    text, back = roundtrip(m)
    assert text.splitlines()[0] == ('module {ir_version = 3, opset_imports = {}, producer_name = "", '
                                    'producer_version = "v\\"1", metadata = {"a" = "", "b" = "2"}}')
    assert back.opset_imports == {} and text.splitlines()[1] == 'graph @""() -> () {'


def test_signature_name_renames_returned_value():
    m = parse_model("graph @g(%x: f32[2]) -> (%out: f32[2]) {\n %t = onnx.Relu(%x) : f32[2]\n return %t\n}")
    assert m.graph.outputs[0].name == "out"
    assert "%out = onnx.Relu(%x)" in print_model(m)


# -- graphs built with the API -----------------------------------------------------

def test_every_attribute_kind_round_trips():
    g = Graph("main")
    x = g.add_input(TensorType(F32, ("N", None)), "x")
    body = Graph("body")
    body.outputs.append(body.add("onnx.Neg", [x], outputs=[x.type]).output)  # captures %x
    attrs = {
        "i": 7, "neg": -(2**70), "np_int": np.int64(3), "bool": False, "f": 1.5, "f32": float(np.float32(0.1)),
        "np_f32": np.float32(2.5), "nan": float("nan"), "inf": float("-inf"), "s": "h\u00e9\n\"\\\x00",
        "surrogate": "\ud800",
        "b": bytes(range(256)), "ints": (1, 2, 3), "floats": (1.0, 0.5), "strs": ("a", "", "\u2603"),
        "bytes_list": (b"\x00", b""), "empty": (), "t": np.arange(6, dtype=np.int32).reshape(2, 3),
        "t_big": np.arange(100, dtype=np.float64), "bf16": np.array([1.5, -0.0], dtype=ml_dtypes.bfloat16),
        "f8": np.array([0.5, -2], dtype=ml_dtypes.float8_e4m3fn), "i4": np.array([-8, 7], dtype=ml_dtypes.int4),
        "u4": np.array([0, 15], dtype=ml_dtypes.uint4), "f4": np.array([0.5, -6], dtype=ml_dtypes.float4_e2m1fn),
        "strings": np.array(["a", "b"] * 10, dtype=object),
        "tensors": (np.array(1.0, np.float16), np.zeros((0, 3), np.int64)),
        "graph": body, "graphs": (Graph("a"), Graph("b")),
        "type": type_to_onnx(SequenceType(TensorType(DType.I64, None))),
        "types": (type_to_onnx(OptionalType(TensorType(F32, (2,)))),), "c128": np.array([1 + 2j], np.complex128),
    }
    g.add("mdoc.everything", [x, None, x, None], attrs, outputs=[UNKNOWN], name="n", output_names=["y"])
    g.outputs.append(g.nodes()[0].output)
    text, back = roundtrip(Model(g))
    a = back.graph.nodes()[0].attrs
    assert a["np_int"] == 3 and type(a["np_int"]) is int
    assert type(a["np_f32"]) is float and a["f32"] == float(np.float32(0.1))
    assert a["b"] == bytes(range(256)) and a["surrogate"] == "\ud800"
    assert a["graph"].parent is back.graph.nodes()[0]
    assert back.graph.nodes()[0].inputs == (back.graph.inputs[0], None, back.graph.inputs[0])
    assert 'strings = dense<["a", "b", ' in text  # string tensors stay inline when resources are kept
    assert 'f8 = resource<"n.f8"> : f8e4m3fn[2]' in text  # float8 is never inline


def test_constants_inline_limit_and_resource_names():
    g = Graph()
    a = g.constant(np.arange(8, dtype=np.float32), "a")
    b = g.constant(np.arange(9, dtype=np.float32), "w")
    c = g.constant(np.arange(9, dtype=np.float32), "w")
    d = g.constant(np.arange(9, dtype=np.float32), "")
    e = g.constant(np.arange(9, dtype=np.float32), "r0")
    g.outputs += [a, b, c, d, e]
    res: dict = {}
    text = print_model(Model(g), res)
    assert sorted(res) == ["r0", "r0_1", "w", "w_1"]
    assert 'value = dense<[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]>} : f32[8]' in text
    assert '%0 = onnx.Constant() {value = resource<"r0">} : f32[9]' in text
    assert '%r0 = onnx.Constant() {value = resource<"r0_1">} : f32[9]' in text
    roundtrip(Model(g))
    # inline_limit is the caller's choice; without a dict the data is not kept (display)
    assert "resource" not in print_model(Model(g), {}, inline_limit=100)
    shown = print_model(Model(g))
    assert 'resource<"w_1">' in shown and "dense<[0.0, 1.0" in shown
    with pytest.raises(ParseError, match=r'^4:42: resource "w" has no data'):
        parse_model(shown)
    with pytest.raises(ParseError, match=r'^4:42: resource "w" is missing from the resources given'):
        parse_model(shown, {})
    with pytest.raises(ParseError, match=r'^4:42: resource "w" holds f32\[3\] but its type here is f32\[9\]'):
        parse_model(shown, {"w": np.zeros(3, np.float32)})


def test_constant_whose_type_differs_from_its_array_prints_the_type():
    g = Graph()
    g.add(CONSTANT, (), {"value": np.array([1, 2], np.int64)}, outputs=[TensorType(DType.I64, ("N",))],
          output_names=["c"])
    g.outputs.append(g.nodes()[0].output)
    text, _ = roundtrip(Model(g))
    assert "%c = onnx.Constant() {value = dense<[1, 2]> : i64[2]} : i64[N]" in text


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_floats_round_trip_exactly():
    vals = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, float("inf"), float("-inf"), float("nan"), 1e16, 123456.0]
    g = Graph()
    for dt in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16):
        with np.errstate(over="ignore", under="ignore"):
            arr = np.array(vals, dtype=np.float64).astype(dt)
        g.outputs.append(g.constant(arr, np.dtype(dt).name))
    odd_bits = np.array([0x7F81, 0xFFC0, 0x0001, 0x8000], np.uint16).view(ml_dtypes.bfloat16)  # sNaN, -NaN, tiny, -0
    g.outputs.append(g.constant(odd_bits, "odd"))
    roundtrip(Model(g))
    text = print_model(Model(g), {}, inline_limit=100)
    back = parse_model(text)
    for a, b in zip(g.nodes(), back.graph.nodes()):
        assert_same_array(a.attrs["value"], b.attrs["value"])
    assert "1.7976931348623157e+308, -0.0, inf, -inf, nan" in text
    assert "{value = dense<[nan, nan, 9.183549615799121e-41, -0.0]>} : bf16[4]" in text  # NaN payloads are not kept


def test_duplicate_empty_and_weird_names():
    g = Graph("g 1")
    hints = ["x", "x", "", "", "x_1", "a b", "7", "%", '"', "\\", "\u00e9", "return", "none", "_", "a.", "x_1"]
    vals = [g.add_input(TensorType(F32, (1,)), h) for h in hints[:4]]
    for h in hints[4:]:
        vals.append(g.add("onnx.Identity", [vals[-1]], outputs=[TensorType(F32, (1,))], output_names=[h]).output)
    g.outputs += [vals[0], vals[1], vals[2], vals[-1], vals[-1]]
    text, back = roundtrip(Model(g))
    assert text.splitlines()[1] == ('graph @"g 1"(%x: f32[1], %x_1: f32[1], %0: f32[1], %1: f32[1]) -> '
                                    '(%x: f32[1], %x: f32[1], f32[1], %x_1: f32[1], %x_1: f32[1]) {')
    assert '%x_1_2 = onnx.Identity(%1) : f32[1]' in text  # the output claimed x_1_1 first
    assert '%"a b" = onnx.Identity(%x_1_2)' in text
    assert '%"7" = ' in text and '%"%" = ' in text and '%"\\"" = ' in text and '%"\\\\" = ' in text
    assert '%"\\u00e9" = ' in text and "%return = " in text and "%none = " in text and "%a. = " in text
    assert "return %x, %x_1, %0, %x_1_1, %x_1_1" in text
    # export names of outputs survive (the second %x input is returned as "x", so it is "x" again)
    assert [v.name for v in back.graph.inputs] == ["x", "x", "", ""]
    assert [v.name for v in back.graph.outputs] == ["x", "x", "", "x_1", "x_1"]


def test_unique_hints_survive_exactly():
    g = Graph()
    x = g.add_input(TensorType(F32, (2,)), "in.0")
    names = ["conv1/Conv:0", "relu", "Z", "12", "a b c"]
    v = x
    for n in names:
        v = g.add("onnx.Relu", [v], outputs=[v.type], output_names=[n]).output
    g.outputs.append(v)
    _, back = roundtrip(Model(g))
    assert [n.outputs[0].name for n in back.graph] == names


def test_symbolic_unknown_and_nested_types():
    types = [TensorType(F32, ("N", 3, None)), TensorType(DType.I64, ()), TensorType(DType.STR, None),
             TensorType(F32, ("batch size", "", "?", "1", "N.x")), SequenceType(TensorType(DType.BF16, (2,))),
             OptionalType(SequenceType(UNKNOWN)), UNKNOWN, TensorType(DType.F8E5M2, (-1, 2**70))]
    g = Graph()
    for i, ty in enumerate(types):
        g.add_input(ty, f"v{i}")
        assert parse_type(print_type(ty)) == ty
    g.outputs += g.inputs
    text, _ = roundtrip(Model(g))
    assert '%v3: f32[batch size' not in text and '%v3: f32["batch size","","?","1",N.x]' in text
    assert print_type(types[0]) == str(types[0]) == "f32[N,3,?]"


def test_print_graph_and_print_node_name_values_like_the_module():
    m = parse_model(GOLDEN_CONTROL_FLOW)
    loop = m.graph.nodes()[2]
    body = loop.attrs["body"]
    text = print_graph(body)
    assert text.startswith("graph @body(%i: i64[], %c: bool[], %acc: f32[2]) -> "
                           "(%c_out: bool[], %acc_next: f32[2]) {\n")
    assert "%acc_next = onnx.Mul(%inner, %y) : f32[2]" in text
    assert print_node(body.nodes()[2]) == "%acc_next = onnx.Mul(%inner, %y) : f32[2]"
    assert print_node(loop) == ("%acc_out = onnx.Loop(%trip, none, %x) {body = graph @body(%i: i64[], %c: bool[], "
                                "%acc: f32[2]) -> (%c_out: bool[], %acc_next: f32[2]) { ... }} : f32[2]")
    free = Graph().add("onnx.Relu", [Value(TensorType(F32, (1,)), "q")], outputs=0)
    assert print_node(free) == "onnx.Relu(%q)"
    # broken IR still prints for messages; print_model refuses it
    bad = Graph().add("mdoc.bad", [], {"x": object(), "t": np.zeros(2, "M8[s]")}, outputs=[UNKNOWN])
    assert print_node(bad) == "%0 = mdoc.bad() {t = <unprintable ndarray>, x = <unprintable object>} : ?"
    assert "mdoc.bad() {t = <unprintable ndarray>" in print_graph(bad.graph)


# -- error messages -----------------------------------------------------------------

G = "graph @g(%x: f32[2]) -> (%out: f32[2]) {\n"
ERRORS = [
    (G + "  %y = onnx.Relu(%z) : f32[2]\n  return %y\n}",
     "2:18: undefined value %z (a value must be defined before its uses, in this graph or one around it)"),
    (G + "  %y = onnx.Relu(%x) : f32[3]\n  return %y\n}",
     "3:10: %y has type f32[3] but the graph declares this output as f32[2] at 1:26"),
    (G + "  %x = onnx.Relu(%x) : f32[2]\n  return %x\n}", "2:3: value %x is already defined at 1:10"),
    (G + "  %y = onnx.Relu(%x) {a = dense<[1]>} : f32[2]\n  return %y\n}",
     "2:27: dense<...> needs a type here: write dense<...> : T (only the value of an onnx.Constant may take "
     "its type from the result)"),
    (G + "  %y = onnx.Constant() {value = dense<[]>} : f32[0,N]\n  return %y\n}",
     "2:33: dense<...> takes its type from the result, which must be a tensor type with a static shape that "
     "numpy can hold, not f32[0,N]"),
    (G + "  %y = onnx.Constant() {value = dense<[]> : f32[0,99999999999,99999999999]} : f32[2]\n  return %y\n}",
     "2:45: the type of dense<...> must be a tensor type with a static shape that numpy can hold, not "
     "f32[0,99999999999,99999999999]"),
    (G + "  %y = onnx.Constant() {value = dense<[1]>} : f32[2]\n  return %y\n}",
     "2:39: dimension 0 of f32[2] has size 2 but this list has 1 element"),
    (G + "  %y = onnx.Constant() {value = dense<[1, 300]>} : u8[2]\n  return %y\n}",
     "2:43: 300 does not fit u8 (0 to 255)"),
    (G + "  %y = onnx.Constant() {value = dense<[1, 1e300]>} : f32[2]\n  return %y\n}",
     "2:43: 1e300 does not fit f32"),
    (G + "  %y = onnx.Constant() {value = dense<[true, 2]>} : f32[2]\n  return %y\n}",
     "2:40: expected a number for f32[2], found 'true'"),
    (G + "  %y = onnx.Constant() {value = dense<[[1], 2]>} : i64[2,1]\n  return %y\n}",
     "2:45: expected a list of 1 elements for dimension 1 of i64[2,1], found '2'"),
    (G + '  %y = onnx.Relu(%x) {s = "oops} : f32[2]\n  return %y\n}',
     "2:27: unterminated string (strings end with '\"' on the same line)"),
    (G + '  %y = onnx.Relu(%x) {s = "\\q"} : f32[2]\n  return %y\n}', "2:28: bad string literal: Invalid \\escape"),
    (G + "  %y = onnx.Relu(%x) {axis = 1, axis = 2} : f32[2]\n  return %y\n}",
     "2:33: attribute 'axis' is given twice"),
    (G + "  %y = onnx.Relu(%x) {axis = } : f32[2]\n  return %y\n}",
     "2:30: expected an attribute value (a number, \"string\", b\"bytes\", true, false, [list], dense<...>, "
     "resource<...>, type<...> or a graph), found '}'"),
    (G + "  %y = onnx.Relu(%x : f32[2]\n  return %y\n}", "2:21: expected ',' or ')' between operands, found ':'"),
    (G + "  %y = onnx.Relu(%x) : f32[2], f32[2]\n  return %y\n}",
     "2:30: onnx.Relu has 1 result, so it takes 1 type after ':'"),
    (G + "  onnx.Relu(%x) : f32[2]\n  return %x\n}", "2:17: onnx.Relu has no results, so it takes no ': type'"),
    (G + "  %y = onnx.Relu(%x) : f33[2]\n  return %y\n}",
     "2:24: expected a type such as f32[1,N], i64[*], seq<...>, opt<...> or ?, found 'f33'"),
    (G + "  %y = onnx.Relu(%x) : f32[2]\n}", "3:1: expected 'return' before the '}' that closes the graph, found '}'"),
    (G + "  %y = onnx.Relu(%x) : f32[2]\n  return %y, %y\n}", "3:3: graph @g declares 1 output but returns 2 values"),
    ("graph @g(%x: f32[2]) -> (%a: f32[2], %b: f32[2]) {\n  return %x, %x\n}",
     '1:38: %x is returned as "b" here but as "a" at 1:26; a value has one name (return an onnx.Identity of it '
     'for a second name)'),
    (G + "  %y = onnx.Relu(%x) : f32[2]\n  return %y\n} extra",
     "4:3: expected end of input after the graph, found 'extra'"),
    ("module {ir_version = 8, ir_version = 9}\n" + G + "  return %x\n}",
     "1:25: module field 'ir_version' is given twice"),
    ("module {opset = 8}\n" + G + "  return %x\n}",
     "1:9: unknown module field 'opset' (expected ir_version, opset_imports, producer_name, producer_version "
     "or metadata)"),
    ("module {ir_version = 8}", "1:24: expected 'graph', found end of input"),
    ("", "1:1: expected 'module' or 'graph', found end of input"),
    (G + "  %y = onnx.Relu(%x) $ : f32[2]\n  return %y\n}", "2:22: unexpected character '$'"),
    (G + "  % = onnx.Relu(%x)\n  return %y\n}",
     "2:3: expected a name after '%' (an identifier, digits or a quoted string)"),
    (G + "  %y = onnx.Relu(%x) {a = dense<[1]> : f32[N]} : f32[2]\n  return %y\n}",
     "2:40: the type of dense<...> must be a tensor type with a static shape that numpy can hold, not f32[N]"),
    (G + "  %y = onnx.Relu(%x) {a = dense<[1]> : f8e4m3fn[1]} : f32[2]\n  return %y\n}",
     "2:27: f8e4m3fn tensors cannot be written inline; use resource<\"name\">"),
    (G + "  %y = onnx.Relu(%x) {a = [dense<[1]>]} : f32[2]\n  return %y\n}",
     "2:38: expected ':' and the type of the dense<...> tensor, found ']'"),
    (G + "  %y = onnx.Relu(%x) {a = 1e999} : f32[2]\n  return %y\n}",
     "2:27: 1e999 is too large for a float (write inf for infinity)"),
    (G + '  %y = onnx.Relu(%x) {a = b"\\u1234"} : f32[2]\n  return %y\n}',
     "2:27: bad string literal: unknown escape '\\u' in bytes (use \\xNN)"),
    (G + "  return %x\n}\n" + "#" * 3, None),  # comments at the end are fine
]


@pytest.mark.parametrize("text,message", ERRORS)
def test_error_messages(text, message):
    if message is None:
        parse_model(text)
        return
    with pytest.raises(ParseError) as info:
        parse_model(text)
    assert str(info.value) == message
    line, col = (int(p) for p in message.split(":")[:2])
    assert 1 <= line <= text.count("\n") + 1 and col >= 1


def test_deep_nesting_is_a_parse_error_not_a_crash():
    with pytest.raises(ParseError, match=r"^2:\d+: (lists|the text is) nested"):
        parse_model(G + "  %y = onnx.Relu(%x) {a = " + "[" * 5000 + "]" * 5000 + "} : f32[2]\n  return %y\n}")
    with pytest.raises(ParseError, match="nested"):
        parse_type("seq<" * 3000 + "?" + ">" * 3000)


# -- .mdir files ---------------------------------------------------------------------

def test_save_and_load_mdir_keep_exotic_dtypes(tmp_path):
    g = Graph()
    arrays = {
        "bf16": np.linspace(-3, 3, 20).astype(ml_dtypes.bfloat16),
        "f8": np.array([0.5, -2, 448], dtype=ml_dtypes.float8_e4m3fn),
        "f8e5m2fnuz": np.array([0.5, -2], dtype=ml_dtypes.float8_e5m2fnuz),
        "i4": np.array([[-8, 7], [0, 1]], dtype=ml_dtypes.int4),
        "u4": np.array([0, 15, 3], dtype=ml_dtypes.uint4),
        "f4": np.array([0.5, -6], dtype=ml_dtypes.float4_e2m1fn),
        "i2": np.array([-2, 1], dtype=ml_dtypes.int2), "u2": np.array([3, 0], dtype=ml_dtypes.uint2),
        "f8e8m0": np.array([0.25, 1024], dtype=ml_dtypes.float8_e8m0fnu),
        "big": np.arange(1000, dtype=np.int64).reshape(10, 100),
        "empty_big": np.zeros((0, 50), np.float32),
        "c64": np.arange(10, dtype=np.complex64) * (1 + 1j),
        "words": np.array(["tok%d" % i for i in range(40)], dtype=object),
    }
    for name, arr in arrays.items():
        g.outputs.append(g.constant(arr, name))
    path = tmp_path / "m.mdir"
    save_mdir(Model(g), path)
    assert sorted(os.listdir(tmp_path)) == ["m.mdir", "m.mdir.npz"]
    text = path.read_text()
    assert 'resource<"f8">' in text and 'dense<["tok0", "tok1"' in text
    back = load_mdir(path)
    assert_same_model(Model(g), back)
    assert print_model(back, {}) == print_model(Model(g), {})
    # saving a model without resources removes the stale .npz; no temp files are left
    small = Graph()
    small.outputs.append(small.constant(np.array([1, 2]), "c"))
    save_mdir(Model(small), str(path))
    assert sorted(os.listdir(tmp_path)) == ["m.mdir"]
    assert_same_model(Model(small), load_mdir(path))


def test_load_mdir_errors(tmp_path):
    with pytest.raises(MdocError, match="no such file"):
        load_mdir(tmp_path / "missing.mdir")
    g = Graph()
    g.outputs.append(g.constant(np.zeros(20, np.float32), "w"))
    path = tmp_path / "m.mdir"
    save_mdir(Model(g), path)
    os.remove(str(path) + ".npz")
    with pytest.raises(ParseError, match=rf'^{re.escape(str(path))}:3:42: resource "w" has no data'):
        load_mdir(path)
    (tmp_path / "m.mdir.npz").write_bytes(b"not a zip")
    with pytest.raises(MdocError, match="not a valid mdoc resources file"):
        load_mdir(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(MdocError, match="not mdoc text"):
        load_mdir(path)


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.mdir"
    path.write_text("old")
    g = Graph()
    g.add("mdoc.bad", [], {"x": object()}, outputs=0)
    with pytest.raises(MdocError, match="cannot print attribute 'x' of mdoc.bad"):
        save_mdir(Model(g), path)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["m.mdir"]

    import mdoc.printer as printer

    def boom(*args, **kwargs):
        raise OSError("disk full")

    g2 = Graph()
    g2.outputs.append(g2.constant(np.zeros(20, np.float32), "w"))
    monkeypatch.setattr(printer.np, "savez", boom)
    with pytest.raises(MdocError, match="cannot write it: disk full"):
        save_mdir(Model(g2), path)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["m.mdir"]


# -- hypothesis: random graphs -------------------------------------------------------

NAMES = ["x", "x", "y", "", "", "", "x_1", "a b", "1", "12", "\u00e9", "%x", '"', "\\", "return", "none", "loc",
         "conv.weight", "_", "a.", "N", "\ud800"]
SYMBOLS = ["N", "batch", "seq len", "", "?", "*", "1", "inf", "a.b"]
OPS = ["onnx.Add", "onnx.Relu", "com.microsoft.FusedConv", "mdoc.conv2d_relu", "weird-op", "return", "loc",
       "from", "none", "Foo", "a..b", "", "onnx.Constant"]
ATTR_NAMES = ["axis", "alpha", "value", "then_branch", "a b", "", "kernel_shape", "type"]

dims = st.one_of(st.integers(0, 4), st.sampled_from(SYMBOLS), st.none())
tensor_types = st.builds(TensorType, st.sampled_from(list(DType)),
                         st.one_of(st.none(), st.lists(dims, max_size=3).map(tuple)))
types = st.recursive(st.one_of(st.just(UNKNOWN), tensor_types),
                     lambda inner: st.one_of(st.builds(SequenceType, inner), st.builds(OptionalType, inner)),
                     max_leaves=3)
names = st.sampled_from(NAMES)


@st.composite
def arrays(draw, max_numel: int = 12):
    dtype = draw(st.sampled_from(list(DType)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    n = int(np.prod(shape, dtype=np.int64))
    if n > max_numel:
        shape, n = (n % (max_numel + 1),), n % (max_numel + 1)
    npd = dtype.numpy
    if dtype is DType.STR:
        items = draw(st.lists(st.one_of(st.text(max_size=3), st.binary(max_size=3)), min_size=n, max_size=n))
        arr = np.empty(n, dtype=object)
        arr[:] = items
    elif dtype is DType.BOOL:
        arr = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    elif dtype in (DType.F16, DType.F32, DType.F64):
        width = {DType.F16: 16, DType.F32: 32, DType.F64: 64}[dtype]
        arr = np.array(draw(st.lists(st.floats(width=width), min_size=n, max_size=n)), dtype=npd)
    elif dtype in (DType.C64, DType.C128):
        arr = np.array(draw(st.lists(st.complex_numbers(width=64 if dtype is DType.C64 else 128),
                                     min_size=n, max_size=n)), dtype=npd)
    elif dtype in (DType.I4, DType.U4, DType.I2, DType.U2):
        lo, hi = {DType.I4: (-8, 7), DType.U4: (0, 15), DType.I2: (-2, 1), DType.U2: (0, 3)}[dtype]
        arr = np.array(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), dtype=np.int8).astype(npd)
    elif dtype is DType.F4E2M1:
        arr = np.array(draw(st.lists(st.sampled_from([0.0, -0.5, 1.5, 6.0]), min_size=n, max_size=n))).astype(npd)
    elif npd.kind in "iu":
        info = np.iinfo(npd)
        arr = np.array(draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n)), dtype=npd)
    else:  # bfloat16 and float8: any bit pattern (NaN payloads included)
        bits = draw(st.lists(st.integers(0, 2 ** (8 * npd.itemsize) - 1), min_size=n, max_size=n))
        arr = np.array(bits, dtype=np.uint16 if npd.itemsize == 2 else np.uint8).view(npd)
    return arr.reshape(shape)


scalar_attrs = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.text(max_size=4), st.binary(max_size=4),
    arrays(), types.map(lambda ty: type_to_onnx(ty) or onnx.TypeProto()))
attr_values = st.one_of(scalar_attrs, st.lists(scalar_attrs, max_size=3).map(tuple))


@st.composite
def graphs(draw, outer: tuple = (), depth: int = 0, name: str = "main"):
    g = Graph(name)
    avail: list[Value] = list(outer)
    for _ in range(draw(st.integers(0, 2))):
        avail.append(g.add_input(draw(types), draw(names)))
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["op", "op", "const", "if"] if depth < 2 else ["op", "const"]))
        if kind == "const":
            arr = draw(arrays(max_numel=12))
            if draw(st.booleans()):
                avail.append(g.constant(arr, draw(names)))
            else:
                node = g.add(CONSTANT, (), {"value": arr}, outputs=[draw(types)], output_names=[draw(names)])
                avail.append(node.output)
            continue
        attrs = draw(st.dictionaries(st.sampled_from(ATTR_NAMES), attr_values, max_size=3))
        if kind == "if":
            attrs["then_branch"] = draw(graphs(tuple(avail), depth + 1, "then"))
            attrs["else_branch"] = draw(graphs(tuple(avail), depth + 1, draw(names)))
            if draw(st.booleans()):
                attrs["branches"] = tuple(draw(st.lists(graphs(tuple(avail), depth + 1, "b"), max_size=2)))
        operands = draw(st.lists(st.one_of(st.none(), st.sampled_from(avail)) if avail else st.none(), max_size=3))
        node = g.add(draw(st.sampled_from(OPS)), operands, attrs, outputs=draw(st.lists(types, max_size=3)),
                     name=draw(names), output_names=draw(st.lists(names, max_size=3)), provenance=draw(names))
        avail.extend(node.outputs)
    if avail:
        g.outputs.extend(draw(st.lists(st.sampled_from(avail), max_size=3)))
    return g


models = st.builds(Model, graphs(), st.dictionaries(st.sampled_from(["", "com.microsoft", "a b"]),
                                                    st.integers(1, 30), max_size=2),
                   st.integers(1, 10), st.text(max_size=3), st.text(max_size=3),
                   st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))

FAST = settings(max_examples=100, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. casting signaling NaNs must not warn
@FAST
@given(models, st.integers(0, 16))
def test_random_models_round_trip(model, inline_limit):
    res: dict = {}
    text = print_model(model, res, inline_limit=inline_limit)
    back = parse_model(text, res)
    res2: dict = {}
    assert print_model(back, res2, inline_limit=inline_limit) == text
    assert res2.keys() == res.keys()
    assert_same_model(model, back)


# -- hypothesis: mutated text never crashes the parser --------------------------------

def _printed(model: Model) -> tuple[str, dict]:
    res: dict = {}
    return print_model(model, res, inline_limit=4), res


_CORPUS = st.one_of(st.sampled_from([(GOLDEN_CONV, GOLDEN_RESOURCES), (GOLDEN_CONTROL_FLOW, {}), (GOLDEN_NAMES, {}),
                                     (GOLDEN_ATTRS, GOLDEN_RESOURCES)]),
                    models.map(_printed))
_TOKEN = re.compile(r'%?"(?:[^"\\\n]|\\.)*"|[%@]?[A-Za-z0-9_.]+|->|\s+|.')
_INSERTS = list('%@"{}()[]<>,:=?*-#\\\n x1.eb') + ["\u00e9", "\x00", "none", "graph", "dense<", "%x", "%0", "-inf",
                                                  "nan", "f32[2]", "[[", "return", "loc(", "'"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(FAST, max_examples=250)
@given(_CORPUS, st.sampled_from(["del_char", "ins", "repl_char", "del_tok",
                                                                      "dup_tok", "swap_tok", "ins_tok"]),
       st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(_INSERTS))
def test_mutated_text_gives_parse_error_or_valid_model(source, how, i, j, ins):
    text, res = source
    toks = _TOKEN.findall(text)
    if how == "del_char":
        p = i % len(text)
        text = text[:p] + text[p + 1:]
    elif how == "ins":
        p = i % (len(text) + 1)
        text = text[:p] + ins + text[p:]
    elif how == "repl_char":
        p = i % len(text)
        text = text[:p] + ins + text[p + 1:]
    else:
        a, b = i % len(toks), j % len(toks)
        if how == "del_tok":
            del toks[a]
        elif how == "dup_tok":
            toks.insert(a, toks[a])
        elif how == "swap_tok":
            toks[a], toks[b] = toks[b], toks[a]
        else:
            toks.insert(a, toks[b])
        text = "".join(toks)
    try:
        model = parse_model(text, res)
    except ParseError as e:
        assert re.match(r"^\d+:\d+: \S", str(e)) and "\n" not in str(e)
        return
    out: dict = {}
    canonical = print_model(model, out)
    assert print_model(parse_model(canonical, out), {}) == canonical
