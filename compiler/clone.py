"""Copying bodies of control flow into their parent graph: the tool behind unrolling and inlining.

`clone_graph_into(body, parent, before, value_map)` copies every node of `body`
(If branches, Loop and Scan bodies, and whatever they nest) into `parent` just
before the node `before`, reading each body input from `value_map` and leaving
values of enclosing graphs (implicit captures) as they are. The map grows with
every copied value, so a caller can look up any body value's copy afterwards.

`replace_results(node, values)` then puts those copies in the place of the
control-flow node's results: operands, the outputs of its graph and the outputs
of bodies nested in that graph (which no use list records), keeping the model's
output names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .errors import MdocError
from .ir import CONSTANT, Graph, Node, Value


def clone_graph_into(body: Graph, parent: Graph, before: Node | None, value_map: dict[Value, Value], *,
                     name_prefix: str = "", provenance: str = "") -> list[Value]:
    """Copy `body`'s nodes into `parent` before `before` (at the end when None); return its outputs there.

    Every input of `body` must be bound in `value_map` (body value -> parent value).
    A node whose results are all bound already is not copied: a caller that unrolls
    a loop may copy the body's constants once and bind them for every iteration.
    Nested bodies are copied too, with their uses of `body`'s values redirected.
    Copies keep the op, attributes (arrays are shared, not duplicated), result
    types and value name hints. A copied node is named `name_prefix` + its name,
    or left unnamed when the prefix is empty: it must not repeat its original's
    name, since onnxruntime refuses a model with two nodes of one name.
    """
    for v in body.inputs:
        if v not in value_map:
            raise MdocError(f"cannot clone body @{body.name}: its input %{v.name or '?'} is not bound "
                            f"to a value of graph @{parent.name}")
    for node in body:
        if node.outputs and all(o in value_map for o in node.outputs):
            continue
        copy = _copy_node(node, value_map, name_prefix, provenance)
        if before is not None:
            parent.insert_before(before, copy)
        else:
            parent.append(copy)
    return [value_map.get(v, v) for v in body.outputs]


def clone_graph(body: Graph, value_map: dict[Value, Value], *, name_prefix: str = "",
                provenance: str = "") -> Graph:
    """A detached copy of `body` with fresh inputs; uses of values in `value_map` are redirected."""
    copy = Graph(body.name)
    for v in body.inputs:
        value_map[v] = copy.add_input(v.type, v.name)
    for node in body:
        copy.append(_copy_node(node, value_map, name_prefix, provenance))
    copy.outputs = [value_map.get(v, v) for v in body.outputs]
    return copy


def _copy_node(node: Node, value_map: dict[Value, Value], prefix: str, provenance: str) -> Node:
    inputs = [None if v is None else value_map.get(v, v) for v in node.inputs]
    attrs = {}
    for key, value in node.attrs.items():
        if isinstance(value, Graph):
            value = clone_graph(value, value_map, name_prefix=prefix, provenance=provenance)
        elif isinstance(value, tuple) and value and isinstance(value[0], Graph):
            value = tuple(clone_graph(g, value_map, name_prefix=prefix, provenance=provenance) for g in value)
        attrs[key] = value
    name = f"{prefix}{node.name}" if node.name and prefix else ""
    copy = Node(node.op, inputs, attrs, [o.type for o in node.outputs], name, [o.name for o in node.outputs],
                provenance or node.provenance)
    for sub in copy.subgraphs():
        sub.parent = copy
    for old, new in zip(node.outputs, copy.outputs):
        value_map[old] = new
    return copy


def clone_constants(body: Graph, parent: Graph, before: Node | None) -> dict[Value, Value]:
    """Copy `body`'s own constants into `parent` once; the map binds them for `clone_graph_into`.

    Unrolling N iterations would otherwise copy every weight of the body N times.
    """
    shared: dict[Value, Value] = {}
    for node in body:
        if node.op == CONSTANT:
            shared[node.output] = parent.constant(node.attrs["value"], name=node.output.name, before=before)
    return shared


def is_read(value: Value) -> bool:
    """Whether anything reads `value`: an operand anywhere, or an output of its graph or of a body inside it."""
    if value.has_uses():
        return True
    node = value.producer()
    graph = node.graph if node is not None else value._owner
    return graph is not None and any(o is value for g in _graphs(graph) for o in g.outputs)


def replace_results(node: Node, new_values: Sequence[Value | None], provenance: str = "") -> None:
    """Replace each result of `node` by the matching value everywhere it is read, then erase `node`.

    None stands for a result nothing reads (erasing refuses otherwise).

    Reads are operands, the outputs of `node`'s graph and the outputs of bodies
    nested in it (`Graph.replace_all_uses` reaches them all). A top-level output keeps its name:
    when the replacement is a graph input or already another output, an Identity
    carries the old name.
    """
    graph = node.graph
    if graph is None:
        raise MdocError(f"{node.op} node '{node.name}' is not in a graph")
    if len(new_values) != len(node.outputs):
        raise MdocError(f"{node.op} node '{node.name}' has {len(node.outputs)} results, "
                        f"but {len(new_values)} replacements were given")
    for old, new in zip(node.outputs, new_values):
        if new is None or old is new:
            continue
        if graph.parent is None and any(o is old for o in graph.outputs) and (
                new.is_graph_input or any(o is new for o in graph.outputs)):
            new = graph.add("onnx.Identity", [new], outputs=[old.type], before=node,
                            output_names=[old.name], provenance=provenance).output
        graph.replace_all_uses(old, new)
    graph.erase(node)


def erase_unused_constants(values: Sequence[Value | None]) -> None:
    """Erase the constant nodes among `values`' producers that nothing reads any more.

    A node replaced by its expansion often leaves its weights behind (the expansion
    holds them sliced or transposed); dropping them at once keeps the model from
    carrying both until dce runs.
    """
    for v in values:
        node = v.producer() if v is not None else None
        if node is not None and node.op == CONSTANT and node.graph is not None and not is_read(v):
            node.graph.erase(node)


def _graphs(graph: Graph) -> Iterator[Graph]:
    yield graph
    for node in graph:
        for sub in node.subgraphs():
            yield from _graphs(sub)
