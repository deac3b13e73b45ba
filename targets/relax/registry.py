"""The converter registry: one function per op and opset range, found by the model's opset.

A converter turns one mdoc node into Relax expressions (one per node result):

    @converter("onnx.Relu", since=6)
    def relu(ctx: LowerCtx, node: Node) -> list[relax.Expr]:
        return [relax.op.nn.relu(ctx.input(0))]

Several converters may be registered for one op with different `since`
versions; lowering picks the highest `since` that is <= the model's opset for
the op's domain. Registering the same (op, since) twice replaces the first,
so a plug-in can override a built-in converter.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mdoc.ir import Node

    from .context import LowerCtx

ConverterFn = Callable[["LowerCtx", "Node"], list]

_REGISTRY: dict[str, list[tuple[int, ConverterFn]]] = {}


def converter(*ops: str, since: int = 1) -> Callable[[ConverterFn], ConverterFn]:
    """Register the decorated function as the converter of `ops` from opset `since` on."""

    def wrap(fn: ConverterFn) -> ConverterFn:
        for op in ops:
            versions = _REGISTRY.setdefault(op, [])
            versions[:] = [(s, f) for s, f in versions if s != since]
            insort(versions, (since, fn), key=lambda e: e[0])
        return fn

    return wrap


def lookup(op: str, opset: int) -> ConverterFn | None:
    """The converter of `op` with the highest `since` <= `opset`, or None."""
    best = None
    for since, fn in _REGISTRY.get(op, ()):
        if since <= opset:
            best = fn
    return best


def registered() -> dict[str, list[int]]:
    """Every op with a converter, mapped to the `since` versions registered for it."""
    return {op: [s for s, _ in versions] for op, versions in sorted(_REGISTRY.items())}
