"""Reading an .onnx file safely: one-line errors for every way a file can be wrong.

A model file may be missing, not protobuf, truncated, or point its external data
anywhere on disk. Before anything is built from it, this module checks that the
bytes parse, that a graph is there, and that every external-data location stays
inside the model's folder and exists with enough bytes. Weights in external
files are memory-mapped, so large models do not need twice their size in RAM.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from .errors import MdocError


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
    target = (base / location).resolve()
    if base != target and base not in target.parents:
        raise MdocError(f"{where}: external data location '{location}' escapes the model's folder")
    if not target.is_file():
        raise MdocError(f"{where}: external data file '{location}' is missing")
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
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = int(np.ceil(count * dtype.itemsize))
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
