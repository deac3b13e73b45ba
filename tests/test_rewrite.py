"""The declarative rewrite engine: rules, matching, the driver, explain, tracing, and networkx analyses.

Rules are defined here, small, the way users write them; graphs are built with
Graph.add / Graph.constant, and numeric checks export both graphs and compare
them in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

from mdoc import analysis
from mdoc.errors import MdocError
from mdoc.ir import Graph, Model
from mdoc.onnx_export import export_model
from mdoc.pass_manager import PASSES, PassContext, PassManager, load_plugin, make_pass
from mdoc.reference import run_onnxruntime
from mdoc.rewrite import RULES, ApplyRules, Rule, apply_rules, explain, rewrite_rule, trace_rewrites
from mdoc.types import DType, TensorType
from mdoc.verifier import verify


def f32(*shape) -> TensorType:
    return TensorType(DType.F32, shape)


def const(g: Graph, array, name: str = ""):
    return g.constant(np.asarray(array, np.float32), name)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g]


def ort(model: Model, feeds: dict) -> dict:
    return run_onnxruntime(export_model(model), feeds)


# -- the rules under test ------------------------------------------------------------------
@rewrite_rule("t-mul-one")
class MulOne(Rule):
    """x * 1 ==> x (either operand order)."""

    commute = True

    def pattern(self, op, x):
        return op.Mul(x, op.constant(1))

    def rewrite(self, op, m):
        return m["x"]


@rewrite_rule("t-add-zero")
class AddZero(Rule):
    """x + 0 ==> x."""

    def pattern(self, op, x):
        return op.Add(x, 0, _commute=True)

    def rewrite(self, op, m):
        return m["x"]


@rewrite_rule("t-double-transpose", benefit=2)
class DoubleTranspose(Rule):
    """Transpose(Transpose(x)) ==> one Transpose with the composed permutation, or x."""

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, _name="inner"), _name="outer")

    def check(self, m):
        if "perm" not in m.attrs("inner") or "perm" not in m.attrs("outer"):
            return "a permutation is implicit (a reversal)"
        if len(m.attr("inner", "perm")) != len(m.attr("outer", "perm")):
            return "the permutations have different ranks"

    def rewrite(self, op, m):
        inner, outer = m.attr("inner", "perm"), m.attr("outer", "perm")
        perm = [inner[i] for i in outer]
        return m["x"] if perm == sorted(perm) else op.Transpose(m["x"], perm=perm)


@rewrite_rule("t-fuse-conv-bn", benefit=2)
class ConvBatchNorm(Rule):
    """Conv -> BatchNormalization  ==>  Conv with folded weights (inference)."""

    def pattern(self, op, x, w, b, scale, bias, mean, var):
        return op.BatchNormalization(op.Conv(x, w, op.optional(b), _name="conv"), scale, bias, mean, var, _name="bn")

    def check(self, m):
        return m.all_constant("w", "scale", "bias", "mean", "var", *(["b"] if m["b"] is not None else []))

    def rewrite(self, op, m):
        factor = m.const("scale") / np.sqrt(m.const("var") + m.attr("bn", "epsilon"))
        w2 = (m.const("w") * factor.reshape(-1, 1, 1, 1)).astype(np.float32)
        b = m.const("b") if m["b"] is not None else 0.0
        b2 = ((b - m.const("mean")) * factor + m.const("bias")).astype(np.float32)
        return op.Conv(m["x"], op.constant(w2), op.constant(b2), **m.attrs("conv"))


@rewrite_rule("t-add-self")
class AddSelf(Rule):
    """x + x ==> x * 2 (the variable is bound twice)."""

    def pattern(self, op, x):
        return op.Add(x, x)

    def rewrite(self, op, m):
        return op.Mul(m["x"], op.constant(np.array(2, m["x"].type.dtype.numpy)))


@rewrite_rule("t-split-concat")
class SplitConcat(Rule):
    """Concat(Split(x)) along the same axis ==> x (a two-result node)."""

    def pattern(self, op, x):
        a, b = op.Split(x, _outputs=2, _name="split")
        return op.Concat(a, b, _name="concat")

    def check(self, m):
        if len(m.node("split").outputs) != 2:
            return "the split has more than two parts"
        if m.attr("split", "axis") != m.attr("concat", "axis"):
            return "split and concat use different axes"

    def rewrite(self, op, m):
        return m["x"]


@rewrite_rule("t-swap-add")
class SwapAdd(Rule):
    """Add(x, y) ==> Add(y, x): never reaches a fixpoint (for the iteration bound)."""

    def pattern(self, op, x, y):
        return op.Add(x, y)

    def rewrite(self, op, m):
        return op.Add(m["y"], m["x"])


class Reroute(Rule):
    """Add(Neg(x), b) ==> Sub(b, x), and Neg(x) is rebuilt for its other users (a rerouted intermediate)."""

    def pattern(self, op, x, b):
        y = op.Neg(x, _name="neg")
        return op.Add(y, b, _name="add"), y

    def rewrite(self, op, m):
        return op.Sub(m["b"], m["x"]), op.Neg(m["x"])


class RerouteFromB(Reroute):
    """Like Reroute, but rebuilds Neg(x) as (b - b) - x, from b: a cycle when b depends on Neg(x)."""

    def rewrite(self, op, m):
        b = m["b"]
        return op.Sub(b, m["x"]), op.Sub(op.Sub(b, b), m["x"])


# -- simple algebra ------------------------------------------------------------------------
def test_mul_one_and_add_zero_in_either_order():
    g = Graph("g")
    x = g.add_input(f32(2, 3), "x")
    a = g.add("onnx.Mul", [const(g, 1.0), x], outputs=[f32(2, 3)], name="m1").output
    b = g.add("onnx.Add", [a, const(g, 0.0)], outputs=[f32(2, 3)], name="a1").output
    c = g.add("onnx.Add", [const(g, 0.0), b], outputs=[f32(2, 3)], name="a2").output
    y = g.add("onnx.Relu", [c], outputs=[f32(2, 3)], name="relu").output
    g.outputs.append(y)
    assert apply_rules(g, ["t-mul-one", "t-add-zero"]) == 3
    assert ops(g) == ["onnx.Relu"]  # the constants went with the nodes that used them
    assert g.nodes()[0].inputs == (x,)
    verify(Model(g))


def test_rule_without_commute_matches_one_order_only():
    class StrictMulOne(Rule):
        def pattern(self, op, x):
            return op.Mul(x, op.constant(1))

        def rewrite(self, op, m):
            return m["x"]

    g = Graph("g")
    x = g.add_input(f32(3), "x")
    y = g.add("onnx.Mul", [const(g, 1.0), x], outputs=[f32(3)], name="m").output
    g.outputs.append(y)
    assert apply_rules(g, [StrictMulOne]) == 0
    assert explain(g, StrictMulOne) == [
        "near miss at 'm' (onnx.Mul): 1/1 pattern ops matched; operand 1 of 'm' (onnx.Mul), %x, is not a constant; "
        "the pattern wants a constant equal to 1"]
    assert apply_rules(g, [MulOne]) == 1


def test_scalar_pattern_constant_matches_a_constant_of_ones_but_types_must_agree():
    g = Graph("g")
    x = g.add_input(f32(3), "x")
    y = g.add("onnx.Mul", [x, const(g, np.ones((2, 3)))], outputs=[f32(2, 3)], name="m").output
    g.outputs.append(y)
    assert apply_rules(g, ["t-mul-one"]) == 0  # x * ones(2, 3) broadcasts: x is not the same value
    assert explain(g, "t-mul-one") == [
        "near miss at 'm' (onnx.Mul): pattern matched; "
        "the replacement %x has type f32[3], but it replaces an unnamed value of type f32[2,3]"]


def test_a_variable_used_twice_binds_one_value():
    g = Graph("g")
    a = g.add_input(f32(4), "a")
    b = g.add_input(f32(4), "b")
    s1 = g.add("onnx.Add", [a, b], outputs=[f32(4)], name="ab").output
    s2 = g.add("onnx.Add", [a, a], outputs=[f32(4)], name="aa").output
    g.outputs += [s1, s2]
    model = Model(g)
    feeds = {"a": np.arange(4, dtype=np.float32), "b": np.ones(4, np.float32)}
    before = ort(model, feeds)
    assert apply_rules(g, ["t-add-self"]) == 1
    assert ops(g) == ["onnx.Add", "onnx.Constant", "onnx.Mul"]
    assert explain(g, "t-add-self") == [
        "near miss at 'ab' (onnx.Add): 1/1 pattern ops matched; "
        "operand 1 of 'ab' (onnx.Add) is %b, but variable 'x' is already %a"]
    after = ort(model, feeds)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_double_transpose_composes_permutations_to_a_fixpoint():
    g = Graph("g")
    x = g.add_input(f32(2, 3, 4), "x")
    v = x
    for i, perm in enumerate([(1, 0, 2), (0, 2, 1), (2, 1, 0)]):
        v = g.add("onnx.Transpose", [v], {"perm": perm}, name=f"t{i}").output
    g.outputs.append(v)
    model = Model(g)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    before = ort(model, feeds)
    assert apply_rules(g, ["t-double-transpose"]) == 2
    (node,) = g.nodes()
    assert node.op == "onnx.Transpose" and node.provenance == "t-double-transpose"
    np.testing.assert_array_equal(next(iter(ort(model, feeds).values())), next(iter(before.values())))

    # Two inverse permutations cancel to x itself.
    g2 = Graph("g2")
    x2 = g2.add_input(f32(2, 3, 4), "x")
    t = g2.add("onnx.Transpose", [x2], {"perm": (1, 2, 0)}).output
    t = g2.add("onnx.Transpose", [t], {"perm": (2, 0, 1)}).output
    g2.add("onnx.Relu", [t])
    g2.outputs.append(g2.nodes()[-1].output)
    assert apply_rules(g2, ["t-double-transpose"]) == 1
    assert ops(g2) == ["onnx.Relu"] and g2.nodes()[0].inputs == (x2,)


def test_check_reason_is_reported():
    g = Graph("g")
    x = g.add_input(f32(2, 3), "x")
    t = g.add("onnx.Transpose", [x], name="inner").output
    y = g.add("onnx.Transpose", [t], name="outer").output
    g.outputs.append(y)
    assert apply_rules(g, ["t-double-transpose"]) == 0
    assert explain(g, "t-double-transpose") == [
        "near miss at 'outer' (onnx.Transpose): pattern matched; check refused: a permutation is implicit "
        "(a reversal)",
        "near miss at 'inner' (onnx.Transpose): 1/2 pattern ops matched; operand 0 of 'inner' (onnx.Transpose) "
        "is graph input %x, the pattern wants onnx.Transpose 'inner'"]


# -- refusals: external uses, keep, cycles ---------------------------------------------
def _shared_transposes() -> tuple[Graph, object]:
    g = Graph("g")
    x = g.add_input(f32(2, 3), "x")
    t = g.add("onnx.Transpose", [x], {"perm": (1, 0)}, name="inner").output
    y = g.add("onnx.Transpose", [t], {"perm": (1, 0)}, name="outer").output
    z = g.add("onnx.Relu", [t], name="other").output
    g.outputs += [y, z]
    return g, x


def test_refuses_when_an_intermediate_has_outside_users():
    g, _ = _shared_transposes()
    assert apply_rules(g, ["t-double-transpose"]) == 0
    assert len(g) == 3
    assert explain(g, "t-double-transpose")[:1] == [
        "near miss at 'outer' (onnx.Transpose): pattern matched; result 0 of 'inner' (onnx.Transpose) is also "
        "used by 'other' (onnx.Relu), outside the match (a pattern op with _keep=True may be shared)"]


def test_keep_lets_a_shared_node_stay():
    class SharedDoubleTranspose(DoubleTranspose):
        def pattern(self, op, x):
            return op.Transpose(op.Transpose(x, _name="inner", _keep=True), _name="outer")

    g, x = _shared_transposes()
    assert apply_rules(g, [SharedDoubleTranspose]) == 1
    assert [n.name for n in g] == ["inner", "other"]
    assert g.outputs[0] is x
    verify(Model(g))


def test_rerouting_an_intermediate_reorders_its_earlier_users():
    g = Graph("g")
    x = g.add_input(f32(3), "x")
    x2 = g.add_input(f32(3), "x2")
    y = g.add("onnx.Neg", [x], name="neg").output
    c = g.add("onnx.Cos", [y], name="cos", output_names=["c"]).output  # uses y, before the root
    z = g.add("onnx.Exp", [x2], name="exp").output
    s = g.add("onnx.Add", [y, z], name="add", output_names=["s"]).output
    g.outputs += [s, c]
    model = Model(g)
    feeds = {"x": np.array([1, 2, 3], np.float32), "x2": np.array([0.5, 0, -1], np.float32)}
    before = ort(model, feeds)
    assert apply_rules(g, [Reroute]) == 1
    verify(model)
    assert [n.op for n in g] == ["onnx.Exp", "onnx.Sub", "onnx.Neg", "onnx.Cos"]
    after = ort(model, feeds)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-6)


def test_never_creates_a_cycle():
    g = Graph("g")
    x = g.add_input(f32(3), "x")
    y = g.add("onnx.Neg", [x], name="neg").output
    s = g.add("onnx.Sigmoid", [y], name="sig").output  # b = Sigmoid(Neg(x)) feeds the replacement of Neg(x)
    out = g.add("onnx.Add", [y, s], name="add").output
    g.outputs.append(out)
    assert apply_rules(g, [RerouteFromB]) == 0
    assert [n.name for n in g] == ["neg", "sig", "add"]
    (line,) = explain(g, RerouteFromB)
    assert line.startswith("near miss at 'add' (onnx.Add): pattern matched; rewriting would create a cycle "
                           "through 'sig' (onnx.Sigmoid)")
    assert apply_rules(g, [Reroute]) == 1  # rebuilding Neg(x) from x alone is fine
    verify(Model(g))


# -- the driver ------------------------------------------------------------------------------
def test_fixpoint_and_log_through_the_pass_context():
    @rewrite_rule("t-double-neg")
    class DoubleNeg(Rule):
        def pattern(self, op, x):
            return op.Neg(op.Neg(x))

        def rewrite(self, op, m):
            return m["x"]

    g = Graph("g")
    v = g.add_input(f32(2), "x")
    for i in range(5):
        v = g.add("onnx.Neg", [v], name=f"n{i}").output
    g.outputs.append(v)
    lines: list[str] = []
    assert apply_rules(g, ["t-double-neg"], PassContext(Model(g), lines.append)) == 2
    assert ops(g) == ["onnx.Neg"]
    assert lines == ["rule t-double-neg fired at node 'n1' (onnx.Neg)", "rule t-double-neg fired at node 'n3' (onnx.Neg)"]
    assert apply_rules(g, ["t-double-neg"]) == 0  # a second run changes nothing


def test_iteration_bound_names_the_rule_that_keeps_firing():
    g = Graph("g")
    a, b = g.add_input(f32(2), "a"), g.add_input(f32(2), "b")
    g.outputs.append(g.add("onnx.Add", [a, b], name="add").output)
    with pytest.raises(MdocError) as e:
        apply_rules(g, ["t-swap-add", "t-add-zero"], max_iterations=20)
    assert str(e.value) == ("rewrite rules did not reach a fixpoint after 20 rewrites: rule 't-swap-add' keeps "
                            "firing (next at 'add' (onnx.Add)); it may undo itself or another rule "
                            "(or raise max_iterations if the graph really needs more)")


def test_rules_run_in_benefit_order():
    class Neg1(Rule):
        def pattern(self, op, x):
            return op.Neg(x)

        def rewrite(self, op, m):
            return op.Abs(m["x"])

    class Neg2(Neg1):
        benefit = 5

        def rewrite(self, op, m):
            return op.Sigmoid(m["x"])

    g = Graph("g")
    x = g.add_input(f32(2), "x")
    g.outputs.append(g.add("onnx.Neg", [x], name="neg").output)
    assert apply_rules(g, [Neg1, Neg2]) == 1
    assert ops(g) == ["onnx.Sigmoid"] and g.nodes()[0].provenance == "Neg2"


def test_multi_result_nodes():
    g = Graph("g")
    x = g.add_input(f32(4, 2), "x")
    split = g.add("onnx.Split", [x], {"axis": 0}, outputs=2, name="split")
    a, b = split.outputs
    g.outputs.append(g.add("onnx.Concat", [b, a], {"axis": 0}, name="swapped").output)
    g.outputs.append(g.add("onnx.Concat", [a, b], {"axis": 0}, name="same").output)
    assert apply_rules(g, ["t-split-concat"]) == 0  # 'split' is shared by both concats
    lines = explain(g, "t-split-concat")
    assert lines[0].startswith("near miss at 'same' (onnx.Concat): pattern matched; result ")
    assert lines[1] == ("near miss at 'swapped' (onnx.Concat): 1/2 pattern ops matched; operand 0 of 'swapped' "
                        "(onnx.Concat) is result 1 of 'split' (onnx.Split), the pattern wants result 0")
    g.outputs.pop(0)
    g.erase(g.nodes()[1])
    assert apply_rules(g, ["t-split-concat"]) == 1
    assert len(g) == 0 and g.outputs == [x]


def test_conv_batchnorm_fold_matches_onnxruntime():
    rng = np.random.default_rng(0)
    g = Graph("conv_bn")
    x = g.add_input(f32(1, 3, 8, 8), "x")
    conv_attrs = {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1)}
    outs = []
    for i, with_bias in enumerate([True, False]):
        w = const(g, rng.standard_normal((4, 3, 3, 3)), f"w{i}")
        operands = [x, w] + ([const(g, rng.standard_normal(4), f"b{i}")] if with_bias else [])
        y = g.add("onnx.Conv", operands, conv_attrs, outputs=[f32(1, 4, 8, 8)], name=f"conv{i}").output
        bn = [const(g, rng.uniform(0.5, 2, 4)), const(g, rng.standard_normal(4)),
              const(g, rng.standard_normal(4)), const(g, rng.uniform(0.5, 2, 4))]
        attrs = {"epsilon": 1e-3} if i == 0 else {}  # the second uses ONNX's default epsilon
        outs.append(g.add("onnx.BatchNormalization", [y, *bn], attrs, outputs=[f32(1, 4, 8, 8)],
                          name=f"bn{i}").output)
    g.outputs += outs
    model = Model(g)
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    before = ort(model, feeds)
    with trace_rewrites(write=lambda line: None) as trace:
        assert apply_rules(g, ["t-fuse-conv-bn"], PassContext(model)) == 2
    assert trace.lines == ["rule t-fuse-conv-bn fired at node 'bn0' (onnx.BatchNormalization)",
                           "rule t-fuse-conv-bn fired at node 'bn1' (onnx.BatchNormalization)"]
    verify(model)
    convs = [n for n in g if n.op == "onnx.Conv"]
    assert ops(g).count("onnx.Constant") == 4 and len(convs) == 2 and "onnx.BatchNormalization" not in ops(g)
    assert all(n.provenance == "t-fuse-conv-bn" for n in g)
    assert [c.name for c in convs] == ["bn0", "bn1"] and convs[0].attrs == conv_attrs
    after = ort(model, feeds)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-4, atol=1e-5)


def test_nested_bodies_are_rewritten():
    g = Graph("g")
    cond = g.add_input(TensorType(DType.BOOL, ()), "cond")
    x = g.add_input(f32(2, 3), "x")
    then = Graph("then_body")
    then.outputs.append(then.add("onnx.Mul", [x, const(then, 1.0)], outputs=[f32(2, 3)], name="m_then").output)
    other = Graph("else_body")
    m = other.add("onnx.Mul", [const(other, 1.0), x], outputs=[f32(2, 3)], name="m_else").output
    other.outputs.append(other.add("onnx.Relu", [m], outputs=[f32(2, 3)], name="relu").output)
    y = g.add("onnx.If", [cond], {"then_branch": then, "else_branch": other}, outputs=[f32(2, 3)], name="if").output
    g.outputs.append(y)
    model = Model(g)
    feeds = {"x": np.arange(-3, 3, dtype=np.float32).reshape(2, 3)}
    before = [ort(model, {**feeds, "cond": np.array(c)}) for c in (True, False)]
    lines: list[str] = []
    assert apply_rules(g, ["t-mul-one"], PassContext(model, lines.append)) == 2
    assert lines == ["rule t-mul-one fired at node 'm_then' (onnx.Mul) in graph @then_body",
                     "rule t-mul-one fired at node 'm_else' (onnx.Mul) in graph @else_body"]
    assert len(then) == 0 and then.outputs == [x] and ops(other) == ["onnx.Relu"]
    verify(model)
    after = [ort(model, {**feeds, "cond": np.array(c)}) for c in (True, False)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(next(iter(a.values())), next(iter(b.values())))


# -- explain, tracing, registration, plugins -------------------------------------------------
def _near_misses() -> Graph:
    g = Graph("g")
    x = g.add_input(f32(1, 3, 4, 4), "x")
    wx = g.add_input(f32(4, 3, 1, 1), "wx")  # not a constant
    bn = [const(g, np.ones(4)) for _ in range(4)]
    r = g.add("onnx.Relu", [x], name="relu").output
    g.outputs.append(g.add("onnx.BatchNormalization", [r, *bn], name="bn_relu").output)
    c = g.add("onnx.Conv", [x, wx], name="conv_var").output
    g.outputs.append(g.add("onnx.BatchNormalization", [c, *bn], name="bn_var").output)
    return g


def test_explain_orders_near_misses_by_how_much_matched():
    g = _near_misses()
    assert explain(g, "t-fuse-conv-bn") == [
        "near miss at 'bn_var' (onnx.BatchNormalization): pattern matched; check refused: w is not constant",
        "near miss at 'bn_relu' (onnx.BatchNormalization): 1/2 pattern ops matched; operand 0 of 'bn_relu' "
        "(onnx.BatchNormalization) is 'relu' (onnx.Relu), the pattern wants onnx.Conv 'conv'",
    ]
    assert explain(g, "t-split-concat") == ["no node has op onnx.Concat, the root of the pattern"]


def test_trace_explains_named_rules_after_a_run():
    g = _near_misses()
    written: list[str] = []
    with trace_rewrites(write=written.append, explain=["t-fuse-conv-bn"]):
        assert apply_rules(g, ["t-fuse-conv-bn", "t-mul-one"]) == 0
    assert written == [f"rule t-fuse-conv-bn: {line}" for line in explain(g, "t-fuse-conv-bn")]


def test_duplicate_rule_names_are_an_error():
    with pytest.raises(MdocError) as e:
        @rewrite_rule("t-mul-one")
        class AnotherMulOne(MulOne):
            pass
    here = MulOne.__module__
    assert str(e.value) == (f"rewrite rule 't-mul-one' is registered twice: by {here}.MulOne and "
                            f"{here}.test_duplicate_rule_names_are_an_error.<locals>.AnotherMulOne")
    assert RULES["t-mul-one"] is MulOne


@pytest.mark.parametrize("body, message", [
    ("return op.Relu(x)", "variable 'y' is never used in the pattern"),
    ("return x", "pattern() must return the result(s) of an op (op.X(...)), got Var"),
    ("return op.Sub(x, y, _commute=True)", "pattern op onnx.Sub: _commute=True, but onnx.Sub is not commutative"),
    ("return op.Add(x, y, _nmae='a')", "pattern op onnx.Add: unknown builder keyword _nmae"),
    ("return op.relu(x, y)", "op.relu: ONNX op types are CamelCase (op.Relu)"),
    ("op.Neg(y); return op.Relu(x)", "pattern op onnx.Neg is not connected to what pattern() returns"),
    ("return op.Add(op.Neg(x, _name='a'), op.Neg(y, _name='a'))", "name 'a' is given twice in the pattern"),
])
def test_pattern_mistakes_fail_at_registration(body, message):
    namespace: dict = {"Rule": Rule}
    exec(f"class Bad(Rule):\n    def pattern(self, op, x, y):\n        {body}\n", namespace)
    with pytest.raises(MdocError) as e:
        rewrite_rule("t-bad")(namespace["Bad"])
    assert str(e.value).startswith("rule 't-bad': ") and message in str(e.value)
    assert "t-bad" not in RULES


def test_match_api():
    seen = {}

    class Probe(Rule):
        def pattern(self, op, x, w, scale, bias, mean, var):
            return op.BatchNormalization(op.Conv(x, w, _name="conv"), scale, bias, mean, var, _name="bn")

        def check(self, m):
            seen.update(eps=m.attr("bn", "epsilon"), momentum=m.attr("bn", "momentum"), single=m.has_single_use("conv"),
                        w=m.const("w"), x=m.const("x"), reason=m.all_constant("x", "w", "mean"),
                        nodes=[n.name for n in m.nodes], default=m.attr("conv", "group", 7))
            with pytest.raises(MdocError, match=r"'conv' names a node; use m.node\('conv'\)"):
                m["conv"]
            with pytest.raises(MdocError, match="the pattern names no node 'cnv'"):
                m.node("cnv")
            with pytest.raises(MdocError, match="has no attribute 'dilations' and ONNX gives it no default"):
                m.attr("conv", "dilations")
            return False

    g = _near_misses()
    assert apply_rules(g, [Probe]) == 0
    assert seen["eps"] == pytest.approx(1e-5) and seen["momentum"] == pytest.approx(0.9)
    assert seen["single"] is True and seen["w"] is None and seen["x"] is None
    assert seen["reason"] == "x, w are not constant"
    assert seen["nodes"] == ["conv_var", "bn_var"] and seen["default"] == 1
    assert "check refused: check returned False" in explain(g, Probe)[0]


def test_apply_rules_pass():
    p = ApplyRules(rules="t-mul-one;t-add-zero")
    assert PASSES["apply-rules"] is ApplyRules and p.spec() == "apply-rules{rules=t-mul-one;t-add-zero}"
    g = Graph("g")
    x = g.add_input(f32(2), "x")
    g.outputs.append(g.add("onnx.Mul", [x, const(g, 1.0)], name="m").output)
    assert p.run(g, PassContext(Model(g))) is True and len(g) == 0
    with pytest.raises(MdocError, match="pass 'apply-rules' needs rules=NAME;NAME"):
        ApplyRules().run(g, PassContext(Model(g)))
    with pytest.raises(MdocError, match="unknown rewrite rule 'no-such-rule'"):
        ApplyRules(rules="no-such-rule").run(g, PassContext(Model(g)))


PLUGIN = '''\
from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

@rewrite_rule("cancel-neg")
class CancelNeg(Rule):
    """Neg(Neg(x)) ==> x"""
    def pattern(self, op, x):
        return op.Neg(op.Neg(x))
    def rewrite(self, op, m):
        return m["x"]

@register_pass("cancel-negations")
class CancelNegations(RewritePass):
    """Remove pairs of negations."""
    rule_names = ("cancel-neg",)
'''


def test_a_plugin_file_brings_a_rule_and_a_pass(tmp_path, fresh_registries):
    assert len(PLUGIN.splitlines()) <= 15
    path = tmp_path / "cancel_neg.py"
    path.write_text(PLUGIN)
    load_plugin(path)
    assert "cancel-neg" in RULES
    g = Graph("g")
    v = g.add_input(f32(2), "x")
    for i in range(3):
        v = g.add("onnx.Neg", [v], name=f"n{i}").output
    g.outputs.append(v)
    (record,) = PassManager([make_pass("cancel-negations")]).run(Model(g))
    assert record.changed and ops(g) == ["onnx.Neg"] and g.nodes()[0].name == "n2"


# -- analyses --------------------------------------------------------------------------------
def test_networkx_views():
    g = Graph("g")
    x = g.add_input(f32(2), "x")
    a = g.add("onnx.Neg", [x], name="a")
    b = g.add("onnx.Relu", [a.output], name="b")
    c = g.add("onnx.Sigmoid", [a.output], name="c")
    d = g.add("onnx.Add", [b.output, c.output], name="d")
    body = Graph("body")
    body.outputs.append(body.add("onnx.Abs", [d.output], name="inner").output)  # captures d
    cond = g.add_input(TensorType(DType.BOOL, ()), "cond")
    e = g.add("onnx.If", [cond], {"then_branch": body, "else_branch": body}, name="e")
    dfg = analysis.dataflow_graph(g)
    assert set(dfg.edges) == {(a, b), (a, c), (b, d), (c, d), (d, e)}
    assert analysis.reachable(g, a, e) and not analysis.reachable(g, b, c)
    assert analysis.dominators(g) == {a: None, b: a, c: a, d: a, e: d}
    assert analysis.would_create_cycle(g, [(d, b)]) == [b, d]
    assert analysis.would_create_cycle(g, [(b, c)]) is None
    assert analysis.would_create_cycle(g, [(d, b)], removed=[d]) is None
    g.move_before(b, c)  # c, b are independent: the order stays as it is
    assert analysis.topological_order(g) == [a, c, b, d, e]
    g.move_before(a, e)
    assert analysis.topological_order(g) == [a, c, b, d, e]


def test_domains_other_inputs_and_attribute_defaults():
    class Twice(Rule):
        """com.example.Twice(x) ==> x + x"""

        def pattern(self, op, x):
            return op.domain("com.example").Twice(x)

        def rewrite(self, op, m):
            return op.Add(m["x"], m["x"])

    class GemmNoTranspose(Rule):
        """Gemm(a, b, ...) without transposes ==> com.example.PlainGemm(a, b, ...) keeping the other operands."""

        def pattern(self, op, a, b):
            return op.Gemm(a, b, transA=0, transB=0, alpha=lambda v: v == 1.0, _allow_other_inputs=True, _name="gemm")

        def rewrite(self, op, m):
            return op.domain("com.example").PlainGemm(*m.node("gemm").inputs)

    g = Graph("g")
    x = g.add_input(f32(2, 2), "x")
    t = g.add("com.example.Twice", [x], name="twice").output
    c = const(g, np.ones(2))
    g1 = g.add("onnx.Gemm", [t, x, c], name="g1").output  # transA/transB/alpha absent: ONNX defaults
    g2 = g.add("onnx.Gemm", [g1, x], {"transB": 1}, name="g2").output
    g.outputs.append(g2)
    assert apply_rules(g, [Twice, GemmNoTranspose]) == 2
    assert [n.op for n in g] == ["onnx.Add", "onnx.Constant", "com.example.PlainGemm", "onnx.Gemm"]
    assert g.nodes()[2].inputs == (g.nodes()[0].output, x, c)
    assert explain(g, GemmNoTranspose) == [
        "near miss at 'g2' (onnx.Gemm): 0/1 pattern ops matched; 'g2' (onnx.Gemm) has transB=1, "
        "the pattern wants transB=0"]


def test_a_failing_rule_says_where_it_failed():
    class Broken(Rule):
        def pattern(self, op, x):
            return op.Neg(x)

        def rewrite(self, op, m):
            return op.Abs(m["x"]) + 1  # a typo that Python catches

    g = Graph("g")
    g.outputs.append(g.add("onnx.Neg", [g.add_input(f32(2), "x")], name="neg").output)
    with pytest.raises(TypeError) as e:
        apply_rules(g, [Broken])
    assert "while running rewrite() of rewrite rule 'Broken' at 'neg' (onnx.Neg)" in getattr(e.value, "__notes__", [""])
    with pytest.raises(MdocError, match="give a numpy array, or a dtype"):
        Broken.rewrite = lambda self, op, m: op.constant(1.0)
        apply_rules(g, [Broken])


class _NegOfRectifier(Rule):
    """Neg(Relu(x) or Tanh(x)) ==> the same op of Neg(x) (for testing op alternatives only)."""

    def pattern(self, op, x):
        return op.Neg(op.call(("onnx.Relu", "onnx.Tanh"), x, _name="act"))

    def rewrite(self, op, m):
        return op.call(m.node("act").op, op.Neg(m["x"]))


def test_a_pattern_op_may_be_any_of_several():
    g = Graph("g")
    x = g.add_input(f32(2, 3), "x")
    a = g.add("onnx.Neg", [g.add("onnx.Relu", [x]).output]).output
    b = g.add("onnx.Neg", [g.add("onnx.Tanh", [x]).output]).output
    c = g.add("onnx.Neg", [g.add("onnx.Sigmoid", [x]).output]).output
    g.outputs.extend([a, b, c])
    model = Model(g, {"": 17})
    assert apply_rules(g, [_NegOfRectifier()], PassContext(model)) == 2
    assert ops(g) == ["onnx.Neg", "onnx.Relu", "onnx.Neg", "onnx.Tanh", "onnx.Sigmoid", "onnx.Neg"]
    verify(model)
    lines = explain(g, _NegOfRectifier(), model)
    assert any("onnx.Sigmoid" in line and "onnx.Relu|onnx.Tanh" in line for line in lines), lines
