"""Helpers for the cleanup passes' tests: golden IR text, the two properties, numerics against onnxruntime.

Golden tests read like the IR they check: a `before` graph in mdoc's text form,
the pipeline, and the `expected` text; both sides are printed by the printer so
the comparison ignores spacing and the module header's defaults.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from hypothesis import strategies as st

from mdoc.ir import Model
from mdoc.onnx_export import export_model
from mdoc.parser import parse_model
from mdoc.pass_manager import PassManager, parse_pipeline
from mdoc.printer import print_model
from mdoc.reference import compare_outputs, run_onnxruntime
from mdoc.tensors import random_inputs


def text_of(model: Model) -> str:
    return print_model(model, {}, inline_limit=64)


def apply(model: Model | str, pipeline: str) -> tuple[Model, bool]:
    """Run `pipeline` (verifying after each pass); return the model and whether any pass said it changed."""
    if isinstance(model, str):
        model = parse_model(model)
    records = PassManager(parse_pipeline(pipeline)).run(model)
    return model, any(r.changed for r in records)


def assert_golden(pipeline: str, before: str, expected: str, changed: bool = True) -> Model:
    model, did = apply(before, pipeline)
    got, want = text_of(model), text_of(parse_model(expected))
    assert got == want, f"after {pipeline}:\n{got}\nexpected:\n{want}"
    assert did is changed, f"{pipeline} reported changed={did}"
    return model


def copies_of(build: Callable[[], Model]) -> Callable[[], Model]:
    """A maker of fresh, equal copies of the model `build()` returns (built once, copied through the text form)."""
    made: list[Model] = []

    def make() -> Model:
        if not made:
            made.append(build())
        return parse_model(print_model(made[0], {}, inline_limit=10**6))

    return make


def drawer(data) -> Callable:
    """`draw(options)` for `random_model`: hypothesis picks one of `options`."""
    return lambda options: data.draw(st.sampled_from(list(options)))


def assert_properties(make_model, pipeline: str) -> tuple[Model, Model]:
    """Running the pass twice equals running it once, and its changed flag is honest both times."""
    original = make_model()
    model = make_model()
    before = text_of(model)
    _, changed = apply(model, pipeline)
    once = text_of(model)
    assert changed == (once != before), f"{pipeline}: changed={changed} but the IR {'did' if once != before else 'did not'} change"
    _, again = apply(model, pipeline)
    twice = text_of(model)
    assert twice == once, f"{pipeline} is not idempotent:\n{once}\n---\n{twice}"
    assert again is False, f"{pipeline} reported a change on its own output"
    return original, model


def assert_same_outputs(before: Model | onnx.ModelProto, after: Model, feeds: dict | None = None,
                        rtol: float = 1e-4) -> None:
    """Export both, run both with onnxruntime on the same (random) inputs, compare every output."""
    a = before if isinstance(before, onnx.ModelProto) else export_model(before)
    b = export_model(after)
    onnx.checker.check_model(b, full_check=True)
    if feeds is None:
        feeds = random_inputs(after, dims=_dims(after))
    want, got = run_onnxruntime(a, feeds), run_onnxruntime(b, feeds)
    bad = [d for d in compare_outputs(want, got, rtol=rtol) if not d.ok]
    assert not bad, f"outputs differ: {bad}"


def _dims(model: Model) -> dict[str, int]:
    """Symbolic dims as 3 (not 1), so a rewrite that mistakes a dim for 1 shows."""
    dims = {}
    for v in model.graph.inputs:
        for d in getattr(v.type, "shape", None) or ():
            if isinstance(d, str):
                dims[d] = 3
    return dims


def array(x, dtype=np.float32) -> np.ndarray:
    return np.asarray(x, dtype=dtype)


# -- random graphs for the property tests --------------------------------------------
def random_model(draw, steps: int = 8) -> Model:
    """A small random graph over x: f32[2,3] mixing everything the cleanup passes look at.

    `draw(options)` picks one element of a list (a hypothesis `data.draw(sampled_from(...))`),
    so hypothesis can shrink a failing graph to the few steps that matter.
    """
    from mdoc.ir import Graph
    from mdoc.types import DType, TensorType

    g = Graph("random")
    x = g.add_input(TensorType(DType.F32, (2, 3)), "x")
    pool: list[tuple] = [(x, (2, 3))]  # (value, static shape) of every f32 value so far
    rng = np.random.default_rng(draw(list(range(4))))

    def const(a, dtype=np.float32):
        return g.constant(np.asarray(a, dtype=dtype))

    def add(op, inputs, attrs=None, n=1):
        return g.add(op, inputs, attrs or {}, outputs=n)

    last = None
    for _ in range(steps):
        v, shape = draw(pool)
        kind = draw(["arith", "unary", "transpose", "reshape", "unsqueeze", "cast", "shape-chain",
                     "const-chain", "repeat", "expand", "dropout", "slice", "pad", "concat"])
        out = None
        if kind == "arith":
            op = draw(["onnx.Add", "onnx.Sub", "onnx.Mul", "onnx.Div"])
            cshape = draw([(), (shape[-1],), (1,) + tuple(shape[-1:]), tuple(shape), (1,) * (len(shape) + 1)])
            fill = draw(["neutral", "random"])
            neutral = 0.0 if op in ("onnx.Add", "onnx.Sub") else 1.0
            c = const(np.full(cshape, neutral) if fill == "neutral" else rng.uniform(0.5, 2.0, cshape))
            operands = [v, c] if op in ("onnx.Sub", "onnx.Div") or draw([True, False]) else [c, v]
            out = add(op, operands).output
            shape = tuple(np.broadcast_shapes(shape, cshape))
        elif kind == "unary":
            out = add(draw(["onnx.Relu", "onnx.Neg", "onnx.Identity", "onnx.Abs"]), [v]).output
        elif kind == "transpose" and len(shape) >= 2:
            perm = list(range(len(shape)))
            i, j = draw([(0, 1), (len(shape) - 2, len(shape) - 1), (0, len(shape) - 1)])
            perm[i], perm[j] = perm[j], perm[i]
            if draw([True, False]):
                perm = list(range(len(shape)))
            out = add("onnx.Transpose", [v], {"perm": tuple(perm)}).output
            shape = tuple(shape[p] for p in perm)
        elif kind == "reshape":
            n = int(np.prod(shape))
            target = draw([(n,), (1, n), (n, 1), tuple(shape), (-1,), (0,) + (-1,) if len(shape) >= 1 else (-1,)])
            resolved = [shape[i] if d == 0 else d for i, d in enumerate(target)]
            if -1 in resolved:
                k = resolved.index(-1)
                resolved[k] = n // max(1, int(np.prod([d for d in resolved if d != -1])))
            out = add("onnx.Reshape", [v, const(target, np.int64)]).output
            shape = tuple(resolved)
        elif kind == "unsqueeze":
            axis = draw([0, -1])
            out = add("onnx.Unsqueeze", [v, const([axis], np.int64)]).output
            shape = (1,) + shape if axis == 0 else shape + (1,)
            if draw([True, False]):
                out = add(draw(["onnx.Squeeze", "onnx.Unsqueeze"]), [out, const([axis], np.int64)]).output
                shape = (shape[1:] if axis == 0 else shape[:-1]) if out.producer().op == "onnx.Squeeze" else \
                    ((1,) + shape if axis == 0 else shape + (1,))
        elif kind == "cast":
            to = draw([DType.F32, DType.F64])
            out = add("onnx.Cast", [v], {"to": to.value}).output
            if to is DType.F64:
                out = add("onnx.Cast", [out], {"to": DType.F32.value}).output
        elif kind == "shape-chain":
            s = add("onnx.Shape", [v]).output
            first = add("onnx.Gather", [s, const(0, np.int64)], {"axis": 0}).output
            dim = add("onnx.Unsqueeze", [first, const([0], np.int64)]).output
            target = add("onnx.Concat", [dim, const([-1], np.int64)], {"axis": 0}).output
            out = add("onnx.Reshape", [v, target]).output
            shape = (shape[0], int(np.prod(shape[1:])))
        elif kind == "const-chain":
            a = const(rng.uniform(0.5, 2.0, shape[-1:]))
            b = add(draw(["onnx.Add", "onnx.Mul"]), [a, const(rng.uniform(0.5, 2.0, shape[-1:]))]).output
            b = add("onnx.Sqrt", [b]).output
            out = add("onnx.Mul", [v, b]).output
        elif kind == "repeat" and last is not None:
            node = last.producer()
            out = add(node.op, node.inputs, dict(node.attrs), n=len(node.outputs)).outputs[0]
            shape = _shape_of(pool, last)
        elif kind == "expand":
            target = draw([shape, (2,) + shape])
            out = add("onnx.Expand", [v, const(target, np.int64)]).output
            shape = tuple(target)
        elif kind == "dropout":
            out = add("onnx.Dropout", [v], n=draw([1, 2])).outputs[0]
        elif kind == "slice":
            end = draw([shape[0], 2**63 - 1, max(shape[0] - 1, 1)])
            out = add("onnx.Slice", [v, const([0], np.int64), const([end], np.int64), const([0], np.int64)]).output
            shape = (min(end, shape[0]),) + shape[1:]
        elif kind == "pad":
            pads = draw([[0] * (2 * len(shape)), [0] * (2 * len(shape) - 1) + [1]])
            out = add("onnx.Pad", [v, const(pads, np.int64)]).output
            shape = shape[:-1] + (shape[-1] + pads[-1],)
        elif kind == "concat":
            operands = draw([[v], [v, v]])
            out = add("onnx.Concat", operands, {"axis": 0}).output
            shape = (shape[0] * len(operands),) + shape[1:]
        if out is not None:
            pool.append((out, tuple(int(d) for d in shape)))
            last = out
    g.outputs.append(pool[-1][0])
    extra = draw(pool)[0]
    if all(extra is not o for o in g.outputs) and draw([True, False]):
        g.outputs.append(extra)
    for i, o in enumerate(g.outputs):
        if not o.name:
            o.name = f"out{i}"
    model = Model(g, {"": 17})
    apply(model, "infer-shapes")
    return model


def _shape_of(pool, value):
    return next(s for v, s in pool if v is value)
