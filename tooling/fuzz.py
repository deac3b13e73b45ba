"""Fuzzing mdoc: mutations of the files users hand it, and random valid graphs for a differential check.

Two halves, shared by the bounded campaign in CI (`tests/test_fuzz_inputs.py`,
`tests/test_fuzz_differential.py`) and the long one (`benchmarks/fuzz_campaign.py`):

* `mutate_onnx`, `mutate_bytes`, `mutate_json`: turn a valid ONNX model, any file's bytes
  or a JSON document (an artifact's manifest) into a hostile one, from a seeded
  `random.Random`, so every case is reproducible from its seed. Field-level ONNX
  mutations reach the importer, verifier and passes; byte-level ones reach protobuf.
* `random_graph`: a small valid ONNX model (elementwise, broadcasting binaries, MatMul,
  Conv, reductions, Reshape/Transpose chains, Softmax, Concat) with random static
  shapes, for comparing mdoc's compiled outputs with onnxruntime's. A mismatch is a
  bug of mdoc's.

`run_cli` drives the `mdoc` command in this process and returns its exit status
and output, for the property every campaign asserts: exit 0, 1 or 2, and exit 2 is
exactly one `mdoc: error:` line; never a traceback, never exit 3.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

# -- driving the CLI ----------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def problem(self) -> str | None:
        """Why this result breaks the rule for bad input, or None."""
        if self.code == 2:
            lines = self.err.strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("mdoc: error: "):
                return f"exit 2 without exactly one 'mdoc: error:' line: {self.err!r}"
            return None
        if self.code in (0, 1):
            return "a traceback was printed" if "Traceback" in self.err else None
        return f"exit {self.code}: {self.err.strip()[-500:]!r}"


def run_cli(*args) -> CliResult:
    """`mdoc ARGS...` in this process, through the real entry point (error handling included)."""
    from mdoc.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


# -- mutations ----------------------------------------------------------------------

_OPS = ["Relu", "Add", "MatMul", "Conv", "Reshape", "Transpose", "If", "Loop", "Scan", "Gather", "Concat",
        "Split", "Slice", "Cast", "Constant", "Identity", "ReduceSum", "Softmax", "LSTM", "Resize", "Pad",
        "TopK", "NonZero", "Expand", "Tile", "ConstantOfShape", "Range", "Einsum", "Frobnicate", ""]
_INTS = [0, 1, -1, 2, 3, 7, -(2**31), 2**31 - 1, 2**63 - 1, -(2**63), 2**40, 255]


def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for n in _all_nodes(model.graph):
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t


def _names(model: onnx.ModelProto) -> list[str]:
    names = [i.name for i in model.graph.input] + [t.name for t in model.graph.initializer]
    for n in _all_nodes(model.graph):
        names += list(n.input) + list(n.output)
    return [n for n in names if n] or ["x"]


def _mutate_once(m: onnx.ModelProto, rng: random.Random) -> None:
    nodes = list(_all_nodes(m.graph))
    tensors = list(_all_tensors(m))
    values = list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
    kind = rng.choice(["op", "drop_input", "add_input", "rename_output", "attr_int", "attr_kind", "drop_attr",
                       "dims", "dtype", "raw", "elem_type", "dim", "opset", "ir", "dup_node", "drop_node",
                       "swap_nodes", "drop_output", "domain"])
    if kind in ("op", "drop_input", "add_input", "rename_output", "attr_int", "attr_kind", "drop_attr",
                "dup_node", "drop_node", "domain") and not nodes:
        kind = "opset"
    if kind == "op":
        rng.choice(nodes).op_type = rng.choice(_OPS)
    elif kind == "drop_input":
        n = rng.choice(nodes)
        if n.input:
            del n.input[rng.randrange(len(n.input))]
    elif kind == "add_input":
        rng.choice(nodes).input.insert(0, rng.choice(_names(m) + ["", "nowhere"]))
    elif kind == "rename_output":
        n = rng.choice(nodes)
        if n.output:
            n.output[rng.randrange(len(n.output))] = rng.choice(_names(m) + [""])
    elif kind in ("attr_int", "attr_kind", "drop_attr"):
        n = rng.choice(nodes)
        if not n.attribute:
            n.attribute.append(helper.make_attribute(rng.choice(["axis", "perm", "kernel_shape", "to"]), rng.choice(_INTS)))
            return
        a = n.attribute[rng.randrange(len(n.attribute))]
        if kind == "drop_attr":
            n.attribute.remove(a)
        elif kind == "attr_int":
            if a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice(_INTS)
            else:
                a.i = rng.choice(_INTS)
        else:
            name = a.name
            n.attribute.remove(a)
            n.attribute.append(helper.make_attribute(name, rng.choice([1.5, "s", [1, 2], [0.5], rng.choice(_INTS)])))
    elif kind == "dims" and tensors:
        t = rng.choice(tensors)
        if t.dims and rng.random() < 0.7:
            t.dims[rng.randrange(len(t.dims))] = rng.choice(_INTS)
        else:
            t.dims.append(rng.choice([0, 1, 2, 3]))
    elif kind == "dtype" and tensors:
        rng.choice(tensors).data_type = rng.randrange(0, 30)
    elif kind == "raw" and tensors:
        t = rng.choice(tensors)
        if t.raw_data:
            t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data) + 1)]
        else:
            t.raw_data = bytes(rng.randrange(9))
    elif kind == "elem_type" and values:
        values[rng.randrange(len(values))].type.tensor_type.elem_type = rng.randrange(0, 30)
    elif kind == "dim" and values:
        dims = values[rng.randrange(len(values))].type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            if rng.random() < 0.5:
                d.dim_value = rng.choice([0, 1, 5, 2**40 + 1, 10**6])
            else:
                d.dim_param = rng.choice(["N", "", "?", "a b"])
    elif kind == "opset":
        m.opset_import[0].version = rng.choice([1, 6, 7, 11, 13, 17, 18, 21, 99])
    elif kind == "ir":
        m.ir_version = rng.choice([0, 1, 3, 7, 11, 99])
    elif kind == "dup_node":
        m.graph.node.append(copy.deepcopy(rng.choice(list(m.graph.node) or nodes)))
    elif kind == "drop_node" and m.graph.node:
        del m.graph.node[rng.randrange(len(m.graph.node))]
    elif kind == "swap_nodes" and len(m.graph.node) > 1:
        i, j = rng.sample(range(len(m.graph.node)), 2)
        a, b = copy.deepcopy(m.graph.node[i]), copy.deepcopy(m.graph.node[j])
        m.graph.node[i].CopyFrom(b)
        m.graph.node[j].CopyFrom(a)
    elif kind == "drop_output" and m.graph.output:
        del m.graph.output[rng.randrange(len(m.graph.output))]
    elif kind == "domain":
        rng.choice(nodes).domain = rng.choice(["", "com.microsoft", "ai.onnx", "mdoc", "x"])


def mutate_onnx(model: onnx.ModelProto, rng: random.Random, edits: int | None = None) -> onnx.ModelProto:
    """A copy of `model` with 1 to 3 field-level edits (ops, operands, attributes, tensors, types, opsets)."""
    m = copy.deepcopy(model)
    for _ in range(edits or rng.randint(1, 3)):
        _mutate_once(m, rng)
    return m


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """`data` truncated, with bytes flipped, inserted, deleted or a span repeated."""
    data = bytearray(data)
    kind = rng.choice(["truncate", "flip", "insert", "delete", "repeat", "zero"])
    p = rng.randrange(len(data) + 1) if data else 0
    if kind == "truncate":
        del data[p:]
    elif kind == "flip" and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        data[p:p] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "delete":
        del data[p:p + rng.randint(1, 64)]
    elif kind == "repeat":
        data[p:p] = data[p:p + rng.randint(1, 256)] * rng.randint(1, 4)
    else:
        data[p:p + rng.randint(1, 64)] = bytes(len(data[p:p + 64]))
    return bytes(data)


_JSON_VALUES = [None, True, 0, -1, 2**63, 1.5, "", "x", "float32", "../model.so", [], {}, [1, "N", None], "0" * 64]


def mutate_artifact(folder, rng: random.Random) -> str:
    """Mutate a copied artifact folder in place: its manifest (as JSON, twice as likely, or as bytes)
    or its library; returns which."""
    manifest, library = folder / "manifest.json", folder / "model.so"
    what = rng.choice(["manifest", "manifest", "manifest bytes", "library"])
    if what == "manifest":
        manifest.write_text(json.dumps(mutate_json(json.loads(manifest.read_text()), rng)))
    elif what == "manifest bytes":
        manifest.write_bytes(mutate_bytes(manifest.read_bytes(), rng))
    else:
        library.write_bytes(mutate_bytes(library.read_bytes(), rng))
    return what


def mutate_json(doc, rng: random.Random):
    """A copy of a JSON document with one value replaced, a key dropped or added, or a list cut."""
    doc = copy.deepcopy(doc)
    paths: list[tuple[object, object]] = []

    def walk(node):
        if isinstance(node, dict):
            for k in list(node):
                paths.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for k in range(len(node)):
                paths.append((node, k))
                walk(node[k])

    walk(doc)
    if not paths:
        return rng.choice(_JSON_VALUES)
    parent, key = rng.choice(paths)
    kind = rng.choice(["replace", "drop", "add", "cut"])
    if kind == "replace":
        parent[key] = rng.choice(_JSON_VALUES)
    elif kind == "drop":
        del parent[key]
    elif kind == "add" and isinstance(parent, dict):
        parent[rng.choice(["extra", "files", "inputs", "param"])] = rng.choice(_JSON_VALUES)
    elif isinstance(parent[key], list):
        del parent[key][rng.randrange(len(parent[key]) + 1):]
    return doc


def mutate_npz(arrays: dict[str, np.ndarray], rng: random.Random) -> dict[str, np.ndarray]:
    """Inputs with a name, dtype, shape or value changed, an input dropped or one added."""
    arrays = dict(arrays)
    name = rng.choice(list(arrays))
    kind = rng.choice(["rename", "dtype", "shape", "drop", "add", "nan", "scalar"])
    if kind == "rename":
        arrays[rng.choice(["y", "", "X", "x "])] = arrays.pop(name)
    elif kind == "dtype":
        arrays[name] = arrays[name].astype(rng.choice([np.float64, np.int64, np.bool_, np.float16, np.uint8, np.complex64]))
    elif kind == "shape":
        arrays[name] = np.zeros(rng.choice([(0, 4), (1, 5), (4,), (2, 2, 4), (3, 4)]), arrays[name].dtype)
    elif kind == "drop":
        del arrays[name]
    elif kind == "add":
        arrays["extra"] = np.zeros(3, np.float32)
    elif kind == "nan":
        arrays[name] = np.full_like(arrays[name], rng.choice([np.nan, np.inf, -np.inf, 1e38]))
    else:
        arrays[name] = np.float32(1.0)
    return arrays


# -- random valid graphs (the differential fuzzer) -----------------------------------

_UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Softsign", "LeakyRelu", "Erf"]
_BINARY = ["Add", "Sub", "Mul", "Max", "Min", "Div"]
_REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"]


class _Builder:
    """Grows a graph one op at a time over float32 values of known static shape."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.values: list[tuple[str, tuple[int, ...]]] = []
        self.count = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def weight(self, shape, scale: float = 1.0, dtype=np.float32) -> str:
        name = self.fresh("w")
        data = np.random.default_rng(self.rng.randrange(2**32)).standard_normal(shape) * scale
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(data, dtype), name))
        return name

    def ints(self, values) -> str:
        name = self.fresh("c")
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self.fresh(op.lower()[:4])
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.values.append((out, tuple(shape)))
        return out

    def step(self) -> None:
        rng = self.rng
        x, shape = rng.choice(self.values[-3:])
        rank = len(shape)
        options = ["unary", "binary", "binary_const", "reshape", "transpose", "reduce", "softmax", "concat"]
        if rank >= 1:
            options.append("matmul")
        if rank == 4:
            options += ["conv", "conv"]
        kind = rng.choice(options)
        if kind == "unary":
            op = rng.choice(_UNARY)
            if op == "Exp":  # keep values finite: exp of a clipped input
                x = self.node("Clip", [x, self._scalar(-4.0), self._scalar(4.0)], shape)
            self.node(op, [x], shape)
        elif kind in ("binary", "binary_const"):
            op = rng.choice(_BINARY)
            if kind == "binary":
                others = [(v, s) for v, s in self.values if _broadcasts(s, shape)]
                y, yshape = rng.choice(others)
            else:  # a constant of a broadcastable shape: a suffix of the dims, some set to 1
                k = rng.randint(0, rank)
                yshape = tuple(d if rng.random() < 0.7 else 1 for d in shape[rank - k:])
                y = self.weight(yshape)
            if op == "Div":  # away from zero
                y = self.node("Add", [self.node("Abs", [y], yshape), self._scalar(0.5)], yshape)
            out_shape = _broadcast(shape, yshape)
            args = [x, y] if rng.random() < 0.5 else [y, x]
            if op == "Sub" or op == "Div":
                args = [x, y]
            self.node(op, args, out_shape)
        elif kind == "matmul":
            k = shape[-1]
            n = rng.choice([1, 3, 8, 16])
            w = self.weight((k, n), 1 / np.sqrt(k))
            self.node("MatMul", [x, w], shape[:-1] + (n,))
        elif kind == "conv":
            c = shape[1]
            groups = rng.choice([1, c]) if c > 1 else 1
            m = c if groups == c and rng.random() < 0.7 else rng.choice([2, 4, 8]) * (1 if groups == 1 else c)
            kh = rng.choice([1, 3])
            stride = rng.choice([1, 1, 2])
            pad = kh // 2 if rng.random() < 0.8 else 0
            h = (shape[2] + 2 * pad - kh) // stride + 1
            w_ = (shape[3] + 2 * pad - kh) // stride + 1
            if h < 1 or w_ < 1:
                return
            inputs = [x, self.weight((m, c // groups, kh, kh), 1 / np.sqrt(c // groups * kh * kh))]
            if rng.random() < 0.6:
                inputs.append(self.weight((m,)))
            self.node("Conv", inputs, (shape[0], m, h, w_), kernel_shape=[kh, kh], strides=[stride, stride],
                      pads=[pad] * 4, group=groups)
        elif kind == "reshape":
            total = int(np.prod(shape))
            target = _factor(total, rng)
            spec = list(target)
            if spec and rng.random() < 0.3:
                spec[rng.randrange(len(spec))] = -1
            self.node("Reshape", [x, self.ints(spec)], target)
        elif kind == "transpose" and rank >= 2:
            perm = list(range(rank))
            rng.shuffle(perm)
            self.node("Transpose", [x], tuple(shape[p] for p in perm), perm=perm)
        elif kind == "reduce" and rank >= 1:
            axes = sorted(rng.sample(range(rank), rng.randint(1, rank)))
            keep = rng.choice([0, 1])
            out = tuple(1 if i in axes else d for i, d in enumerate(shape)) if keep else \
                tuple(d for i, d in enumerate(shape) if i not in axes)
            self.node(rng.choice(_REDUCE), [x, self.ints(axes)], out, keepdims=keep)
        elif kind == "softmax" and rank >= 1:
            self.node("Softmax", [x], shape, axis=rng.randrange(-rank, rank))
        elif kind == "concat" and rank >= 1:
            axis = rng.randrange(rank)
            same = [(v, s) for v, s in self.values
                    if len(s) == rank and all(a == b for i, (a, b) in enumerate(zip(s, shape)) if i != axis)]
            y, yshape = rng.choice(same)
            out = tuple(d + yshape[i] if i == axis else d for i, d in enumerate(shape))
            self.node("Concat", [x, y], out, axis=axis)

    def _scalar(self, value: float) -> str:
        name = self.fresh("s")
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name


def _broadcasts(a: tuple, b: tuple) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def _broadcast(a: tuple, b: tuple) -> tuple:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    return tuple(max(x, y) for x, y in zip(a, b))


def _factor(total: int, rng: random.Random) -> tuple[int, ...]:
    """A random shape of rank 1 to 4 with `total` elements."""
    dims = []
    rest = total
    for _ in range(rng.randint(0, 3)):
        divisors = [d for d in range(2, min(rest, 64) + 1) if rest % d == 0]
        if not divisors:
            break
        d = rng.choice(divisors)
        dims.append(d)
        rest //= d
    dims.append(rest)
    rng.shuffle(dims)
    return tuple(dims)


def random_graph(seed: int, steps: int | None = None, opset: int = 18) -> onnx.ModelProto:
    """A valid random model of 2 to 8 ops (`steps`) on one float32 input of random static shape;
    its outputs are the last value and, sometimes, one earlier value."""
    rng = random.Random(seed)
    b = _Builder(rng)
    rank = rng.choice([1, 2, 3, 4, 4])
    shape = tuple(rng.choice([1, 2, 3, 4, 5, 8, 16]) for _ in range(rank))
    if rank == 4:
        shape = (rng.choice([1, 2]), rng.choice([1, 3, 4, 8]), rng.choice([5, 8, 12]), rng.choice([5, 8, 12]))
    b.values.append(("x", shape))
    for _ in range(steps or rng.randint(2, 8)):
        b.step()
    if len(b.values) == 1:
        b.node("Relu", ["x"], shape)
    outputs = [b.values[-1]]
    if len(b.values) > 3 and rng.random() < 0.4:
        outputs.append(rng.choice(b.values[1:-1]))
    graph = helper.make_graph(b.nodes, f"fuzz{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, s) for v, s in outputs],
                              initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def differential(model: onnx.ModelProto, folder, target: str = "x86", level: int = 2, seed: int = 0,
                 rtol: float = 1e-3, atol: float = 1e-4) -> str | None:
    """Compile `model` with mdoc and compare its outputs with onnxruntime's on seeded inputs:
    None when they agree, else what differs (or the error that stopped mdoc). An aarch64 artifact runs
    under qemu (tooling/emulation.py, which needs the arm64 root of .ci/setup-arm.sh)."""
    import mdoc
    from mdoc.errors import MdocError
    from mdoc.reference import compare_outputs, run_onnxruntime

    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    want = run_onnxruntime(model, feeds)
    path = folder / "model.onnx"
    onnx.save(model, path)
    try:
        art = mdoc.compile(path, target, folder / "model.art", opt_level=level, show_progress=False, tuning_db=False)
        got = _run_aarch64(art, feeds) if target == "aarch64" else mdoc.load(art)(**feeds)
    except MdocError as e:
        return f"mdoc failed: {type(e).__name__}: {e}"
    except RuntimeError as e:  # run_aarch64's one-line failures (the library under qemu)
        return f"aarch64 run failed: {e}"
    bad = [d for d in compare_outputs(want, got, rtol, atol) if not d.ok]
    return "; ".join(str(d) for d in bad) or None


def _run_aarch64(art, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An aarch64 artifact's outputs by name, its library run under qemu (`tooling.emulation`)."""
    from .emulation import run_aarch64

    manifest = json.loads((art / "manifest.json").read_text())
    outs = run_aarch64(art / "model.so", {i["param"]: feeds[i["name"]] for i in manifest["inputs"]})
    return {o["name"]: v for o, v in zip(manifest["outputs"], outs)}


def describe(model: onnx.ModelProto) -> str:
    """One line per node, for reports and reproducers."""
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    lines = [f"input x {shapes.get('x')}"]
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        lines.append(f"{n.output[0]} = {n.op_type}({', '.join(n.input)}) {json.dumps(attrs, default=str) if attrs else ''}")
    return "\n".join(lines)
