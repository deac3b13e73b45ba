"""Graph analyses on networkx views of the IR, built on demand and never stored.

A view is a fresh `nx.DiGraph` whose nodes are the IR's `Node` objects of one
graph and whose edges are data flow: p -> u when u uses a result of p. A node
whose nested bodies (If/Loop/Scan) use a result of p counts as its user, so
the view orders nodes the way the IR must. Views lose operand order, repeated
uses and types, which is why the IR never lives in networkx: build a view, ask
your question, drop it. Functions take an optional `dfg` so that several
questions about one unchanged graph can share one view.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import networkx as nx

from .errors import MdocError
from .ir import Graph, Node


def owner_in(graph: Graph, node: Node) -> Node | None:
    """The node of `graph` that is `node` or holds it in a nested body; None when `node` is elsewhere."""
    while node.graph is not graph:
        g = node.graph
        if g is None or g.parent is None:
            return None
        node = g.parent
    return node


def dataflow_graph(graph: Graph) -> nx.DiGraph:
    """A new DiGraph over the nodes of `graph` (not of its bodies), with an edge for each producer -> user."""
    dfg = nx.DiGraph()
    dfg.add_nodes_from(graph)
    for node in graph:
        for out in node.outputs:
            for user, _ in out.uses():
                owner = owner_in(graph, user)
                if owner is not None and owner is not node:
                    dfg.add_edge(node, owner)
    return dfg


def reachable(graph: Graph, src: Node, dst: Node, dfg: nx.DiGraph | None = None) -> bool:
    """Whether `dst` depends on `src` through data flow (a node reaches itself)."""
    dfg = dataflow_graph(graph) if dfg is None else dfg
    return src is dst or nx.has_path(dfg, src, dst)


def would_create_cycle(graph: Graph, new_edges: Iterable[tuple[Hashable, Hashable]],
                       removed: Iterable[Node] = (), dfg: nx.DiGraph | None = None) -> list[Hashable] | None:
    """Would the data flow of `graph` loop after dropping the `removed` nodes and adding `new_edges`?

    Each edge is (producer, user). Its ends are nodes of `graph` or stand-ins
    for nodes not created yet (any hashable object), so a rewrite can ask before
    it touches the graph. Returns the nodes of one loop, in order, or None.
    """
    new_edges = list(new_edges)
    if not new_edges:
        return None
    view = dataflow_graph(graph) if dfg is None else dfg.copy()
    view.remove_nodes_from(list(removed))
    view.add_edges_from(new_edges)
    try:
        return [a for a, _ in nx.find_cycle(view)]
    except nx.NetworkXNoCycle:
        return None


def topological_order(graph: Graph, dfg: nx.DiGraph | None = None) -> list[Node]:
    """The nodes of `graph` in a topological order that keeps the current order wherever it can."""
    dfg = dataflow_graph(graph) if dfg is None else dfg
    position = {node: i for i, node in enumerate(graph)}
    try:
        return list(nx.lexicographical_topological_sort(dfg, key=position.__getitem__))
    except nx.NetworkXUnfeasible:
        loop = nx.find_cycle(dfg)
        names = " -> ".join(f"'{a.name}' ({a.op})" for a, _ in loop)
        raise MdocError(f"graph @{graph.name} has a cycle: {names}") from None


_ENTRY = "<entry>"


def dominators(graph: Graph, dfg: nx.DiGraph | None = None) -> dict[Node, Node | None]:
    """The immediate dominator of each node: the nearest node every path to it passes through.

    Paths start at the graph's inputs and constants (a virtual entry that feeds
    every node without producers); a node dominated only by that entry maps to None.
    """
    dfg = dataflow_graph(graph) if dfg is None else dfg.copy()
    sources = [n for n in dfg if dfg.in_degree(n) == 0]
    dfg.add_edges_from((_ENTRY, n) for n in sources)
    idom = nx.immediate_dominators(dfg, _ENTRY)
    return {n: (None if d == _ENTRY else d) for n, d in idom.items() if n != _ENTRY}
