"""The op registry: ONNX ops checked against `onnx.defs`, mdoc's own ops declared with `define_op(OpDef(...))`.

One spelling per op: the importer turns every ONNX node into `onnx.<OpType>` (or
`<domain>.<OpType>`), and mdoc's passes create `mdoc.<name>` ops declared here or
in the module that introduces them. Ops of other custom domains are kept opaque:
the verifier checks only their SSA structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import onnx
from onnx import AttributeProto, defs

from .ir import split_op

_ONNX_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")


@dataclass(frozen=True)
class OpDef:
    """An mdoc op: arity, attributes and an optional extra check (what the verifier knows), its meaning as a
    numpy function (the reference evaluator's), and how it is written back as ONNX (the exporter's)."""

    name: str
    doc: str
    inputs: tuple[int, int]  # min, max operands
    outputs: tuple[int, int]
    attrs: dict[str, type | tuple] = field(default_factory=dict)  # name -> accepted Python type(s)
    required: tuple[str, ...] = ()
    check: Callable | None = None  # check(node) -> reason string or None
    evaluate: Callable | None = None  # evaluate(node, arrays) -> result arrays: the op's meaning, in numpy
    export: Callable | None = None  # export(node, emitter): the op written as ONNX (`onnx_export.OpEmitter`)


MDOC_OPS: dict[str, OpDef] = {}

# Attributes named "mdoc.<what>" are annotations a pass writes on any node, ONNX ops included (a target's
# plan: `mdoc.layout = "NCHWc"`): the verifier lets them be, printing and parsing keep them, the exporter
# and the reference evaluator leave them out.
ANNOTATION_PREFIX = "mdoc."


def is_annotation(attr: str) -> bool:
    return attr.startswith(ANNOTATION_PREFIX)


def define_op(opdef: OpDef) -> OpDef:
    if opdef.name in MDOC_OPS:
        raise ValueError(f"op {opdef.name} is defined twice")
    MDOC_OPS[opdef.name] = opdef
    return opdef


def is_onnx_domain(domain: str) -> bool:
    return domain in _ONNX_DOMAINS or domain == "ai.onnx"


@lru_cache(maxsize=4096)
def onnx_schema(op_type: str, domain: str, opset: int) -> defs.OpSchema | None:
    """The ONNX schema of `op_type` in force at `opset`, or None when ONNX has no such op then."""
    domain = "" if domain == "ai.onnx" else domain
    try:
        return defs.get_schema(op_type, opset, domain)
    except defs.SchemaError:
        return None


def schema_of(op: str, opset_imports: dict[str, int]) -> defs.OpSchema | None:
    domain, op_type = split_op(op)
    if not is_onnx_domain(domain):
        return None
    version = opset_imports.get(domain, opset_imports.get("ai.onnx", 1) if domain == "" else 1)
    return onnx_schema(op_type, domain, version)


def known_onnx_op(op_type: str, domain: str) -> bool:
    return defs.has(op_type, "" if domain == "ai.onnx" else domain)


# ONNX attribute kinds -> the Python types mdoc stores for them.
ATTR_PY_TYPES = {
    AttributeProto.FLOAT: (float, int),
    AttributeProto.INT: int,
    AttributeProto.STRING: (str, bytes),
    AttributeProto.TENSOR: "tensor",
    AttributeProto.GRAPH: "graph",
    AttributeProto.FLOATS: ("list", (float, int)),
    AttributeProto.INTS: ("list", int),
    AttributeProto.STRINGS: ("list", (str, bytes)),
    AttributeProto.TENSORS: ("list", "tensor"),
    AttributeProto.GRAPHS: ("list", "graph"),
    AttributeProto.SPARSE_TENSOR: "tensor",
    AttributeProto.TYPE_PROTO: onnx.TypeProto,
    AttributeProto.TYPE_PROTOS: ("list", onnx.TypeProto),
}
