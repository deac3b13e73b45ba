"""The textual IR, printing side: ASCII, deterministic, MLIR-like, and read back by `parser.parse_model`.

    module {ir_version = 8, opset_imports = {"" = 17}, producer_name = "pytorch", producer_version = "2.1"}
    graph @main(%x: f32[N,3,224,224]) -> (%logits: f32[N,1000]) {
      %w = onnx.Constant() {value = resource<"w">} : f32[64,3,7,7]
      %shape = onnx.Constant() {value = dense<[1, -1]>} : i64[2]
      %conv = onnx.Conv(%x, %w) {kernel_shape = [7, 7], strides = [2, 2]} : f32[N,64,112,112] loc("conv1")
      %a, %b = onnx.Split(%conv) {axis = 1} : f32[N,32,112,112], f32[N,32,112,112]
      ...
      return %logits
    }

The rules, in the order a reader meets them:

* Values are `%name` when the name hint is an identifier (`[A-Za-z_][A-Za-z0-9_.]*`),
  `%"any text"` otherwise, `%name_1` when the hint is already taken somewhere in the
  module, and `%12` when there is no hint. Names are unique in the whole module, so a
  nested body refers to an enclosing graph's values by their names (implicit capture).
  Graph inputs, then graph outputs, of the top-level graph claim their names first.
* The signature `-> (%logits: f32[N,1000])` lists each output's export name (the
  returned value's name hint; just the type when it has none); `return` lists the
  values, which may print under another name when theirs was taken.
* Operands are values or `none` (an omitted optional input); trailing omitted operands
  are not printed. Attributes are sorted by name. Result types follow `:`; the node's
  name follows as `loc("...")` and its provenance as `from("rule")`.
* Attribute values: `3`, `2.5` (floats always show `.`, `e`, `nan` or `inf`), `true`,
  `"text"` (JSON escapes), `b"\\x00raw"` (bytes), `[1, 2]` (tuples), `dense<[[1, 2]]> : i64[1,2]`,
  `resource<"name"> : f32[64]`, `type<f32[2]>` (an onnx.TypeProto) and nested graphs.
  The `: type` after a tensor is left out for an `onnx.Constant`'s `value` whose result
  type already says it.
* Tensors with more than `inline_limit` elements, and every float8/float4/int4/uint4
  tensor, print as `resource<"name">`; `print_model` stores their arrays in the
  `resources` dict it is given (string tensors then always stay inline), or drops them
  when it is given none (text for display only).

`save_mdir` writes the text and, beside it, `<path>.npz` with the resources.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import numpy as np
import onnx

from .atomic import atomic_write, write_text
from .errors import MdocError
from .ir import CONSTANT, Graph, Model, Node, Value
from .types import (DType, OptionalType, SequenceType, TensorType, Type, UnknownType, tensor_type_of,
                    type_from_onnx)

__all__ = ["print_model", "print_graph", "print_node", "print_type", "save_mdir"]

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_OP_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
# Words that begin or end a statement: an op spelled like one of them is quoted.
RESERVED_OPS = frozenset({"return", "loc", "from"})
_INTS = frozenset({DType.U8, DType.I8, DType.U16, DType.I16, DType.I32, DType.I64, DType.U32, DType.U64})
_FLOATS = frozenset({DType.F16, DType.BF16, DType.F32, DType.F64})
_COMPLEX = frozenset({DType.C64, DType.C128})
# Element types whose values cannot be written inline exactly (float8, float4, int4/uint4, int2/uint2,
# and any type added to DType later); they always become resources.
NOT_INLINE = frozenset(set(DType) - _INTS - _FLOATS - _COMPLEX - {DType.BOOL, DType.STR})


# -- spellings -------------------------------------------------------------------

def quote(s: str) -> str:
    """A double-quoted ASCII string with JSON escapes."""
    return json.dumps(s, ensure_ascii=True)


def bytes_text(b: bytes) -> str:
    """`b"..."`: printable ASCII as is (`"` and `\\` escaped by a backslash), every other byte as `\\xNN`."""
    out = []
    for c in b:
        if c in (0x22, 0x5C):
            out.append("\\" + chr(c))
        else:
            out.append(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}")
    return 'b"' + "".join(out) + '"'


def _word_or_quoted(s: str) -> str:
    return s if IDENT.match(s) else quote(s)


def float_text(x: float) -> str:
    """`repr` of the float64 value: always has `.` or `e`, or is nan/inf/-inf; parses back exactly."""
    return repr(float(x))


def _dim_text(d: Any) -> str:
    if d is None:
        return "?"
    if isinstance(d, str):
        return _word_or_quoted(d)
    return str(int(d))


def print_type(t: Type) -> str:
    """The text of a type: types.py's spellings, with symbols that are not identifiers quoted."""
    if isinstance(t, TensorType):
        dims = "*" if t.shape is None else ",".join(_dim_text(d) for d in t.shape)
        return f"{t.dtype.text}[{dims}]"
    if isinstance(t, SequenceType):
        return f"seq<{print_type(t.elem)}>"
    if isinstance(t, OptionalType):
        return f"opt<{print_type(t.elem)}>"
    if isinstance(t, UnknownType):
        return "?"
    raise MdocError(f"cannot print type {t!r}: not a TensorType, SequenceType, OptionalType or UNKNOWN")


def op_text(op: str) -> str:
    return op if _OP_IDENT.match(op) and op not in RESERVED_OPS else quote(op)


def _dtype_of(arr: np.ndarray, where: str) -> DType:
    if arr.dtype.kind in "SUO":
        return DType.STR
    try:
        return DType.from_numpy(arr.dtype.newbyteorder("="))
    except (ValueError, KeyError, TypeError):
        raise MdocError(f"cannot print {where}: numpy dtype {arr.dtype} has no ONNX element type") from None


# -- value names -----------------------------------------------------------------

class _Namer:
    """Unique printed names for every value of a module, decided before printing starts.

    The order of claims is fixed by the graph's structure (top-level inputs, top-level
    outputs, then every value in print order), so text printed from a parsed model, whose
    hints are the names printed before, names every value the same way again.
    """

    def __init__(self, root: Graph | None):
        self.spelling: dict[Value, str] = {}
        self.chosen: dict[Value, str] = {}  # the name without '%' and quotes ("" for numbered values)
        self._taken: set[str] = set()
        self._next_suffix: dict[str, int] = {}
        self._count = 0
        if root is not None:
            for v in root.inputs:
                self.claim(v)
            for v in root.outputs:
                self.claim(v)
            self._walk(root)

    def _walk(self, graph: Graph) -> None:
        for v in graph.inputs:
            self.claim(v)
        for node in graph:
            for v in node.outputs:
                self.claim(v)
            for key in sorted(node.attrs):
                for sub in graphs_in(node.attrs[key]):
                    self._walk(sub)

    def claim(self, v: Value) -> str:
        if v in self.spelling:
            return self.spelling[v]
        hint = v.name or ""
        if not hint:
            spelling = f"%{self._count}"
            self._count += 1
            chosen = ""
        else:
            chosen = hint
            if chosen in self._taken:
                k = self._next_suffix.get(hint, 1)
                while f"{hint}_{k}" in self._taken:
                    k += 1
                self._next_suffix[hint] = k + 1
                chosen = f"{hint}_{k}"
            self._taken.add(chosen)
            spelling = "%" + _word_or_quoted(chosen)
        self.spelling[v] = spelling
        self.chosen[v] = chosen
        return spelling


def graphs_in(value: Any):
    """The graphs held in an attribute value, in print order."""
    if isinstance(value, Graph):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from graphs_in(item)


def _root(graph: Graph) -> Graph:
    root = graph
    for root in graph.enclosing():
        pass
    return root


# -- the printer -----------------------------------------------------------------

class _Printer:
    def __init__(self, namer: _Namer, resources: dict | None, inline_limit: int, one_line: bool = False,
                 lenient: bool = False):
        self.namer = namer
        self.resources = resources
        self.inline_limit = inline_limit
        self.one_line = one_line
        self.lenient = lenient  # for messages about broken IR: show what cannot be printed as <...>
        self._resource_names: set[str] = set(resources) if resources else set()
        self._next_r = 0

    def name(self, v: Value) -> str:
        return self.namer.claim(v)

    # graphs and nodes
    def graph(self, g: Graph, indent: int) -> str:
        ins = ", ".join(f"{self.name(v)}: {print_type(v.type)}" for v in g.inputs)
        outs = ", ".join(self._output_decl(v) for v in g.outputs)
        head = f"graph @{_word_or_quoted(g.name or '')}({ins}) -> ({outs}) {{"
        if self.one_line:
            return head + " ... }"
        pad = "  " * (indent + 1)
        lines = [head]
        for node in g:
            lines.append(pad + self.node(node, indent + 1))
        ret = ", ".join(self.name(v) for v in g.outputs)
        lines.append(pad + ("return " + ret if ret else "return"))
        lines.append("  " * indent + "}")
        return "\n".join(lines)

    def _output_decl(self, v: Value) -> str:
        t = print_type(v.type)
        return f"%{_word_or_quoted(v.name)}: {t}" if v.name else t

    def node(self, node: Node, indent: int) -> str:
        parts = []
        if node.outputs:
            parts.append(", ".join(self.name(v) for v in node.outputs) + " = ")
        inputs = list(node.inputs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        operands = ", ".join("none" if v is None else self.name(v) for v in inputs)
        parts.append(f"{op_text(node.op)}({operands})")
        if node.attrs:
            items = []
            for key in sorted(node.attrs):
                items.append(f"{_word_or_quoted(key)} = {self.attr(node, key, indent)}")
            parts.append(" {" + ", ".join(items) + "}")
        if node.outputs:
            parts.append(" : " + ", ".join(print_type(v.type) for v in node.outputs))
        if node.name:
            parts.append(f" loc({quote(node.name)})")
        if node.provenance:
            parts.append(f" from({quote(node.provenance)})")
        return "".join(parts)

    # attributes
    def attr(self, node: Node, key: str, indent: int) -> str:
        value = node.attrs[key]
        where = f"attribute '{key}' of {node.op} node '{node.name}'"
        try:
            if isinstance(value, np.ndarray):
                typed = not (node.op == CONSTANT and key == "value" and len(node.outputs) == 1
                             and _type_matches(node.outputs[0].type, value))
                return self.tensor(value, self._resource_hint(node, key), typed, where)
            return self.value(value, node, key, indent, where)
        except MdocError:
            if not self.lenient:
                raise
            return f"<unprintable {type(value).__name__}>"

    def value(self, value: Any, node: Node, key: str, indent: int, where: str) -> str:
        if isinstance(value, (bool, np.bool_)):
            return "true" if value else "false"
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            return float_text(value)
        if isinstance(value, str):
            return quote(value)
        if isinstance(value, (bytes, bytearray, np.bytes_)):
            return bytes_text(bytes(value))
        if isinstance(value, np.ndarray):
            return self.tensor(value, self._resource_hint(node, key), True, where)
        if isinstance(value, Graph):
            return self.graph(value, indent)
        if isinstance(value, (tuple, list)):
            return "[" + ", ".join(self.value(v, node, key, indent, where) for v in value) + "]"
        if isinstance(value, onnx.TypeProto):
            return f"type<{print_type(type_from_onnx(value))}>"
        raise MdocError(f"cannot print {where}: values of type {type(value).__name__} are not IR attributes")

    def tensor(self, arr: np.ndarray, hint: str, typed: bool, where: str) -> str:
        dtype = _dtype_of(arr, where)
        shape = tuple(int(d) for d in arr.shape)
        keep = self.resources is not None
        if dtype in NOT_INLINE or (arr.size > self.inline_limit and not (keep and dtype is DType.STR)):
            name = self._resource_name(hint)
            if keep:
                self.resources[name] = arr
            text = f"resource<{quote(name)}>"
        else:
            text = f"dense<{dense_text(arr, dtype, where)}>"
        if typed:
            text += " : " + print_type(TensorType(dtype, shape))
        return text

    def _resource_hint(self, node: Node, key: str) -> str:
        if node.op == CONSTANT and key == "value" and len(node.outputs) == 1:
            return self.namer.chosen.get(node.outputs[0], "")
        base = node.name or (self.namer.chosen.get(node.outputs[0], "") if node.outputs else "")
        return f"{base}.{key}" if base else ""

    def _resource_name(self, hint: str) -> str:
        taken = self._resource_names
        if hint:
            name, k = hint, 1
            while name in taken:
                name, k = f"{hint}_{k}", k + 1
        else:
            while f"r{self._next_r}" in taken:
                self._next_r += 1
            name = f"r{self._next_r}"
        taken.add(name)
        return name


def _type_matches(t: Type, arr: np.ndarray) -> bool:
    try:
        return t == tensor_type_of(arr)
    except (ValueError, KeyError, TypeError):
        return False


def dense_text(arr: np.ndarray, dtype: DType, where: str = "a tensor") -> str:
    """The elements of `arr` as nested lists (a scalar for rank 0), exactly."""
    flat = np.asarray(arr).reshape(-1)
    if dtype is DType.BOOL:
        items = ["true" if x else "false" for x in flat.tolist()]
    elif dtype in _INTS:
        items = [str(x) for x in flat.tolist()]
    elif dtype in _FLOATS:
        with np.errstate(invalid="ignore"):  # signaling NaNs are still NaNs
            items = [repr(x) for x in flat.astype(np.float64).tolist()]
    elif dtype in _COMPLEX:
        with np.errstate(invalid="ignore"):
            items = [f"({float_text(z.real)}, {float_text(z.imag)})" for z in flat.astype(np.complex128).tolist()]
    elif dtype is DType.STR:
        items = []
        for x in flat.tolist():
            if isinstance(x, str):
                items.append(quote(x))
            elif isinstance(x, (bytes, bytearray)):
                items.append(bytes_text(bytes(x)))
            else:
                raise MdocError(f"cannot print {where}: string tensor holds a {type(x).__name__}, "
                                "not str or bytes")
    else:
        raise MdocError(f"cannot print {where}: {dtype.text} tensors cannot be written inline")
    shape = arr.shape
    if not shape:
        return items[0]

    def nest(start: int, level: int) -> str:
        if level == len(shape) - 1:
            return "[" + ", ".join(items[start:start + shape[level]]) + "]"
        stride = int(np.prod(shape[level + 1:], dtype=np.int64))
        return "[" + ", ".join(nest(start + i * stride, level + 1) for i in range(shape[level])) + "]"

    return nest(0, 0)


# -- public entry points ---------------------------------------------------------

def _module_header(model: Model) -> str:
    fields = [f"ir_version = {int(model.ir_version)}"]
    opsets = ", ".join(f"{quote(d)} = {int(v)}" for d, v in sorted(model.opset_imports.items()))
    fields.append(f"opset_imports = {{{opsets}}}")
    fields.append(f"producer_name = {quote(str(model.producer_name or ''))}")
    if model.producer_version:
        fields.append(f"producer_version = {quote(str(model.producer_version))}")
    if model.metadata:
        meta = ", ".join(f"{quote(str(k))} = {quote(str(v))}" for k, v in sorted(model.metadata.items()))
        fields.append(f"metadata = {{{meta}}}")
    return "module {" + ", ".join(fields) + "}"


def print_model(model: Model, resources: dict[str, np.ndarray] | None = None, inline_limit: int = 8) -> str:
    """The text of `model`; large and non-inline tensors go into `resources` when it is a dict."""
    printer = _Printer(_Namer(model.graph), resources, inline_limit)
    return _module_header(model) + "\n" + printer.graph(model.graph, 0) + "\n"


def print_graph(graph: Graph, inline_limit: int = 8) -> str:
    """One graph (a nested body too), with the names it has when its whole module is printed.

    For messages and debugging: large tensors show as resources without data, and attribute
    values that are not IR attributes show as `<unprintable T>` instead of raising.
    """
    printer = _Printer(_Namer(_root(graph)), None, inline_limit, lenient=True)
    return printer.graph(graph, 0) + "\n"


def print_node(node: Node) -> str:
    """One line for `node` (nested bodies shortened to `{ ... }`), named as in its module's text.

    For messages (the verifier's context lines): never raises on odd attribute values.
    """
    namer = _Namer(_root(node.graph) if node.graph is not None else None)
    return _Printer(namer, None, 8, one_line=True, lenient=True).node(node, 0)


# -- .mdir files -----------------------------------------------------------------

RESOURCE_INDEX = "__index__"


def save_mdir(model: Model, path: str | os.PathLike) -> None:
    """Write `model` as text to `path` and its resources to `path + ".npz"`, each atomically.

    The .npz holds, per resource, its raw little-endian bytes as a uint8 array, and an
    index (JSON in a uint8 array) with each resource's name, element type and shape, so
    bfloat16, float8 and int4 arrays come back bit for bit without pickling.
    """
    path = os.fspath(path)
    resources: dict[str, np.ndarray] = {}
    text = print_model(model, resources)
    npz = path + ".npz"
    if resources:
        index, arrays = [], {}
        for i, (name, arr) in enumerate(resources.items()):
            arr = np.asarray(arr)
            dtype = _dtype_of(arr, f"resource '{name}'")
            if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
                arr = arr.byteswap()
            key = f"r{i}"
            arrays[key] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            index.append({"name": name, "key": key, "dtype": dtype.text, "shape": [int(d) for d in arr.shape]})
        meta = json.dumps({"format": "mdoc-resources", "version": 1, "resources": index})
        arrays[RESOURCE_INDEX] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
        atomic_write(npz, lambda f: np.savez(f, **arrays))
    write_text(path, text)
    if not resources and os.path.exists(npz):
        os.remove(npz)  # a stale one from an earlier save would only mislead

