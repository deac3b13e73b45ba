"""The shapes a user gives a converter: `--input NAME=SHAPE/DTYPE` and `--dynamic NAME:AXIS=DIMNAME`.

Exporters need example shapes where the source keeps none (TorchScript) or keeps
unknown dims (a Keras batch of None), and they name symbolic dims arbitrarily
(tf2onnx's `unk__12`, torch.export's `s40`). These two specs say what the shapes
are and what each symbolic dim of the ONNX model is called, the same way for
every format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import MdocError

DTYPES = ("float32", "float16", "float64", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One input's concrete example shape and dtype (a numpy dtype name)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """`image=1x3x224x224/float32` (or `1,3,224,224`; the dtype defaults to float32; `ids=/int64` is a scalar)."""
        name, eq, rest = text.partition("=")
        shape_text, _, dtype = rest.partition("/")
        dtype = dtype.strip() or "float32"
        dims = [d for d in re.split(r"[x,]", shape_text.strip()) if d.strip()] if shape_text.strip() else []
        if not eq or not name.strip() or not all(d.strip().isdigit() for d in dims):
            raise MdocError(f"--input '{text}' is not NAME=SHAPE/DTYPE (for example image=1x3x224x224/float32)")
        if dtype not in DTYPES:
            raise MdocError(f"--input '{text}': unknown dtype '{dtype}' (use one of {', '.join(DTYPES)})")
        return cls(name.strip(), tuple(int(d) for d in dims), dtype)

    def example(self, seed: int = 0) -> np.ndarray:
        """A deterministic example array: normal floats, zeros for integers and booleans."""
        if np.dtype(self.dtype).kind == "f":
            return np.random.default_rng(seed).standard_normal(self.shape).astype(self.dtype)
        return np.zeros(self.shape, self.dtype)


@dataclass(frozen=True)
class DynamicAxis:
    """Axis `axis` of input `input` is symbolic in the ONNX model and called `dim`."""

    input: str
    axis: int
    dim: str

    @classmethod
    def parse(cls, text: str) -> DynamicAxis:
        """`image:0=batch`."""
        m = re.fullmatch(r"\s*([^:=]+):(\d+)=([A-Za-z_][A-Za-z0-9_]*)\s*", text)
        if not m:
            raise MdocError(f"--dynamic '{text}' is not NAME:AXIS=DIMNAME (for example image:0=batch)")
        return cls(m[1].strip(), int(m[2]), m[3])


def by_input(dynamic: list[DynamicAxis]) -> dict[str, dict[int, str]]:
    """{input name: {axis: dim name}}."""
    out: dict[str, dict[int, str]] = {}
    for d in dynamic:
        out.setdefault(d.input, {})[d.axis] = d.dim
    return out


def check_names(where: str, given: list[str], known: list[str], flag: str) -> None:
    """Refuse a spec that names an input the model does not have, listing the ones it has."""
    for name in given:
        if name not in known:
            raise MdocError(f"{where}: {flag} names input '{name}', but the model's inputs are "
                            f"{', '.join(known) or '(none)'}")


def name_dims(proto: onnx.ModelProto, dynamic: list[DynamicAxis], where: str) -> None:
    """Rename the exporter's symbol at each --dynamic axis to the user's name, everywhere it appears."""
    inputs = {vi.name: vi for vi in proto.graph.input}
    check_names(where, [d.input for d in dynamic], list(inputs), "--dynamic")
    renames: dict[str, str] = {}
    for d in dynamic:
        dims = inputs[d.input].type.tensor_type.shape.dim
        if d.axis >= len(dims):
            raise MdocError(f"{where}: --dynamic {d.input}:{d.axis}: input '{d.input}' has {len(dims)} dims")
        dim = dims[d.axis]
        if dim.HasField("dim_value"):
            raise MdocError(f"{where}: --dynamic {d.input}:{d.axis}: that axis is fixed to {dim.dim_value} "
                            "in the converted model (this format cannot make it dynamic)")
        if dim.dim_param and renames.get(dim.dim_param, d.dim) != d.dim:
            raise MdocError(f"{where}: --dynamic gives one symbolic dim two names "
                            f"('{renames[dim.dim_param]}' and '{d.dim}')")
        if dim.dim_param:
            renames[dim.dim_param] = d.dim
        else:
            dim.dim_param = d.dim
    if not renames:
        return
    symbol = re.compile(r"\b(" + "|".join(re.escape(s) for s in renames) + r")\b")
    for vi in _value_infos(proto.graph):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = symbol.sub(lambda m: renames[m[1]], dim.dim_param)


def _value_infos(graph: onnx.GraphProto):
    yield from graph.input
    yield from graph.output
    yield from graph.value_info
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _value_infos(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _value_infos(g)
