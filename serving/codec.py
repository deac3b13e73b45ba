"""Tensors of the Open Inference Protocol (KServe v2) to numpy and back, for REST and gRPC alike.

A request names each input with a v2 datatype (FP32, INT64, ...) and a shape, and
carries its elements either as JSON (`data`, flat or nested, row-major) or, with the
binary-tensor extension, as raw little-endian bytes after the JSON header
(`parameters.binary_data_size`; gRPC: `raw_input_contents`). Everything a client can
get wrong here (an unknown datatype, a shape that does not hold the elements given,
bytes that do not fill the shape, a missing or repeated tensor) is a `RequestError`
whose message names the tensor, so the server answers 400 and goes on serving.
"""

from __future__ import annotations

import math

import numpy as np

from mdoc.errors import one_line

# v2 datatype -> numpy dtype name (BYTES, strings, is not a type any compiled model takes)
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BF16": "bfloat16",
}
V2_NAMES = {v: k for k, v in DATATYPES.items()}


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP status (gRPC maps it), the message (one line, whatever
    the names it quotes hold) names the problem."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(one_line(message))
        self.status = status


def numpy_dtype(datatype: str, tensor: str) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise RequestError(f"tensor '{tensor}': datatype {shown(datatype)} is not one this server takes ({known})")
    name = DATATYPES[datatype]
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def v2_datatype(dtype: np.dtype | str) -> str:
    """The v2 datatype of a numpy dtype (or a manifest's dtype name); `RequestError`-free: a server-side fact."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in V2_NAMES:
        raise ValueError(f"dtype {name} has no Open Inference Protocol datatype")
    return V2_NAMES[name]


MAX_RANK = 32
MAX_ELEMENTS = 2**48  # what a shape may declare, counting only its non-zero dims: numpy's size limit is 2**63 bytes


def shown(value, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: a message quotes what the client sent without echoing megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def checked_shape(shape, tensor: str) -> tuple[int, ...]:
    """A shape numpy can hold, even for no elements (a dim of 0 beside dims whose product is past numpy's limit)."""
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in shape):
        raise RequestError(f"tensor '{tensor}': shape must be a list of non-negative integers, got {shown(shape)}")
    if len(shape) > MAX_RANK:
        raise RequestError(f"tensor '{tensor}': rank {len(shape)} is over the limit of {MAX_RANK}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise RequestError(f"tensor '{tensor}': shape {shown(list(shape))} declares over 2**48 elements")
    return tuple(shape)


def from_bytes(raw: bytes | memoryview, datatype: str, shape, tensor: str) -> np.ndarray:
    """A binary tensor (the extension's bytes, or gRPC's raw contents) as an array of `shape`."""
    dtype = numpy_dtype(datatype, tensor)
    shape = checked_shape(shape, tensor)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise RequestError(f"tensor '{tensor}': {len(raw)} bytes of data, but {datatype} {list(shape)} "
                           f"takes {expected}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def from_json(data, datatype: str, shape, tensor: str) -> np.ndarray:
    """A JSON tensor: `data` flat or nested, row-major, as many elements as `shape` holds."""
    dtype = numpy_dtype(datatype, tensor)
    shape = checked_shape(shape, tensor)
    if data is None:
        raise RequestError(f"tensor '{tensor}': no 'data' (and no 'binary_data_size' parameter)")
    try:
        flat = np.asarray(data, dtype=dtype if dtype.kind != "V" else np.float32).reshape(-1)
    except (ValueError, TypeError, OverflowError) as e:
        raise RequestError(f"tensor '{tensor}': data is not a list of {datatype} values ({str(e)[:120]})") from None
    if flat.size != math.prod(shape):
        raise RequestError(f"tensor '{tensor}': {flat.size} elements of data, but shape {list(shape)} "
                           f"holds {math.prod(shape)}")
    return flat.astype(dtype, copy=False).reshape(shape)


def to_bytes(array: np.ndarray) -> bytes:
    """The extension's and gRPC's raw form: little-endian, row-major."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.tobytes()


def to_json(array: np.ndarray) -> list:
    """The flat row-major `data` list of a JSON output (bfloat16 and float16 as JSON numbers)."""
    a = np.asarray(array)
    if a.dtype.kind == "V" or a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return a.reshape(-1).tolist()
