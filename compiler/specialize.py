"""Binding symbolic input dims to sizes, and input values to constants, before compilation.

Hand-scheduled kernels need static shapes, and most deployments run one batch
size, so `mdoc compile` fixes every symbolic input dim (to the size given with
`--dim NAME=SIZE`, 1 otherwise) and lets shape inference and constant folding
carry the sizes through the graph.

Some operands decide the structure of the computation itself: a Reduce's `axes`
input with keepdims=0 decides the output's rank, Split's sizes the number of
pieces, CumSum's `axis` the loop. The Relax target needs those at compile time;
when a model takes them as graph inputs, `--bind NAME=VALUES` (or
`bind_inputs`) turns the input into a constant of the given value, and the
artifact then computes the model for that value only (the input disappears from
its signature).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import MdocError
from .ir import Model
from .types import TensorType


def bind_dims(model: Model, dims: dict[str, int] | None = None, default: int = 1) -> dict[str, int]:
    """Replace symbolic and unknown dims of the graph inputs; returns the binding used."""
    dims = dict(dims or {})
    seen = set()
    for v in model.graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise MdocError(f"input '{v.name}' has unknown rank ({t}); mdoc cannot compile it")
        shape = []
        for d in t.shape:
            if isinstance(d, str):
                seen.add(d)
                d = dims.setdefault(d, default)
            elif d is None:
                d = default
            shape.append(d)
        v.type = TensorType(t.dtype, tuple(shape))
    unknown = set(dims) - seen
    if unknown:
        raise MdocError(f"--dim names {', '.join(sorted(unknown))}, which no input uses "
                        f"(symbolic dims: {', '.join(sorted(seen)) or 'none'})")
    return {k: v for k, v in dims.items() if k in seen}


def parse_binding(text: str) -> tuple[str, np.ndarray | list[float]]:
    """`axes=0,2` -> ("axes", [0.0, 2.0]); `scales=@s.npy` -> ("scales", the array in s.npy)."""
    name, eq, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or not name or not value:
        raise MdocError(f"--bind '{text}' is not NAME=VALUES (comma-separated numbers) or NAME=@FILE.npy")
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return name, np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MdocError(f"--bind {name}: cannot read {path} as a .npy array ({e})") from None
    try:
        return name, [float(x) for x in value.split(",")]
    except ValueError:
        raise MdocError(f"--bind {name}: '{value}' is not a comma-separated list of numbers") from None


def bind_inputs(model: Model, values: Mapping[str, np.ndarray | list[float]]) -> list[str]:
    """Replace the named graph inputs by constants holding `values`; returns the names bound.

    A value must fit the input's declared type: its element type is converted when
    that keeps its kind (ints stay ints), a list of numbers takes the input's shape
    when the sizes agree, and static dims must match.
    """
    graph = model.graph
    by_name = {v.name: v for v in graph.inputs}
    first = next(iter(graph), None)
    for name, given in values.items():
        v = by_name.get(name)
        if v is None:
            raise MdocError(f"--bind names '{name}', which is not a graph input "
                            f"(inputs: {', '.join(by_name) or 'none'})")
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise MdocError(f"input '{name}' has unknown type ({t}); its value cannot be bound")
        array = _fit(name, given, t)
        const = graph.constant(array, name=name, before=first)
        graph.replace_all_uses(v, const)
        graph.remove_input(v)
    return list(values)


def _fit(name: str, given: np.ndarray | list[float], t: TensorType) -> np.ndarray:
    want = t.dtype.numpy
    if isinstance(given, np.ndarray):
        if not np.can_cast(given.dtype, want, "same_kind") and given.dtype.kind != want.kind:
            raise MdocError(f"--bind {name}: the value is {given.dtype}, input '{name}' is {t}")
        array = given.astype(want)
    else:
        array = np.asarray(given, dtype=np.float64)
        if want.kind in "iub" and not np.all(array == np.round(array)):
            raise MdocError(f"--bind {name}: input '{name}' is {t}, but the values {given} are not integers")
        array = array.astype(want)
        if all(isinstance(d, int) for d in t.shape) and int(np.prod(t.shape)) == array.size:
            array = array.reshape(t.shape)
    if len(array.shape) != len(t.shape) or any(
            isinstance(d, int) and d != n for d, n in zip(t.shape, array.shape)):
        raise MdocError(f"--bind {name}: the value has shape {list(array.shape)}, input '{name}' is {t}")
    return array
