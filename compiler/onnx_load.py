"""Reading an .onnx file safely: one-line errors for every way a file can be wrong.

A model file may be missing, not protobuf, truncated, or point its external data
anywhere on disk. Before anything is built from it, this module checks that the
bytes parse, that a graph is there, and (`check_model_proto`, before any tensor is
read) that every external-data location stays inside the model's folder (symlinks
resolved), is a regular file with enough bytes for the tensor, that no two tensors
claim overlapping bytes of one file, and that no tensor or value declares a size
beyond `mdoc.limits`. Weights in external files are memory-mapped, so large models
do not need twice their size in RAM.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from .errors import MdocError
from .limits import MAX_DIM, MAX_NESTED_BODIES, check_dims, check_materialized


def read_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse `path` as an ONNX model without touching its external data."""
    path = Path(path)
    if not path.exists():
        raise MdocError(f"{path}: no such file")
    if not path.is_file():
        raise MdocError(f"{path}: not a file")
    data = path.read_bytes()
    if not data:
        raise MdocError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise MdocError(f"{path}: not an ONNX model (protobuf does not parse: {_one_line(e)})") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise MdocError(f"{path}: not an ONNX model (no graph or no IR version)")
    return model


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def external_info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def resolve_external(model_path: Path, t: TensorProto) -> tuple[Path, int, int | None]:
    """The file, offset and length of an external tensor; refuses paths outside the model's folder."""
    info = external_info(t)
    location = info.get("location", "")
    where = f"{model_path}: tensor '{t.name}'"
    if not location:
        raise MdocError(f"{where} is marked external but names no location")
    base = model_path.resolve().parent
    if os.path.isabs(location):
        raise MdocError(f"{where}: external data location '{location}' is an absolute path; "
                        "it must be relative to the model's folder")
    target = (base / location).resolve()  # symlinks followed: one that points out escapes
    if base != target and base not in target.parents:
        raise MdocError(f"{where}: external data location '{location}' escapes the model's folder")
    if not target.exists():
        raise MdocError(f"{where}: external data file '{location}' is missing")
    if not target.is_file():
        raise MdocError(f"{where}: external data location '{location}' is not a regular file")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise MdocError(f"{where}: external data offset/length are not integers") from None
    size = target.stat().st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise MdocError(f"{where}: external data range (offset {offset}, length {length}) "
                        f"lies outside '{location}' ({size} bytes)")
    return target, offset, length


def load_external_array(model_path: Path, t: TensorProto) -> np.ndarray:
    """The array of an external tensor, memory-mapped when its dtype allows."""
    from .types import DType

    file, offset, length = resolve_external(model_path, t)
    dtype = DType.from_onnx(t.data_type)
    shape = tuple(int(d) for d in t.dims)
    count = math.prod(shape)
    nbytes = int(math.ceil(count * dtype.itemsize))
    if length is not None and length < nbytes:
        raise MdocError(f"{model_path}: tensor '{t.name}' needs {nbytes} bytes of external data "
                        f"but its length is {length}")
    if offset + nbytes > file.stat().st_size:
        raise MdocError(f"{model_path}: tensor '{t.name}' needs {nbytes} bytes from offset {offset} "
                        f"but '{file.name}' is shorter")
    if dtype.itemsize >= 1 and dtype is not DType.STR:
        if count == 0:
            return np.zeros(shape, dtype.numpy)
        return np.memmap(file, dtype=dtype.numpy.newbyteorder("<"), mode="r", offset=offset, shape=shape)
    raw = TensorProto()
    raw.CopyFrom(t)
    del raw.external_data[:]
    raw.data_location = TensorProto.DEFAULT
    with open(file, "rb") as f:
        f.seek(offset)
        raw.raw_data = f.read(nbytes)
    return onnx.numpy_helper.to_array(raw)


def external_nbytes(t: TensorProto, where: str) -> int:
    """The bytes an external tensor's dims and type need (sub-byte types packed, as ONNX stores them)."""
    from .types import DType

    try:
        dtype = DType.from_onnx(t.data_type)
    except (ValueError, KeyError, TypeError):
        raise MdocError(f"{where}: element type {t.data_type} is not an ONNX tensor type") from None
    if dtype is DType.STR:
        raise MdocError(f"{where}: string tensors cannot be stored as external data")
    return int(math.ceil(check_dims(t.dims, where) * dtype.itemsize))


def check_model_proto(proto: onnx.ModelProto, path: Path | None) -> None:
    """Refuse, before any tensor is read or made, what `mdoc.limits` and safe external data forbid.

    Every external tensor (initializers, Constant attributes, sparse parts, in every
    body and local function) is resolved and its byte range checked against its file;
    ranges of one file that overlap (the same weights claimed twice, or a tensor
    whose bytes reach into another's) are refused, as are sparse tensors that would
    expand past the limit and declared dims that no real model has.
    """
    where_file = str(path) if path is not None else f"model '{proto.graph.name or 'main'}'"
    ranges: dict[Path, list[tuple[int, int, str]]] = {}

    def tensor(t: TensorProto, label: str = "") -> None:
        where = f"{where_file}: tensor '{t.name}'" + (f" ({label})" if label else "")
        if t.data_location != TensorProto.EXTERNAL:
            check_dims(t.dims, where)
            return
        if path is None:
            raise MdocError(f"{where} has external data but the model was given without its path")
        nbytes = external_nbytes(t, where)
        file, offset, length = resolve_external(path, t)
        if length is not None and length < nbytes:
            raise MdocError(f"{where} needs {nbytes} bytes of external data but its length is {length}")
        if offset + nbytes > file.stat().st_size:
            raise MdocError(f"{where} needs {nbytes} bytes from offset {offset} but '{file.name}' is shorter")
        if nbytes:
            ranges.setdefault(file, []).append((offset, offset + nbytes, t.name))

    def sparse(sp: onnx.SparseTensorProto, label: str = "") -> None:
        where = f"{where_file}: sparse tensor '{sp.values.name}'" + (f" ({label})" if label else "")
        count = check_dims(sp.dims, where)
        from .types import DType

        try:
            itemsize = DType.from_onnx(sp.values.data_type).itemsize
        except (ValueError, KeyError, TypeError):
            raise MdocError(f"{where}: element type {sp.values.data_type} is not an ONNX tensor type") from None
        check_materialized(int(math.ceil(count * itemsize)), f"{where}: made dense, it")
        tensor(sp.values, "the values of a sparse tensor")
        tensor(sp.indices, "the indices of a sparse tensor")

    def values(infos, graph_name: str) -> None:
        for vi in infos:
            if vi.type.WhichOneof("value") != "tensor_type":
                continue
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value > MAX_DIM:
                    raise MdocError(f"{where_file}: value '{vi.name}' of graph '{graph_name}' declares dim "
                                    f"{d.dim_value}, which is absurd (more than 2**40)")

    def graph(g: onnx.GraphProto, depth: int) -> None:
        if depth > MAX_NESTED_BODIES:
            raise MdocError(f"{where_file}: graph '{g.name}' is nested {depth} bodies deep, "
                            f"more than ONNX can hold ({MAX_NESTED_BODIES})")
        values(list(g.input) + list(g.output) + list(g.value_info), g.name)
        for t in g.initializer:
            tensor(t)
        for sp in g.sparse_initializer:
            sparse(sp)
        nodes(g.node, depth)

    def nodes(node_list, depth: int) -> None:
        for n in node_list:
            for a in n.attribute:
                label = f"attribute '{a.name}' of node '{n.name or n.op_type}'"
                if a.HasField("t"):
                    tensor(a.t, label)
                for t in a.tensors:
                    tensor(t, label)
                if a.HasField("sparse_tensor"):
                    sparse(a.sparse_tensor, label)
                for sp in a.sparse_tensors:
                    sparse(sp, label)
                if a.HasField("g"):
                    graph(a.g, depth + 1)
                for sub in a.graphs:
                    graph(sub, depth + 1)

    graph(proto.graph, 0)
    for f in proto.functions:
        nodes(f.node, 0)
    for file, spans in ranges.items():
        spans.sort()
        for (start, end, name), (start2, end2, name2) in zip(spans, spans[1:]):
            if start2 < end:
                raise MdocError(f"{where_file}: tensors '{name}' and '{name2}' claim overlapping bytes of "
                                f"'{file.name}' ({start}-{end} and {start2}-{end2}); each tensor's external "
                                "data must have bytes of its own")
