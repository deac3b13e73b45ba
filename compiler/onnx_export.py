"""The ONNX exporter: an mdoc `Model` becomes a ModelProto that passes `onnx.checker` (full check).

Names are the one place where the IR's identity semantics meet ONNX's name-keyed
graphs: graph inputs and outputs keep their names exactly (users feed and read
tensors by them), every other value gets its hint when it is free and a fresh
name otherwise. An output that is also an input, a captured outer value, or a
repeat of another output is written through an Identity so that ONNX's
one-name-one-tensor rule holds. Top-level constants become initializers.

mdoc's own ops (`mdoc.layer_norm`, ...) are written by their export rule
(`OpDef.export`, given an `OpEmitter`): the standard ONNX op where the model's
opset has one, onnxruntime's contrib op (domain com.microsoft) when the caller
asks for `runtime_ops`, else the expansion into primitive ONNX ops. So an
optimized file always runs in onnxruntime, whatever mdoc fused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from .atomic import atomic_write, publish_file, staging_folder
from .errors import MdocError
from .external_data import ExternalWeights
from .ir import CONSTANT, Graph, Model, Value, split_op
from .ops import MDOC_OPS, is_annotation, schema_of
from .types import type_to_onnx
from .version import __version__

# Protobuf refuses messages over 2 GiB; leave room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def export_model(model: Model, value_names: dict[Value, str] | None = None, *,
                 runtime_ops: bool = False, external: ExternalWeights | None = None,
                 weights_as_inputs: int | None = None) -> onnx.ModelProto:
    """The ModelProto of `model`; when `value_names` is given, it receives the ONNX name of every value named.
    `runtime_ops` writes mdoc ops as onnxruntime contrib ops where one exists (`mdoc opt --onnx-runtime-ops`);
    with `external`, large initializers are written to its file as they are made (no copy in the proto);
    `weights_as_inputs`: top-level constants of more elements than this become typed graph inputs, their bytes
    never copied (for shape inference, which needs their types only)."""
    exporter = _Exporter(model, runtime_ops, external)
    exporter.weights_as_inputs = weights_as_inputs
    graph = exporter.graph(model.graph, top=True)
    if value_names is not None:
        value_names.update(exporter.values)
    opsets = dict(model.opset_imports)
    for domain in exporter.domains:
        opsets.setdefault(domain, 1)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="mdoc",
        producer_version=__version__,
    )
    proto.ir_version = model.ir_version
    for k, v in sorted(model.metadata.items()):
        proto.metadata_props.add(key=k, value=v)
    return proto


def save_onnx(model: Model | onnx.ModelProto, path: str | os.PathLike, value_info: bool = False, *,
              runtime_ops: bool = False) -> None:
    """Write atomically: a failure leaves no partial file; weights go to `<name>.data` past 1 GiB.

    The types of intermediate values (`value_info`) of an exported model are left out
    unless asked for: ONNX re-infers them, and an optimized file should not grow by
    its annotations. A ModelProto is written as it is.
    """
    path = Path(path)
    if not isinstance(model, onnx.ModelProto):
        if constant_bytes(model) > EXTERNAL_DATA_THRESHOLD:
            _save_streamed(model, path, value_info, runtime_ops)
            return
        proto = export_model(model, runtime_ops=runtime_ops)
        if not value_info:
            del proto.graph.value_info[:]
    else:
        proto = model
    total = sum(t.ByteSize() for t in proto.graph.initializer)
    if total <= EXTERNAL_DATA_THRESHOLD:
        atomic_write(path, lambda f: f.write(proto.SerializeToString()))
        return
    with staging_folder(path) as tmp:  # the weights file first: the new model never names missing data
        data_name = path.name + ".data"
        onnx.save_model(proto, tmp / path.name, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        publish_file(tmp / data_name, path.resolve().parent / data_name)
        publish_file(tmp / path.name, path)


def constant_bytes(model: Model) -> int:
    """The bytes of the top graph's constants (what becomes initializers)."""
    return sum(np.asarray(n.attrs["value"]).nbytes for n in model.graph if n.op == CONSTANT)


def _save_streamed(model: Model, path: Path, value_info: bool, runtime_ops: bool) -> None:
    """A model with constants past the threshold: each large one written to `<name>.data` as it is exported,
    straight from its (often memory-mapped) array, so the export holds no second copy of the weights."""
    with staging_folder(path) as tmp:
        data_name = path.name + ".data"
        with ExternalWeights(tmp / data_name, threshold=1024) as external:
            proto = export_model(model, runtime_ops=runtime_ops, external=external)
        if not value_info:
            del proto.graph.value_info[:]
        (tmp / path.name).write_bytes(proto.SerializeToString())
        publish_file(tmp / data_name, path.resolve().parent / data_name)
        publish_file(tmp / path.name, path)


class NodeWriter:
    """Single nodes as NodeProtos, their values named consistently from one call to the next.

    For per-node ONNX inference (`mdoc.scoped_inference`), which needs a node and
    the types of its operands by name, not a whole model.
    """

    def __init__(self, model: Model):
        self._exporter = _Exporter(model)

    def name(self, v: Value) -> str:
        return self._exporter.name_of(v)

    def node(self, node) -> onnx.NodeProto:
        return self._exporter._node(node)


class _Exporter:
    def __init__(self, model: Model, runtime_ops: bool = False, external: ExternalWeights | None = None):
        self.model = model
        self.runtime_ops = runtime_ops
        self.external = external  # large top-graph initializers go to its file
        self.weights_as_inputs: int | None = None
        self.names: dict[int, str] = {}
        self.values: dict[Value, str] = {}
        self.used: set[str] = set()
        self.domains: set[str] = set()
        self.node_names: set[str] = set()
        self.counter = 0
        self.superseded: set[str] = set()  # constants an export rule wrote again in another form
        self.rule_initializers: list[onnx.TensorProto] = []  # large constants export rules add (top graph)
        self.in_top = False

    def fresh(self, hint: str) -> str:
        if hint and hint not in self.used:
            self.used.add(hint)
            return hint
        base = hint or "_v"
        while True:
            self.counter += 1
            name = f"{base}_{self.counter}"
            if name not in self.used:
                self.used.add(name)
                return name

    def name_of(self, v: Value) -> str:
        key = id(v)
        if key not in self.names:
            self.names[key] = self.fresh(v.name)
            self.values[v] = self.names[key]
        return self.names[key]

    # -- graphs --------------------------------------------------------------
    def graph(self, g: Graph, top: bool = False) -> onnx.GraphProto:
        outer, self.in_top = self.in_top, top
        try:
            return self._graph(g, top)
        finally:
            self.in_top = outer

    def _graph(self, g: Graph, top: bool) -> onnx.GraphProto:
        inputs = [self._value_info(v, self.name_of(v)) for v in g.inputs]
        local = {id(v) for v in g.inputs} | {id(o) for n in g for o in n.outputs}
        # Outputs are named before anything else so they keep their names.
        out_names: list[str] = []
        aliases: list[tuple[str, str]] = []
        seen: set[int] = set()
        for v in g.outputs:
            direct = id(v) in local and not v.is_graph_input and id(v) not in seen and id(v) not in self.names
            if direct:
                out_names.append(self.name_of(v))
            else:
                alias = self.fresh(v.name if v.name not in self.used else "")
                aliases.append((alias, v))
                out_names.append(alias)
            seen.add(id(v))
        nodes, inits, infos = [], [], []
        for node in g:
            if top and node.op == CONSTANT and self.weights_as_inputs is not None \
                    and np.asarray(node.attrs["value"]).size > self.weights_as_inputs:
                inputs.append(self._value_info(node.output, self.name_of(node.output)))
                continue
            if top and node.op == CONSTANT:
                inits.append(self._tensor(node.attrs["value"], self.name_of(node.output)))
                continue
            nodes.extend(self._nodes(node))
            for o in node.outputs:
                if not any(o is x for x in g.outputs):
                    info = self._value_info(o, self.name_of(o), optional=True)
                    if info is not None:
                        infos.append(info)
        for alias, v in aliases:
            nodes.append(helper.make_node("Identity", [self.name_of(v)], [alias]))
        outputs = [self._value_info(v, n) for v, n in zip(g.outputs, out_names)]
        if top:
            inits += self.rule_initializers
        if top and self.superseded:
            read = _names_read(nodes) | set(out_names)
            inits = [t for t in inits if t.name not in self.superseded or t.name in read]
        if self.model.ir_version < 4:  # before IR 4, every initializer must also be a graph input
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
        return helper.make_graph(nodes, g.name, inputs, outputs, initializer=inits, value_info=infos)

    def _value_info(self, v: Value, name: str, optional: bool = False):
        tp = type_to_onnx(v.type)
        if tp is None:
            return None if optional else helper.make_value_info(name, onnx.TypeProto())
        return helper.make_value_info(name, tp)

    def _tensor(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        array = np.asarray(array)
        if array.dtype == object:
            data = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
            return helper.make_tensor(name, onnx.TensorProto.STRING, array.shape, data)
        if self.external is not None and self.in_top:
            return self.external.tensor(array, name)
        # np.ascontiguousarray would turn a scalar into shape [1]; from_array copes with any layout.
        return numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(order="C"), name)

    # -- nodes ---------------------------------------------------------------
    def _nodes(self, node) -> list[onnx.NodeProto]:
        opdef = MDOC_OPS.get(node.op)
        if opdef is None or opdef.export is None:
            return [self._node(node)]
        emitter = OpEmitter(self, node)
        opdef.export(node, emitter)
        return emitter.protos

    def _node(self, node) -> onnx.NodeProto:
        domain, op_type = split_op(node.op)
        if domain not in ("",):
            self.domains.add(domain)
        inputs = ["" if v is None else self.name_of(v) for v in node.inputs]
        outputs = [self.name_of(o) for o in node.outputs]
        schema = schema_of(node.op, self.model.opset_imports)
        attrs = [self._attr(k, v, schema) for k, v in sorted(node.attrs.items()) if not is_annotation(k)]
        proto = helper.make_node(op_type, inputs, outputs, name=self._node_name(node.name), domain=domain or None)
        proto.attribute.extend(attrs)
        return proto

    def _node_name(self, hint: str) -> str | None:
        """Node names are hints too, but onnxruntime refuses two nodes of one name: make them unique."""
        if not hint:
            return None
        name, k = hint, 0
        while name in self.node_names:
            k += 1
            name = f"{hint}_{k}"
        self.node_names.add(name)
        return name

    def _attr(self, name: str, value, schema) -> AttributeProto:
        kind = schema.attributes[name].type if schema is not None and name in schema.attributes else None
        if isinstance(value, Graph):
            return helper.make_attribute(name, self.graph(value))
        if isinstance(value, np.ndarray):
            if kind == AttributeProto.SPARSE_TENSOR:
                raise MdocError(f"attribute '{name}': sparse tensor attributes are exported dense only")
            a = AttributeProto(name=name, type=AttributeProto.TENSOR)
            a.t.CopyFrom(self._tensor(value, ""))
            return a
        if isinstance(value, tuple):
            if value and isinstance(value[0], Graph):
                return helper.make_attribute(name, [self.graph(x) for x in value])
            if value and isinstance(value[0], np.ndarray):
                return helper.make_attribute(name, [self._tensor(x, "") for x in value])
            if kind is None and not value:
                kind = AttributeProto.INTS
            if kind == AttributeProto.FLOATS:
                value = [float(x) for x in value]
            return helper.make_attribute(name, list(value), attr_type=kind)
        if kind == AttributeProto.FLOAT:
            value = float(value)
        return helper.make_attribute(name, value, attr_type=kind)


def _names_read(nodes) -> set[str]:
    """Every tensor name the nodes read, in their subgraphs too."""
    read: set[str] = set()
    for n in nodes:
        read.update(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                read |= _names_read(g.node) | {o.name for o in g.output}
    return read


class OpEmitter:
    """What an mdoc op's export rule writes with: the node's operand and result names, the opset,
    whether contrib ops are wanted, and `emit` / `const` to add ONNX nodes.

    The last node an export rule emits must write `outputs` (the mdoc node's results keep their names).
    """

    def __init__(self, exporter: _Exporter, node):
        self._exporter = exporter
        self.node = node
        self.opset = exporter.model.opset_of("onnx.Add")
        self.runtime_ops = exporter.runtime_ops
        self.inputs = ["" if v is None else exporter.name_of(v) for v in node.inputs]
        self.outputs = [exporter.name_of(o) for o in node.outputs]
        self.protos: list[onnx.NodeProto] = []
        self._base = node.name or node.op_type

    def emit(self, op_type: str, inputs, outputs: int | list[str] = 1, domain: str = "", **attrs) -> list[str]:
        """Add one ONNX node; returns its result names (fresh ones when `outputs` is a count)."""
        if domain:
            self._exporter.domains.add(domain)
        names = outputs if isinstance(outputs, list) else [self._exporter.fresh(f"{self._base}/{op_type}")
                                                           for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.protos.append(helper.make_node(op_type, list(inputs), names, domain=domain or None,
                                            name=self._exporter._node_name(f"{self._base}/{op_type}"), **attrs))
        return names

    def supersede(self, i: int) -> None:
        """Operand `i` (a constant) is written in another form by this rule: the file keeps it only
        if something else reads it."""
        if self.inputs[i]:
            self._exporter.superseded.add(self.inputs[i])

    def weight(self, value, dtype) -> str:
        """`value` as `dtype` in an initializer (in the top graph; a Constant node in a body), so large
        rewritten weights count toward the file's external-data threshold like any other."""
        if not self._exporter.in_top:
            return self.const(value, dtype)
        name = self._exporter.fresh(f"{self._base}/weight")
        self._exporter.rule_initializers.append(self._exporter._tensor(np.asarray(value, dtype=dtype), name))
        return name

    def const(self, value, dtype) -> str:
        """A Constant node holding `value` as `dtype`."""
        name = self._exporter.fresh(f"{self._base}/const")
        tensor = self._exporter._tensor(np.asarray(value, dtype=dtype), name)
        self.protos.append(helper.make_node("Constant", [], [name], value=tensor))
        return name
