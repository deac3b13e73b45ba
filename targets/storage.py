"""Element types that TVM cannot compute with, carried in a storage type it can.

ONNX has float8 (e4m3fn, e4m3fnuz, e5m2, e5m2fnuz, e8m0), float4e2m1 and the
4-bit and 2-bit integers; numpy holds them as `ml_dtypes` types of one byte per
element. Compiled models keep them in a byte as well:

* the float types as their bit pattern in `uint8` (float4e2m1: the 4-bit code in
  the low nibble), converted by the lowered code with ONNX's rounding rules
  (`relax/converters/cast.py`);
* int4 / int2 as their value in `int8`, uint4 / uint2 in `uint8`.

The artifact runner converts at the boundary (`to_storage` on the way in,
`from_storage` on the way out), so callers feed and get the real dtypes. This
module needs numpy only (ml_dtypes is imported when such a type shows up), so
the runtime-only loader can use it.
"""

from __future__ import annotations

import numpy as np

# numpy dtype name -> storage dtype name
STORAGE = {
    "float8_e4m3fn": "uint8", "float8_e4m3fnuz": "uint8", "float8_e5m2": "uint8",
    "float8_e5m2fnuz": "uint8", "float8_e8m0fnu": "uint8", "float4_e2m1fn": "uint8",
    "int4": "int8", "int2": "int8", "uint4": "uint8", "uint2": "uint8",
}
_INTEGERS = {"int4", "int2", "uint4", "uint2"}


def storage_of(dtype_name: str) -> str:
    """The dtype that holds `dtype_name` in a compiled model (itself for types TVM has)."""
    return STORAGE.get(dtype_name, dtype_name)


def to_storage(array: np.ndarray) -> np.ndarray:
    """`array` in its storage type: bit patterns for the small floats, values for the small ints."""
    name = array.dtype.name
    if name not in STORAGE:
        return array
    if name in _INTEGERS:
        return array.astype(STORAGE[name])
    return array.view(np.uint8)


def restored(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """`array` as `dtype_name` when it holds that type's raw bytes (`.npz` files keep ml_dtypes
    arrays as void bytes, `V1`); otherwise unchanged."""
    if dtype_name in STORAGE and array.dtype.kind == "V" and array.dtype.itemsize == 1:
        import ml_dtypes

        return array.view(getattr(ml_dtypes, dtype_name))
    return array


def from_storage(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """The inverse of `to_storage` for an array the compiled model returned as `dtype_name`."""
    if dtype_name not in STORAGE or array.dtype.name == dtype_name:
        return array
    import ml_dtypes

    dtype = np.dtype(getattr(ml_dtypes, dtype_name))
    if dtype_name in _INTEGERS:
        return array.astype(dtype)
    return array.view(dtype)
