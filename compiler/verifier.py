"""The IR verifier: SSA structure, use lists, and every op against its ONNX schema or mdoc definition.

It runs after every pass by default, so a broken rewrite is caught at the pass
that broke the graph, with the node, its op, the rule and a few lines around it.
Ops of custom domains are opaque: only their SSA structure is checked.
"""

from __future__ import annotations

import numpy as np
from onnx import defs

from .errors import VerifyError
from .ir import CONSTANT, Graph, Model, Node
from .ops import ATTR_PY_TYPES, MDOC_OPS, is_annotation, is_onnx_domain, schema_of
from .types import DType, TensorType, tensor_type_of

_DTYPE_SCHEMA_NAMES = {
    DType.F32: "float", DType.F16: "float16", DType.F64: "double", DType.BF16: "bfloat16",
    DType.I8: "int8", DType.I16: "int16", DType.I32: "int32", DType.I64: "int64",
    DType.U8: "uint8", DType.U16: "uint16", DType.U32: "uint32", DType.U64: "uint64",
    DType.BOOL: "bool", DType.STR: "string", DType.C64: "complex64", DType.C128: "complex128",
    DType.F8E4M3FN: "float8e4m3fn", DType.F8E4M3FNUZ: "float8e4m3fnuz", DType.F8E5M2: "float8e5m2",
    DType.F8E5M2FNUZ: "float8e5m2fnuz", DType.U4: "uint4", DType.I4: "int4", DType.F4E2M1: "float4e2m1",
    DType.F8E8M0: "float8e8m0", DType.U2: "uint2", DType.I2: "int2",
}


def verify(model: Model) -> None:
    """Raise VerifyError naming the first broken rule; return None when the model is well formed."""
    _Verifier(model).graph(model.graph, visible=set())


class _Verifier:
    def __init__(self, model: Model):
        self.model = model

    def fail(self, node: Node | None, rule: str, graph: Graph) -> None:
        where = f"node '{node.name}' ({node.op})" if node is not None else f"graph @{graph.name}"
        raise VerifyError(f"verify: {where}: {rule}", _context(graph, node))

    def graph(self, g: Graph, visible: set[int]) -> None:
        defined = set(visible)
        for v in g.inputs:
            if v._owner is not g:
                self.fail(None, f"input %{v.name} does not belong to this graph", g)
            defined.add(id(v))
        count = 0
        prev = None
        for node in g:
            count += 1
            if node.graph is not g or node._prev is not prev:
                self.fail(node, "node list is corrupt (node not linked into this graph)", g)
            prev = node
            for i, v in enumerate(node._inputs):
                if v is None:
                    continue
                if id(v) not in defined:
                    self.fail(node, f"operand {i} %{v.name} is used before it is defined "
                                    "(or is defined in another graph)", g)
                if (node, i) not in v._uses:
                    self.fail(node, f"operand {i} %{v.name} is missing from its value's use list", g)
            for sub in node.subgraphs():
                if sub.parent is not node:
                    self.fail(node, f"body @{sub.name} does not point back at its node", g)
                self.graph(sub, defined)
            for j, out in enumerate(node.outputs):
                if out._producer is not node or out._index != j:
                    self.fail(node, f"result {j} %{out.name} does not point back at its node", g)
                for user, k in out._uses:
                    if user.graph is None or user.input(k) is not out:
                        self.fail(node, f"result %{out.name} lists a stale use by {user.op} '{user.name}'", g)
                defined.add(id(out))
            self.op(node, g)
        if count != len(g):
            self.fail(None, f"node count {len(g)} disagrees with the {count} linked nodes", g)
        for i, v in enumerate(g.outputs):
            if id(v) not in defined:
                self.fail(None, f"output {i} %{v.name} is not defined in this graph or an enclosing one", g)

    # -- ops -------------------------------------------------------------------
    def op(self, node: Node, g: Graph) -> None:
        if node.op == CONSTANT:
            self.constant(node, g)
        domain = node.domain
        if domain == "mdoc":
            opdef = MDOC_OPS.get(node.op)
            if opdef is None:
                self.fail(node, "is not a defined mdoc op", g)
            self.arity(node, g, opdef.inputs, opdef.outputs)
            for name in opdef.required:
                if name not in node.attrs:
                    self.fail(node, f"required attribute '{name}' is missing", g)
            for name, value in node.attrs.items():
                if name not in opdef.attrs and not is_annotation(name):
                    self.fail(node, f"has unknown attribute '{name}'", g)
            if opdef.check is not None and (reason := opdef.check(node)):
                self.fail(node, reason, g)
            return
        if not is_onnx_domain(domain):
            return
        schema = schema_of(node.op, self.model.opset_imports)
        if schema is None:
            self.fail(node, f"is not an ONNX op at opset {self.model.opset_of(node.op)}", g)
        self.arity(node, g, (schema.min_input, schema.max_input), (schema.min_output, schema.max_output))
        for name, value in node.attrs.items():
            if is_annotation(name):
                continue
            spec = schema.attributes.get(name)
            if spec is None:
                self.fail(node, f"has unknown attribute '{name}' (opset {schema.since_version} "
                                f"{node.op_type} has {', '.join(sorted(schema.attributes)) or 'none'})", g)
            if not _attr_matches(value, ATTR_PY_TYPES.get(spec.type)):
                self.fail(node, f"attribute '{name}' should be {spec.type.name.lower()}, "
                                f"got {type(value).__name__}", g)
        for name, spec in schema.attributes.items():
            if spec.required and name not in node.attrs:
                self.fail(node, f"required attribute '{name}' is missing", g)
        self.dtypes(node, schema, g)

    def arity(self, node: Node, g: Graph, inputs: tuple[int, int], outputs: tuple[int, int]) -> None:
        n_in, n_out = len(node._inputs), len(node.outputs)
        if not inputs[0] <= n_in <= inputs[1]:
            self.fail(node, f"expects {_range(inputs)} operands, has {n_in}", g)
        if not outputs[0] <= n_out <= outputs[1]:
            self.fail(node, f"expects {_range(outputs)} results, has {n_out}", g)

    def dtypes(self, node: Node, schema: defs.OpSchema, g: Graph) -> None:
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        bound: dict[str, DType] = {}
        formals = list(schema.inputs)
        for i, v in enumerate(node._inputs):
            if v is None or not isinstance(v.type, TensorType) or not formals:
                continue
            formal = formals[min(i, len(formals) - 1)]
            if i >= len(formals) and formal.option != defs.OpSchema.FormalParameterOption.Variadic:
                continue
            param = formal.type_str
            text = f"tensor({_DTYPE_SCHEMA_NAMES[v.type.dtype]})"
            ok = allowed.get(param, {param})
            if text not in ok and not any(t.endswith(text) for t in ok):
                self.fail(node, f"operand {i} ({formal.name}) has type {v.type.dtype.text}, "
                                f"which {node.op_type} does not accept for {param}", g)
            homogeneous = formal.option != defs.OpSchema.FormalParameterOption.Variadic or formal.is_homogeneous
            if param in allowed and homogeneous:
                first = bound.setdefault(param, v.type.dtype)
                if first is not v.type.dtype:
                    self.fail(node, f"operand {i} ({formal.name}) has type {v.type.dtype.text} but "
                                    f"{param} is already {first.text}", g)

    def constant(self, node: Node, g: Graph) -> None:
        value = node.attrs.get("value")
        if not isinstance(value, np.ndarray):
            self.fail(node, "a constant needs an array 'value' attribute", g)
        t = node.output.type
        if isinstance(t, TensorType) and t != tensor_type_of(value):
            self.fail(node, f"result type {t} does not match its value {tensor_type_of(value)}", g)


def _range(r: tuple[int, int]) -> str:
    lo, hi = r
    if lo == hi:
        return str(lo)
    return f"at least {lo}" if hi >= 2**31 - 1 else f"{lo} to {hi}"


def _attr_matches(value, spec) -> bool:
    def one(v, kind) -> bool:
        if kind == "tensor":
            return isinstance(v, np.ndarray)
        if kind == "graph":
            return isinstance(v, Graph)
        return isinstance(v, kind) and not isinstance(v, bool)

    if spec is None:
        return True
    if isinstance(spec, tuple) and spec and spec[0] == "list":
        return isinstance(value, tuple) and all(one(v, spec[1]) for v in value)
    return one(value, spec)


def _context(graph: Graph, node: Node | None, radius: int = 2) -> str:
    """A few printed lines around `node` (or the graph's signature) for the error report."""
    from .printer import print_node

    nodes = graph.nodes()
    if node is None or node not in nodes:
        return "\n".join(print_node(n) for n in nodes[-radius:])
    i = nodes.index(node)
    lines = []
    for j in range(max(0, i - radius), min(len(nodes), i + radius + 1)):
        mark = ">>" if j == i else "  "
        lines.append(f"{mark} {print_node(nodes[j])}")
    return "\n".join(lines)

