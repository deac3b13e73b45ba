"""mdoc's own type inference, node by node, through every If/Loop/Scan body, after ONNX's.

ONNX's whole-model inference leaves ranks unknown inside bodies that read
values of an enclosing graph: data propagation stops at the body's edge, so an
Unsqueeze whose axes are an outer constant, a Reshape to an outer shape tensor,
and everything after them come out as `f32[*]` (exporters such as torch.onnx
put every constant in the outer graph). A recurrent layer or a Conv there then
reaches decompose-rnn or the backend with no rank.

`refine_types(model)` walks the graph in order, bodies included, and for each
node hands ONNX's own single-node inference (`infer_node_outputs`) the types
mdoc knows and the values of small constant operands, wherever in the enclosing
graphs they live. Small integer values computed from shapes (Shape, Gather,
Concat, ... of static dims) are carried along as known values too, which is
data propagation across scopes. Around that:

* bodies get their input types from the node that holds them: an If branch
  sees the outer values themselves, a Loop body the iteration number, the
  condition and its carried values, a Scan body its state and one slice of each
  scanned input. A carried value is assumed to keep its shape from one
  iteration to the next; where the body says otherwise, the dims that change
  are forgotten and the body is inferred again (the speculative types are
  undone first, so nothing wrong survives).
* results of If, Loop and Scan are joined from their bodies' outputs.
* weights tell what an operand must be: an LSTM/GRU/RNN's W [dirs, gates *
  hidden, input] makes X rank 3 with `input` last; a Conv's W gives its X's rank
  and channels; a matrix B of MatMul the last dim of A; Gemm's B the inner dim.

Types only gain information (`merge`); graph inputs of the top graph and
constants keep theirs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import MdocError
from .evaluator import try_fold
from .ir import CONSTANT, Graph, Model, Node, Value
from .onnx_export import NodeWriter
from .ops import schema_of
from .types import UNKNOWN, DType, TensorType, Type, merge, type_from_onnx, type_to_onnx

DATA_LIMIT = 1024
"""Operand values up to this many elements are handed to ONNX's inference (shapes, axes, pads, ...)."""

# ops whose small integer results are worth computing ahead of time: the arithmetic of shapes
_SHAPE_OPS = frozenset({
    "Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity",
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Min", "Max", "Equal", "Less", "Greater", "Not", "Where",
    "ReduceProd", "ReduceSum", "Flatten",
})
_RECURRENT = frozenset({"onnx.LSTM", "onnx.GRU", "onnx.RNN"})


def refine_types(model: Model) -> bool:
    """Fill types ONNX left unknown, inside bodies too; return whether any type changed."""
    refiner = _Refiner(model)
    refiner.graph(model.graph)
    return any(v.type != t for v, t in refiner.original.items())


def join(a: Type, b: Type) -> Type:
    """A type that holds for a value that is sometimes `a` and sometimes `b` (If branches, loop iterations)."""
    if not isinstance(a, TensorType) or not isinstance(b, TensorType):
        return a if a == b else UNKNOWN
    if a.dtype is not b.dtype:
        return UNKNOWN
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return TensorType(a.dtype, None)
    return TensorType(a.dtype, tuple(x if x == y else None for x, y in zip(a.shape, b.shape)))


class _Refiner:
    def __init__(self, model: Model):
        self.model = model
        self.writer = NodeWriter(model)
        self.opsets = [helper.make_opsetid(d, v) for d, v in sorted(model.opset_imports.items())]
        self.known: dict[Value, np.ndarray] = {}
        self.undo: list[tuple[Value, Type | None]] = []  # (value, old type), or (value, None) for a known value
        self.refined: set[Value] = set()  # values whose type this run changed (some maybe undone since)
        self.original: dict[Value, Type] = {}  # the type each changed value had before this run

    # -- bookkeeping ---------------------------------------------------------------
    def refine(self, v: Value, new: Type, inferred: bool = False) -> None:
        """Give `v` what `new` adds to its type (never on constants or the top graph's inputs). An `inferred`
        type (ONNX's inference of the node that makes `v`, from its operands' types) of the same element type
        replaces a shape it contradicts: a declared shape the nodes do not make loses, as in `_infer` of the
        importer, where ONNX's whole-model inference could not run (an ir_version 3 model whose
        initializers are not graph inputs). A contradicted element type is refused in `plain_node`."""
        if v.const_value is not None or (v.is_graph_input and v in self.model.graph.inputs):
            return
        merged = merge(v.type, new)
        if not _consistent(v.type, merged):
            overrides = inferred and isinstance(v.type, TensorType) and isinstance(new, TensorType) \
                and new.dtype is v.type.dtype and new.shape is not None
            if not overrides:
                return
            merged = new
        if merged != v.type:
            self.undo.append((v, v.type))
            self.original.setdefault(v, v.type)
            v.type = merged
            self.refined.add(v)

    def set_known(self, v: Value, array: np.ndarray) -> None:
        self.known[v] = array
        self.undo.append((v, None))

    def rollback(self, mark: int) -> None:
        while len(self.undo) > mark:
            v, old = self.undo.pop()
            if old is None:
                self.known.pop(v, None)
            else:
                v.type = old

    def value_of(self, v: Value) -> np.ndarray | None:
        c = v.const_value
        return c if c is not None else self.known.get(v)

    # -- graphs ------------------------------------------------------------------------
    def graph(self, g: Graph) -> None:
        for node in g:
            if node.op == CONSTANT:
                continue
            self.hint_operands(node)
            if node.op == "onnx.If":
                self.if_node(node)
            elif node.op == "onnx.Loop":
                self.loop_node(node)
            elif node.op == "onnx.Scan" and self.model.opset_of(node.op) >= 9:
                self.scan_node(node)
            elif not any(True for _ in node.subgraphs()):
                self.plain_node(node)
                self.propagate_value(node)

    def plain_node(self, node: Node) -> None:
        """ONNX's inference of this one node, from the operand types and small operand values mdoc has."""
        if all(_complete(o.type) for o in node.outputs) and not any(v in self.refined for v in node.inputs) \
                and not any(o in node.graph.outputs for o in node.outputs):
            return  # ONNX typed it fully and nothing it reads changed since (a graph output's type may be only
            # declared: ONNX infers nothing past a node listed before its operands' producers)
        schema = schema_of(node.op, self.model.opset_imports)
        if schema is None:
            return
        types, data = {}, {}
        for v in node.inputs:
            if v is None:
                continue
            tp = type_to_onnx(v.type)
            if tp is None:
                return  # ONNX's inference needs every operand's type
            name = self.writer.name(v)
            types[name] = tp
            array = self.value_of(v)
            if array is not None and array.size <= DATA_LIMIT and array.dtype != object:
                data[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        try:
            out = onnx.shape_inference.infer_node_outputs(schema, self.writer.node(node), types, data,
                                                          opset_imports=self.opsets,
                                                          ir_version=self.model.ir_version)
        except Exception:  # a help, as in shape_inference: a node ONNX cannot infer keeps its types
            out = {}
        for v in node.outputs:
            tp = out.get(self.writer.name(v))
            if tp is not None:
                new = type_from_onnx(tp)
                if isinstance(v.type, TensorType) and isinstance(new, TensorType) and v.type.dtype is not new.dtype:
                    label = f"node '{node.name}' ({node.op})" if node.name else f"a {node.op} node"
                    raise MdocError(f"{label} makes {new} for '{v.name}', which is declared {v.type}")
                self.refine(v, new, inferred=True)
        if node.op == "onnx.Reshape":
            self.reshape_rank(node)

    def reshape_rank(self, node: Node) -> None:
        """A Reshape to a shape computed at run time has as many dims as that shape has elements,
        which ONNX does not say (paddle2onnx's classifier heads: Reshape(x, Concat(Shape(x)[:1], [200])))."""
        if len(node.inputs) != 2 or None in node.inputs or len(node.outputs) != 1:
            return  # malformed: the verifier refuses it with the node's name
        x, shape, y = node.input(0), node.input(1), node.outputs[0]
        if not isinstance(x.type, TensorType) or not isinstance(y.type, TensorType) or y.type.shape is not None:
            return
        if isinstance(shape.type, TensorType) and shape.type.shape is not None and len(shape.type.shape) == 1 \
                and isinstance(shape.type.shape[0], int):
            self.refine(y, TensorType(x.type.dtype, (None,) * shape.type.shape[0]))

    def propagate_value(self, node: Node) -> None:
        """Compute small integer results of shape arithmetic, so later nodes (in bodies too) see them."""
        if node.op_type not in _SHAPE_OPS or not node.op.startswith("onnx."):
            return
        arrays = [None if v is None else self.value_of(v) for v in node.inputs]
        if node.op_type not in ("Shape", "Size") and any(
                v is not None and a is None for v, a in zip(node.inputs, arrays)):
            return
        results = try_fold(node, self.model.opset_of(node.op), arrays)
        if results is None:
            return
        for v, r in zip(node.outputs, results):
            if r.size <= DATA_LIMIT and r.dtype.kind in "iub":
                self.set_known(v, r)

    # -- control flow ------------------------------------------------------------------
    def if_node(self, node: Node) -> None:
        branches = [node.attrs.get("then_branch"), node.attrs.get("else_branch")]
        for b in branches:
            if isinstance(b, Graph):
                self.graph(b)
        if not all(isinstance(b, Graph) and len(b.outputs) == len(node.outputs) for b in branches):
            return
        for k, v in enumerate(node.outputs):
            self.refine(v, join(branches[0].outputs[k].type, branches[1].outputs[k].type))

    def loop_node(self, node: Node) -> None:
        body = node.attrs.get("body")
        if not isinstance(body, Graph):
            return  # no body: the verifier refuses the node with its name
        carried = list(node.inputs[2:])
        n = len(carried)
        if len(body.inputs) != 2 + n or len(body.outputs) < 1 + n:
            return
        fixed = [TensorType(DType.I64, ()), TensorType(DType.BOOL, ())]
        self.body_with_state(body, fixed, carried, body.inputs[2:], body.outputs[1:1 + n], [])
        for j in range(n):
            self.refine(node.outputs[j], join(_type(carried[j]), body.outputs[1 + j].type))
        for k, v in enumerate(node.outputs[n:]):
            element = body.outputs[1 + n + k].type
            if isinstance(element, TensorType):
                self.refine(v, TensorType(element.dtype, None if element.shape is None else (None, *element.shape)))

    def scan_node(self, node: Node) -> None:
        body = node.attrs.get("body")
        m = node.attrs.get("num_scan_inputs", 0)
        if not isinstance(body, Graph) or not isinstance(m, int):
            return  # the verifier refuses the node with its name
        n = len(node.inputs) - m
        if n < 0 or len(body.inputs) != n + m or len(body.outputs) < n:
            return
        in_axes = list(node.attrs.get("scan_input_axes", ())) or [0] * m
        slices, length = [], None
        for x, axis in zip(node.inputs[n:], in_axes):
            t = _type(x)
            shape = t.shape if isinstance(t, TensorType) else None
            if shape is None:
                slices.append(TensorType(t.dtype, None) if isinstance(t, TensorType) else UNKNOWN)
                continue
            axis %= len(shape)
            slices.append(TensorType(t.dtype, shape[:axis] + shape[axis + 1:]))
            length = shape[axis] if length is None else (length if length == shape[axis] else None)
        self.body_with_state(body, [], list(node.inputs[:n]), body.inputs[:n], body.outputs[:n],
                             list(zip(body.inputs[n:], slices)))
        for j in range(n):
            self.refine(node.outputs[j], join(_type(node.inputs[j]), body.outputs[j].type))
        out_axes = list(node.attrs.get("scan_output_axes", ())) or [0] * (len(body.outputs) - n)
        for k, v in enumerate(node.outputs[n:]):
            element = body.outputs[n + k].type
            if not isinstance(element, TensorType):
                continue
            shape = None
            if element.shape is not None and k < len(out_axes):
                axis = out_axes[k] % (len(element.shape) + 1)
                shape = element.shape[:axis] + (length,) + element.shape[axis:]
            self.refine(v, TensorType(element.dtype, shape))

    def body_with_state(self, body: Graph, fixed: list[Type], init: list[Value | None], state_in: list[Value],
                        state_out: list[Value], slices: list[tuple[Value, Type]]) -> None:
        """Infer `body`, its first inputs typed `fixed`, its state inputs assumed to keep `init`'s types.

        After each attempt the state outputs are compared with the assumption; dims
        that differ are forgotten, the attempt is undone and the body inferred again
        (each round forgets at least one dim, so this ends).
        """
        assumed = [_type(v) for v in init]
        while True:
            mark = len(self.undo)
            for v, t in zip(body.inputs, fixed):
                self.refine_body_input(v, t)
            for v, t in slices:
                self.refine_body_input(v, t)
            for v, t in zip(state_in, assumed):
                self.refine_body_input(v, t)
            self.graph(body)
            widened = [join(a, o.type) for a, o in zip(assumed, state_out)]
            if widened == assumed:
                return
            self.rollback(mark)
            assumed = widened

    def refine_body_input(self, v: Value, t: Type) -> None:
        if isinstance(t, TensorType):
            self.refine(v, t)

    # -- what weights say about operands -----------------------------------------------------
    def hint_operands(self, node: Node) -> None:
        op, inputs = node.op, node.inputs
        if op in _RECURRENT and len(inputs) > 1 and inputs[0] is not None and inputs[1] is not None:
            w = _type(inputs[1])
            if isinstance(w, TensorType) and w.shape is not None and len(w.shape) == 3:
                self.hint(inputs[0], (None, None, w.shape[2]))
        elif op == "onnx.Conv" and len(inputs) > 1 and inputs[1] is not None:
            w = _type(inputs[1])
            if isinstance(w, TensorType) and w.shape is not None and len(w.shape) >= 3 and isinstance(w.shape[1], int):
                group = node.attrs.get("group", 1)
                self.hint(inputs[0], (None, w.shape[1] * group) + (None,) * (len(w.shape) - 2))
        elif op == "onnx.MatMul" and len(inputs) == 2:
            b, a = _type(inputs[1]), _type(inputs[0])
            if (isinstance(b, TensorType) and b.shape is not None and len(b.shape) == 2
                    and isinstance(a, TensorType) and a.shape is not None and len(a.shape) >= 1):
                self.hint(inputs[0], a.shape[:-1] + (b.shape[0],))
        elif op == "onnx.Gemm" and len(inputs) >= 2:
            b = _type(inputs[1])
            if isinstance(b, TensorType) and b.shape is not None and len(b.shape) == 2:
                k = b.shape[1] if node.attrs.get("transB", 0) else b.shape[0]
                self.hint(inputs[0], (k, None) if node.attrs.get("transA", 0) else (None, k))

    def hint(self, v: Value | None, shape: tuple) -> None:
        """Refine `v` to `shape` (None dims say nothing) when that agrees with what `v` has."""
        if v is None or not isinstance(v.type, TensorType):
            return
        self.refine(v, TensorType(v.type.dtype, shape))


def _type(v: Value | None) -> Type:
    return UNKNOWN if v is None else v.type


def _complete(t: Type) -> bool:
    """A tensor type with every dim known (an int or a symbol)."""
    return isinstance(t, TensorType) and t.shape is not None and all(d is not None for d in t.shape)


def _consistent(old: Type, new: Type) -> bool:
    """Whether `new` only adds to `old`: same element type and rank, no known dim changed to another int."""
    if not isinstance(old, TensorType):
        return True
    if not isinstance(new, TensorType) or old.dtype is not new.dtype:
        return False
    if old.shape is None:
        return True
    if new.shape is None or len(new.shape) != len(old.shape):
        return False
    return all(not (isinstance(a, int) and a != b) for a, b in zip(old.shape, new.shape))
