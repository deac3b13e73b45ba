"""Binding symbolic input dims to sizes, and input values to constants, before compilation.

Symbolic dims stay symbolic unless the user asks otherwise: one artifact then takes
every size the model declares (its kernels take run-time extents). Specializing is a
choice, made with `--dim NAME=SIZE` (a symbol, wherever it appears) or `--shape
INPUT=1x3x480x640` (one input's dims; `?` keeps a dim symbolic), and shape inference
and constant folding carry the sizes through the graph; a static shape can buy speed
where a kernel tiles better at a known size. `mdoc tune` measures kernels at concrete
sizes, so it binds the dims it is not told (to 1, `default`).

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


def bind_dims(model: Model, dims: dict[str, int] | None = None, default: int | None = None) -> dict[str, int]:
    """Fix the named symbolic dims of the graph inputs (and, with `default`, every other
    symbolic or unknown one) to sizes; returns the binding used."""
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
                if d in dims or default is not None:
                    d = dims.setdefault(d, default)
            elif d is None and default is not None:
                d = default
            shape.append(d)
        v.type = TensorType(t.dtype, tuple(shape))
    unknown = set(dims) - seen
    if unknown:
        raise MdocError(f"--dim names {', '.join(sorted(unknown))}, which no input uses "
                        f"(symbolic dims: {', '.join(sorted(seen)) or 'none'})")
    return {k: v for k, v in dims.items() if k in seen}


def parse_shape(text: str) -> tuple[str, tuple[int | None, ...]]:
    """`image=1x3x?x?` -> ("image", (1, 3, None, None)); `?` keeps a dim as the model declares it."""
    name, eq, value = text.rpartition("=")
    dims = value.strip().lower().split("x") if value.strip() else []
    if not eq or not name.strip() or not dims or not all(d == "?" or d.isdigit() for d in dims):
        raise MdocError(f"--shape '{text}' is not INPUT=DIMS with DIMS like 1x3x224x224 (? keeps a dim symbolic)")
    return name.strip(), tuple(None if d == "?" else int(d) for d in dims)


def specialize_shapes(model: Model, shapes: Mapping[str, tuple[int | None, ...]]) -> None:
    """Give the named graph inputs the static dims of `shapes` (None keeps the model's dim).

    A dim that is static in the model must match; a symbolic one becomes the size, for
    that input alone (other inputs sharing the symbol keep it, and the artifact checks
    at run time that they agree).
    """
    by_name = {v.name: v for v in model.graph.inputs}
    for name, dims in shapes.items():
        v = _graph_input(by_name, name, "--shape")
        t = v.type
        if not isinstance(t, TensorType) or (t.shape is not None and len(t.shape) != len(dims)):
            raise MdocError(f"--shape {name}: {len(dims)} dims given, input '{name}' is {t}")
        old = t.shape if t.shape is not None else (None,) * len(dims)
        for axis, (want, have) in enumerate(zip(dims, old)):
            if want is not None and isinstance(have, int) and have != want:
                raise MdocError(f"--shape {name}: dim {axis} is {have} in the model, not {want}")
        v.type = TensorType(t.dtype, tuple(have if want is None else want for want, have in zip(dims, old)))


def dynamic_dims(model: Model) -> dict[str, list]:
    """Each graph input's dims known only at run time: {input: [axis or symbol, ...]}, for the manifest."""
    out = {}
    for v in model.graph.inputs:
        t = v.type
        if isinstance(t, TensorType) and t.shape is not None:
            dyn = [d if isinstance(d, str) else axis for axis, d in enumerate(t.shape) if not isinstance(d, int)]
            if dyn:
                out[v.name] = dyn
    return out


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
        v = _graph_input(by_name, name, "--bind")
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


def _graph_input(by_name: dict, name: str, flag: str):
    """The graph input `flag` names, or a one-line error listing the inputs there are."""
    if name not in by_name:
        raise MdocError(f"{flag} names '{name}', which is not a graph input (inputs: {', '.join(by_name) or 'none'})")
    return by_name[name]
