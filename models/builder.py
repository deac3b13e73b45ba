"""A small graph builder shared by the zoo's model builders.

Models are written with `onnx.helper` directly rather than exported from a
framework, so the zoo needs no torch and no downloads.  The builder keeps the
bookkeeping in one place: unique node and value names in the style of
PyTorch's exporter (``/layer1/0/conv1/Conv`` producing
``/layer1/0/conv1/Conv_output_0``), weights drawn from one seeded generator so
that the same arguments always give byte-identical models, and small constants
emitted as ``Constant`` nodes, as the exporter does, so that constant folding
and CSE have the work they would have on a real exported model.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mdoc.external_data import ExternalWeights

OPSET = 17
IR_VERSION = 8
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64

EXAMPLE_INPUTS_KEY = "mdoc.example_inputs"
"""Metadata key holding the example sizes of symbolic dims and the ranges of integer inputs."""

Dim = int | str
"""A dimension of a graph input or output: an int, or a symbol such as ``"N"``."""


class GraphBuilder:
    """Accumulates the nodes, initializers and inputs of one ONNX graph.

    With `external`, large weights go straight to its file instead of into the model.
    """

    def __init__(self, name: str, seed: int = 0, external: ExternalWeights | None = None):
        self.name = name
        self.external = external
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._scope: list[str] = []
        self._node_names: Counter[str] = Counter()
        self._param_names: set[str] = set()

    # -- names ---------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self, module: str) -> Iterator[None]:
        """Name the nodes built inside after the dotted module path ``module`` (absolute, not nested)."""
        outer, self._scope = self._scope, module.split(".") if module else []
        try:
            yield
        finally:
            self._scope = outer

    def _node_name(self, op_type: str) -> str:
        base = "/" + "/".join([*self._scope, op_type])
        count = self._node_names[base]
        self._node_names[base] += 1
        return base if count == 0 else f"{base}_{count}"

    @contextlib.contextmanager
    def body(self) -> Iterator[list[onnx.NodeProto]]:
        """Build the nodes of an If branch or Loop body: nodes made inside go to the yielded list.

        Weights (`param`, `normal`, ...) still go to the outer graph, and the body
        uses them by name, as PyTorch's exporter writes a branch that reads a
        module's parameters. Finish the body with `make_body`.
        """
        outer, self.nodes = self.nodes, []
        try:
            yield self.nodes
        finally:
            self.nodes = outer

    # -- graph inputs and parameters -------------------------------------------

    def input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def param(self, name: str, array: np.ndarray) -> str:
        """Add an initializer (a weight); the name is the parameter's module path."""
        if name in self._param_names:
            raise ValueError(f"parameter {name!r} is defined twice in graph {self.name!r}")
        self._param_names.add(name)
        array = np.ascontiguousarray(array)
        self.initializers.append(self.external.tensor(array, name) if self.external is not None
                                 else numpy_helper.from_array(array, name))
        return name

    def normal(self, name: str, shape: Sequence[int], std: float, mean: float = 0.0) -> str:
        return self.param(name, (mean + std * self.rng.standard_normal(shape)).astype(np.float32))

    def uniform(self, name: str, shape: Sequence[int], low: float, high: float) -> str:
        return self.param(name, self.rng.uniform(low, high, shape).astype(np.float32))

    def const(self, value: float | int | Sequence, dtype: type = np.float32) -> str:
        """A ``Constant`` node, as the exporter writes scalars and shape pieces (a fresh node per use)."""
        array = np.asarray(value, dtype=dtype)
        return self.op("Constant", [], value=numpy_helper.from_array(array))

    # -- nodes -----------------------------------------------------------------

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        outputs: int | Sequence[str] = 1,
        **attrs: object,
    ) -> str | tuple[str, ...]:
        """Append a node; return its output name, or a tuple of names if it has several.

        ``outputs`` is either a count (names are derived from the node name) or
        explicit names, for values that are graph outputs.  Use ``""`` in
        ``inputs`` for an omitted optional input.
        """
        node_name = self._node_name(op_type)
        if isinstance(outputs, int):
            outputs = [f"{node_name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=node_name, **attrs))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def rename(self, value: str, name: str) -> str:
        """Give the node output ``value`` the name ``name`` (for graph outputs), updating its uses."""
        for node in self.nodes:
            for names in (node.input, node.output):
                for i, n in enumerate(names):
                    if n == value:
                        names[i] = name
        return name

    def shape_of(self, x: str, keep: Sequence[int], tail: Sequence[int]) -> str:
        """The shape ``x.shape[keep...] + tail`` computed at run time, as the exporter writes
        ``x.view(x.size(0), x.size(1), *tail)`` for a model with dynamic axes:
        Shape, Gather and Unsqueeze for each kept dimension, then Concat.
        """
        pieces = []
        for axis in keep:
            size = self.op("Gather", [self.op("Shape", [x]), self.const(axis, np.int64)], axis=0)
            pieces.append(self.op("Unsqueeze", [size, self.const([0], np.int64)]))
        if tail:
            pieces.append(self.const(list(tail), np.int64))
        return self.op("Concat", pieces, axis=0)

    def make_body(self, nodes: Sequence[onnx.NodeProto], name: str, inputs: Sequence[onnx.ValueInfoProto],
                  outputs: Sequence[tuple[str, int, Sequence[Dim] | None]]) -> onnx.GraphProto:
        """An If branch or Loop body graph from nodes built under `body()`."""
        outs = [helper.make_tensor_value_info(n, t, None if s is None else list(s)) for n, t, s in outputs]
        return helper.make_graph(list(nodes), name, list(inputs), outs)

    # -- the model ----------------------------------------------------------------

    def model(
        self,
        outputs: Sequence[tuple[str, int, Sequence[Dim]]],
        *,
        doc: str,
        example_dims: dict[str, int] | None = None,
        int_ranges: dict[str, tuple[int, int]] | None = None,
    ) -> onnx.ModelProto:
        """Finish the graph and check it with the full ONNX checker (shape inference included).

        ``example_dims`` (a typical size for each symbolic dimension) and
        ``int_ranges`` (valid ``[low, high)`` values of integer inputs) are kept
        in the model's metadata so that `example_inputs` can feed a saved model
        valid data without knowing which builder made it.
        """
        graph = helper.make_graph(
            self.nodes,
            self.name,
            self.inputs,
            [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="mdoc.models",
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        metadata = {"example_dims": example_dims or {}, "int_ranges": int_ranges or {}}
        helper.set_model_props(model, {EXAMPLE_INPUTS_KEY: json.dumps(metadata, sort_keys=True)})
        if self.external is None:
            onnx.checker.check_model(model, full_check=True)
        else:  # the checker would resolve external data against the working directory: shapes only
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        return model
