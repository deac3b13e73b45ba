"""The checks every call of a compiled artifact makes on its inputs, prepared once at load time.

A small model runs in well under a millisecond, so what Python does around the
call shows in its latency: re-reading the manifest's JSON shapes on every call
cost 7 to 15 us. `InputChecks` turns the manifest's input list into tuples of
numpy dtypes and dims when the artifact is loaded; a call whose inputs are
already right (the common case) then costs a dtype identity test and a shape
comparison per input. Anything unusual (a list instead of an array, an
`.npz`-restored float8 array, a wrong name, dtype or shape) takes the slow path,
which gives the same one-line errors as before.

Manifest dims are ints (fixed), names (symbolic: every input that names the
same dim must give it the same size) or null (any size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.errors import MdocError

from .storage import STORAGE, restored, to_storage


@dataclass(frozen=True)
class _Input:
    name: str
    dtype_name: str
    dtype: np.dtype | None  # None for the ml_dtypes types (float8, int4, ...): always the slow path
    shape: list             # as the manifest has it, for messages
    static: tuple | None    # the whole shape when every dim is an int
    fixed: tuple            # (axis, size) of the int dims
    symbols: tuple          # (axis, name) of the named dims


def _prepare(sig: dict) -> _Input:
    shape = list(sig["shape"])
    fixed = tuple((i, d) for i, d in enumerate(shape) if isinstance(d, int))
    symbols = tuple((i, d) for i, d in enumerate(shape) if isinstance(d, str))
    static = tuple(shape) if len(fixed) == len(shape) else None
    dtype = None if sig["dtype"] in STORAGE else np.dtype(sig["dtype"])
    return _Input(sig["name"], sig["dtype"], dtype, shape, static, fixed, symbols)


class InputChecks:
    """The manifest's inputs, checked call by call: names, dtypes, fixed dims, symbolic dims agreeing."""

    def __init__(self, inputs: list[dict], where: str):
        self.inputs = tuple(_prepare(sig) for sig in inputs)
        self.names = [i.name for i in self.inputs]
        self.where = where
        self._symbolic = any(i.symbols for i in self.inputs)

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        """The inputs in the library's order and storage types (`storage.to_storage`); not
        necessarily C-contiguous (the caller copies into its own buffer when they are not)."""
        if len(feeds) != len(self.inputs):
            self._names_error(feeds)
        ordered = []
        bound: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            try:
                a = feeds[spec.name]
            except KeyError:
                self._names_error(feeds)
            if type(a) is not np.ndarray or a.dtype is not spec.dtype:
                a = self._converted(spec, a)
            if a.shape != spec.static:
                self._check_dims(spec, a.shape)
            if self._symbolic:
                for axis, sym in spec.symbols:
                    size = a.shape[axis]
                    first = bound.setdefault(sym, (size, spec.name))
                    if first[0] != size:
                        raise MdocError(f"{self.where}: input '{spec.name}' has {sym} = {size} (dim {axis} of "
                                        f"shape {list(a.shape)}), but input '{first[1]}' has {sym} = {first[0]}")
            ordered.append(a)
        return ordered

    def _converted(self, spec: _Input, value) -> np.ndarray:
        """`value` as an array of the input's dtype in its storage type, or a one-line error."""
        a = restored(np.asarray(value), spec.dtype_name)
        if str(a.dtype) != spec.dtype_name:
            raise MdocError(f"{self.where}: input '{spec.name}' is {a.dtype}, the artifact expects {spec.dtype_name}")
        return to_storage(a)

    def _check_dims(self, spec: _Input, shape: tuple) -> None:
        if len(shape) != len(spec.shape) or any(shape[i] != d for i, d in spec.fixed):
            raise MdocError(f"{self.where}: input '{spec.name}' has shape {list(shape)}, "
                            f"the artifact expects {spec.shape}")

    def _names_error(self, feeds: dict) -> None:
        for extra in sorted(set(feeds) - set(self.names)):
            raise MdocError(f"{self.where}: tensor '{extra}' is not an input of the artifact "
                            f"(inputs: {', '.join(self.names)})")
        for name in self.names:
            if name not in feeds:
                raise MdocError(f"{self.where}: input '{name}' is missing")
        raise AssertionError("_names_error called with the right names")  # pragma: no cover
