"""The ONNX frontend: a ModelProto (opsets 7 to the installed onnx's newest) becomes an mdoc `Model`.

Initializers and Constant nodes become `onnx.Constant` nodes (every Constant
form, `value_float` to `sparse_value`, is normalized to a dense `value` array);
graph inputs that shadow an initializer (old exporters list weights as inputs)
take the initializer; local functions are inlined; If/Loop/Scan bodies become
nested graphs whose nodes use outer values directly; ops of custom domains stay
opaque with their attributes. ONNX's own shape inference fills in the types,
then mdoc's (`mdoc.scoped_inference`) what ONNX leaves unknown inside bodies.
What the importer cannot check it refuses with a one-line error naming the
file, node and op.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from .errors import MdocError
from .ir import CONSTANT, Graph, Model, op_name
from .onnx_load import check_model_proto, load_external_array, read_model_proto
from .ops import is_onnx_domain, known_onnx_op
from .scoped_inference import refine_types
from .types import UNKNOWN, DType, TensorType, tensor_type_of, type_from_onnx

MIN_OPSET, MAX_OPSET = 7, onnx.defs.onnx_opset_version()


def import_model(source: str | os.PathLike | onnx.ModelProto, *, infer_shapes: bool = True,
                 name: str | None = None) -> Model:
    """Import an ONNX model from a path or a ModelProto; `name` is what messages call a proto (its source file)."""
    if isinstance(source, onnx.ModelProto):
        proto, path = source, None
    else:
        path = Path(source)
        proto = read_model_proto(path)
    check_model_proto(proto, path)  # external data and declared sizes, before any tensor is read
    return _Importer(proto, path, name).run(infer_shapes)


class _Importer:
    def __init__(self, proto: onnx.ModelProto, path: Path | None, name: str | None = None):
        self.proto = proto
        self.path = path
        self.where = name or (str(path) if path is not None else f"model '{proto.graph.name or 'main'}'")
        self.opsets = {op.domain or "": op.version for op in proto.opset_import}

    def fail(self, message: str):
        raise MdocError(f"{self.where}: {message}")

    def run(self, infer_shapes: bool) -> Model:
        proto = self.proto
        default = self.opsets.get("", self.opsets.get("ai.onnx"))
        if default is None and not proto.opset_import:
            self.fail("declares no opset_import")
        if default is not None and not MIN_OPSET <= default <= MAX_OPSET:
            self.fail(f"default-domain opset {default} is outside the supported range {MIN_OPSET} to {MAX_OPSET}")
        if proto.functions:
            proto = self._inline(proto)
        proto = _name_unknown_dims(proto)
        if infer_shapes:
            proto = self._infer(proto)
        self.types = {}
        self._collect_types(proto.graph)
        graph = self._graph(proto.graph, scopes=[], top=True)
        meta = {p.key: p.value for p in proto.metadata_props}
        model = Model(graph, self.opsets, proto.ir_version, proto.producer_name, proto.producer_version, meta)
        if infer_shapes:
            refine_types(model)  # what ONNX left unknown, mostly inside bodies that read outer values
        return model

    def _inline(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        try:
            return onnx.inliner.inline_local_functions(proto)
        except Exception as e:  # onnx raises bare exceptions from C++
            self.fail(f"cannot inline local functions: {' '.join(str(e).split())}")

    def _infer(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """ONNX's shape inference. Where a declared shape contradicts what the nodes make (a stale
        or hostile value_info or output), the inferred shape wins, as in onnxruntime's lenient merge:
        the declared shapes of values and outputs are dropped and inferred again."""
        infer = onnx.shape_inference.infer_shapes
        try:
            return infer(proto, check_type=False, strict_mode=True, data_prop=True)
        except Exception as e:  # onnx raises InferenceError, and bare errors from C++
            if "existing shape differ" in str(e):
                proto = _without_declared_shapes(proto)
        try:
            return infer(proto, check_type=False, strict_mode=False, data_prop=True)
        except Exception:  # inference is a help, not a requirement: types stay as declared
            return proto

    def _collect_types(self, g: onnx.GraphProto) -> None:
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            if vi.HasField("type"):
                self.types.setdefault(vi.name, type_from_onnx(vi.type))
        for node in g.node:
            for a in node.attribute:
                for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                    self._collect_types(sub)

    # -- graphs --------------------------------------------------------------
    def _graph(self, g: onnx.GraphProto, scopes: list[dict], top: bool = False) -> Graph:
        graph = Graph(g.name or "main")
        scope: dict[str, object] = {}
        inits = {t.name: t for t in g.initializer}
        for sp in g.sparse_initializer:
            inits[sp.values.name] = sp
        for vi in g.input:
            if vi.name in inits:
                continue  # an initializer shadows its input: weights of old exporters
            if vi.name in scope:
                self.fail(f"graph '{graph.name}' has two inputs named '{vi.name}'")
            scope[vi.name] = graph.add_input(self.types.get(vi.name, UNKNOWN), vi.name)
        for name, t in inits.items():
            scope[name] = graph.constant(self._tensor(t), name=name)
        chain = [scope] + scopes
        for node in self._ordered(g, chain):
            self._node(graph, node, chain)
        for vi in g.output:
            value = _lookup(chain, vi.name)
            if value is None:
                self.fail(f"graph '{graph.name}' output '{vi.name}' is not produced by any node, input or initializer")
            graph.outputs.append(value)
        return graph

    def _ordered(self, g: onnx.GraphProto, chain: list[dict]) -> list[onnx.NodeProto]:
        """The nodes in an order where every name is defined before use (ONNX requires it; not all exporters do)."""
        defined = set().union(*[set(s) for s in chain]) | {i.name for i in g.input} | {t.name for t in g.initializer}
        defined |= {sp.values.name for sp in g.sparse_initializer}
        pending = list(g.node)
        order: list[onnx.NodeProto] = []
        while pending:
            rest = []
            for node in pending:
                needed = [n for n in list(node.input) + _captured(node) if n]
                if all(n in defined or self._outer_defined(n, chain) for n in needed):
                    order.append(node)
                    defined.update(o for o in node.output if o)
                else:
                    rest.append(node)
            if len(rest) == len(pending):
                node = rest[0]
                missing = next(n for n in list(node.input) + _captured(node)
                               if n and n not in defined and not self._outer_defined(n, chain))
                produced = {o for n in rest for o in n.output}
                why = "a cycle" if missing in produced else "no node, input or initializer defines it"
                self.fail(f"node '{node.name}' ({node.op_type}) uses '{missing}', but {why}")
            pending = rest
        return order

    @staticmethod
    def _outer_defined(name: str, chain: list[dict]) -> bool:
        return any(name in s for s in chain[1:])

    # -- nodes ---------------------------------------------------------------
    def _node(self, graph: Graph, node: onnx.NodeProto, chain: list[dict]) -> None:
        if not all(isinstance(t, str) for t in (node.op_type, node.domain, node.name)):
            # protobuf hands back bytes for a string field that is not UTF-8 (a corrupt file)
            self.fail(f"a node's op type, domain or name is not UTF-8 text ({node.op_type!r} in {node.domain!r})")
        domain = node.domain or ""
        label = f"node '{node.name}' ({node.op_type})" if node.name else f"{node.op_type} node"
        if is_onnx_domain(domain):
            if domain not in self.opsets and not (domain == "" and "ai.onnx" in self.opsets):
                self.fail(f"{label} uses domain '{domain or 'ai.onnx'}', which the model does not import")
            if not known_onnx_op(node.op_type, domain):
                self.fail(f"{label}: unknown op '{node.op_type}' in the {'default ONNX' if not domain else domain} domain")
        inputs = []
        for name in node.input:
            if not name:
                inputs.append(None)
                continue
            value = _lookup(chain, name)
            if value is None:
                self.fail(f"{label} uses '{name}', which no node, input or initializer defines")
            inputs.append(value)
        bad = next((a.name for a in node.attribute if not isinstance(a.name, str)), None)
        if bad is not None:
            self.fail(f"{label}: an attribute's name is not UTF-8 text ({bad!r})")
        attrs = {a.name: self._attr(a, chain, label) for a in node.attribute}
        op = op_name(domain, node.op_type)
        if op == CONSTANT:
            attrs = {"value": self._constant_value(attrs, label)}
        out_types = [self.types.get(o, UNKNOWN) if o else UNKNOWN for o in node.output]
        if op == CONSTANT:
            out_types = [tensor_type_of(attrs["value"])]
        created = graph.add(op, inputs, attrs, outputs=out_types, name=node.name, output_names=list(node.output))
        for name, value in zip(node.output, created.outputs):
            if name:
                if name in chain[0]:
                    self.fail(f"{label} writes '{name}', which is already defined in this graph "
                              "(ONNX names each tensor once)")
                chain[0][name] = value

    def _constant_value(self, attrs: dict, label: str) -> np.ndarray:
        if len(attrs) != 1:
            self.fail(f"{label} must have exactly one value attribute, has {sorted(attrs) or 'none'}")
        (kind, v), = attrs.items()
        expected = {"value": np.ndarray, "sparse_value": np.ndarray, "value_float": float, "value_int": int,
                    "value_string": (str, bytes), "value_floats": tuple, "value_ints": tuple, "value_strings": tuple}
        if kind in expected and not isinstance(v, expected[kind]):
            self.fail(f"{label}: attribute '{kind}' holds a {type(v).__name__}, not the kind its name says")
        if kind in ("value", "sparse_value"):
            return v
        try:
            return self._constant_of_kind(kind, v, label)
        except (ValueError, TypeError):  # a list attribute of the wrong element kind
            self.fail(f"{label}: attribute '{kind}' holds values of the wrong kind")

    def _constant_of_kind(self, kind: str, v, label: str) -> np.ndarray:
        if kind == "value_float":
            return np.array(v, np.float32)
        if kind == "value_floats":
            return np.array(v, np.float32).reshape(-1)
        if kind == "value_int":
            return np.array(v, np.int64)
        if kind == "value_ints":
            return np.array(v, np.int64).reshape(-1)
        if kind == "value_string":
            return np.array(v, dtype=object)
        if kind == "value_strings":
            return np.array(v, dtype=object).reshape(-1)
        self.fail(f"{label} has an unknown attribute '{kind}'")

    def _attr(self, a: AttributeProto, chain: list[dict], label: str):
        t = a.type
        if a.ref_attr_name:
            self.fail(f"{label}: attribute '{a.name}' refers to a function attribute outside a function")
        if t == AttributeProto.FLOAT:
            return float(a.f)
        if t == AttributeProto.INT:
            return int(a.i)
        if t == AttributeProto.STRING:
            return _text(a.s)
        if t == AttributeProto.TENSOR:
            return self._tensor(a.t)
        if t == AttributeProto.SPARSE_TENSOR:
            return self._tensor(a.sparse_tensor)
        if t == AttributeProto.GRAPH:
            return self._graph(a.g, chain)
        if t == AttributeProto.FLOATS:
            return tuple(float(x) for x in a.floats)
        if t == AttributeProto.INTS:
            return tuple(int(x) for x in a.ints)
        if t == AttributeProto.STRINGS:
            return tuple(_text(s) for s in a.strings)
        if t == AttributeProto.TENSORS:
            return tuple(self._tensor(x) for x in a.tensors)
        if t == AttributeProto.GRAPHS:
            return tuple(self._graph(x, chain) for x in a.graphs)
        if t == AttributeProto.TYPE_PROTO:
            return a.tp
        if t == AttributeProto.TYPE_PROTOS:
            return tuple(a.type_protos)
        self.fail(f"{label}: attribute '{a.name}' has no type")

    def _tensor(self, t) -> np.ndarray:
        if isinstance(t, onnx.SparseTensorProto):
            values = self._tensor(t.values)
            indices = self._tensor(t.indices).astype(np.int64)
            dense = np.zeros(int(np.prod(t.dims, dtype=np.int64)), values.dtype)
            flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, tuple(t.dims))
            dense[flat] = values
            return dense.reshape(tuple(t.dims))
        if t.data_location == TensorProto.EXTERNAL:
            if self.path is None:
                self.fail(f"tensor '{t.name}' has external data but the model was given without its path")
            return load_external_array(self.path, t)
        try:
            DType.from_onnx(t.data_type)
            return numpy_helper.to_array(t)
        except (ValueError, TypeError, KeyError) as e:
            self.fail(f"tensor '{t.name}' cannot be read: {' '.join(str(e).split())}")


def _captured(node: onnx.NodeProto) -> list[str]:
    """Names a node's bodies use from outside them (implicit capture), for ordering."""
    names: list[str] = []
    for a in node.attribute:
        for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
            inner = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                inner.update(n.output)
            for n in g.node:
                names += [x for x in list(n.input) + _captured(n) if x and x not in inner]
            names += [o.name for o in g.output if o.name not in inner]
    return names


def _lookup(chain: list[dict], name: str):
    for scope in chain:
        if name in scope:
            return scope[name]
    return None


def _text(s: bytes) -> str | bytes:
    try:
        return s.decode("utf-8")
    except UnicodeDecodeError:
        return s



def _without_declared_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with no value_info and no shapes on its graphs' outputs (element types kept),
    in every body, so inference decides them."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())

    def clear(g: onnx.GraphProto) -> None:
        del g.value_info[:]
        for vi in g.output:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
        for node in g.node:
            for a in node.attribute:
                for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                    clear(sub)

    clear(proto.graph)
    return proto


def _name_unknown_dims(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its graph inputs' unknown dims named, one symbol each, as onnxruntime reads them.

    paddle2onnx writes an unknown dim as dim_value -1 (not a size) and as dim_param "?" for H and W
    alike (one name would make them equal): both become `<input>_<axis>`. Such dims of the outputs
    are cleared, for inference to fill in.
    """
    graph = proto.graph
    if not any(_unknown(d) for vi in list(graph.input) + list(graph.output) for d in vi.type.tensor_type.shape.dim):
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for vi in proto.graph.input:
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if _unknown(d):
                d.Clear()
                d.dim_param = f"{vi.name}_{k}"
    for vi in proto.graph.output:
        for d in vi.type.tensor_type.shape.dim:
            if _unknown(d):
                d.Clear()
    return proto


def _unknown(d) -> bool:
    return (d.HasField("dim_value") and d.dim_value < 0) or (d.HasField("dim_param") and d.dim_param == "?")
