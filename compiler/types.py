"""Types of IR values: element types, symbolic shapes, tensors, sequences and optionals.

A dimension is an `int`, a `str` (a symbol such as "N" that stands for the same
size wherever it appears) or `None` (unknown). A shape is a tuple of dimensions,
or `None` when even the rank is unknown. Types are immutable and compared by value.

Text spellings (used by the printer and parser): `f32[1,3,N,?]`, `i64[]` (scalar),
`f32[*]` (unknown rank), `seq<f32[*]>`, `opt<i64[2]>`, and `?` for a value whose
type nothing could infer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper

Dim = Union[int, str, None]
Shape = Union[tuple, None]


class DType(Enum):
    """Element types, keyed by their ONNX enum value, spelled with short text names."""

    F32 = TensorProto.FLOAT
    U8 = TensorProto.UINT8
    I8 = TensorProto.INT8
    U16 = TensorProto.UINT16
    I16 = TensorProto.INT16
    I32 = TensorProto.INT32
    I64 = TensorProto.INT64
    STR = TensorProto.STRING
    BOOL = TensorProto.BOOL
    F16 = TensorProto.FLOAT16
    F64 = TensorProto.DOUBLE
    U32 = TensorProto.UINT32
    U64 = TensorProto.UINT64
    C64 = TensorProto.COMPLEX64
    C128 = TensorProto.COMPLEX128
    BF16 = TensorProto.BFLOAT16
    F8E4M3FN = TensorProto.FLOAT8E4M3FN
    F8E4M3FNUZ = TensorProto.FLOAT8E4M3FNUZ
    F8E5M2 = TensorProto.FLOAT8E5M2
    F8E5M2FNUZ = TensorProto.FLOAT8E5M2FNUZ
    U4 = TensorProto.UINT4
    I4 = TensorProto.INT4
    F4E2M1 = TensorProto.FLOAT4E2M1
    F8E8M0 = TensorProto.FLOAT8E8M0
    U2 = TensorProto.UINT2
    I2 = TensorProto.INT2

    @property
    def text(self) -> str:
        return self.name.lower()

    @classmethod
    def from_text(cls, text: str) -> "DType":
        return cls[text.upper()]

    @classmethod
    def from_onnx(cls, elem_type: int) -> "DType":
        try:
            return cls(elem_type)
        except ValueError:
            from .errors import MdocError

            raise MdocError(f"ONNX element type {elem_type} is not one mdoc knows") from None

    @classmethod
    def from_numpy(cls, dtype) -> "DType":
        return cls(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.value))

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def itemsize(self) -> float:
        """Bytes per element (fractional for the 4-bit types)."""
        if self in (DType.U4, DType.I4, DType.F4E2M1):
            return 0.5
        if self in (DType.U2, DType.I2):
            return 0.25
        if self is DType.STR:
            return 0
        return self.numpy.itemsize


_FLOATS = {DType.F32, DType.F16, DType.F64, DType.BF16, DType.F8E4M3FN, DType.F8E4M3FNUZ,
           DType.F8E5M2, DType.F8E5M2FNUZ, DType.F4E2M1, DType.F8E8M0}


def dim_text(d: Dim) -> str:
    if d is None:
        return "?"
    return str(d)


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: Shape = None

    def __post_init__(self):
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def __str__(self) -> str:
        dims = "*" if self.shape is None else ",".join(dim_text(d) for d in self.shape)
        return f"{self.dtype.text}[{dims}]"


@dataclass(frozen=True)
class SequenceType:
    elem: "Type"

    def __str__(self) -> str:
        return f"seq<{self.elem}>"


@dataclass(frozen=True)
class OptionalType:
    elem: "Type"

    def __str__(self) -> str:
        return f"opt<{self.elem}>"


@dataclass(frozen=True)
class UnknownType:
    def __str__(self) -> str:
        return "?"


UNKNOWN = UnknownType()
Type = Union[TensorType, SequenceType, OptionalType, UnknownType]


def tensor_type_of(array: np.ndarray) -> TensorType:
    return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))


def type_from_onnx(tp: onnx.TypeProto) -> Type:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        if tt.elem_type == TensorProto.UNDEFINED:
            return UNKNOWN
        shape = None
        if tt.HasField("shape"):
            shape = tuple(_dim_from_onnx(d) for d in tt.shape.dim)
        return TensorType(DType.from_onnx(tt.elem_type), shape)
    if kind == "sequence_type":
        return SequenceType(type_from_onnx(tp.sequence_type.elem_type))
    if kind == "optional_type":
        return OptionalType(type_from_onnx(tp.optional_type.elem_type))
    return UNKNOWN


def _dim_from_onnx(d) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return None


def type_to_onnx(t: Type) -> onnx.TypeProto | None:
    """The ONNX TypeProto for `t`, or None when the type is unknown."""
    if isinstance(t, TensorType):
        shape = None if t.shape is None else [d for d in t.shape]
        return helper.make_tensor_type_proto(t.dtype.value, shape)
    if isinstance(t, SequenceType):
        elem = type_to_onnx(t.elem)
        return None if elem is None else helper.make_sequence_type_proto(elem)
    if isinstance(t, OptionalType):
        elem = type_to_onnx(t.elem)
        return None if elem is None else helper.make_optional_type_proto(elem)
    return None


def merge(old: Type, new: Type) -> Type:
    """The more precise of two descriptions of one value's type (`new` wins where they disagree)."""
    if new == UNKNOWN:
        return old
    if old == UNKNOWN or type(old) is not type(new):
        return new
    if isinstance(new, (SequenceType, OptionalType)):
        return type(new)(merge(old.elem, new.elem))
    if old.dtype is not new.dtype:
        return new
    if new.shape is None:
        return old
    if old.shape is None or len(old.shape) != len(new.shape):
        return new
    return TensorType(new.dtype, tuple(_dim(a, b) for a, b in zip(old.shape, new.shape)))


def _dim(old, new):
    if isinstance(new, int):
        return new
    if isinstance(old, int):
        return old  # mdoc proved a size ONNX could not: keep it
    if old is not None:
        return old  # keep mdoc's symbol rather than a fresh one (same meaning, less churn)
    return new
