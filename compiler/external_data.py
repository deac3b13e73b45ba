"""Writing tensors to an ONNX external-data file as they come, for models too big to hold twice.

`onnx.save_model(save_as_external_data=True)` wants every weight in the ModelProto first (a copy of
each, and over protobuf's 2 GB limit no message at all); a model whose constants are memory-mapped
would then be in memory twice. `ExternalWeights` instead appends each large array to the file as its
initializer is made and keeps only the location in the proto, so writing a 4 GB model holds one
tensor's bytes at a time (the exporter, and the model builders of `mdoc.models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper

_NUMPY_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                "float32", "float64"}

ALIGNMENT = 64
"""Each tensor starts at a multiple of this, so a memory map of it is aligned for vector loads."""


class ExternalWeights:
    """Weights streamed to one external-data file as they are drawn, for models too big to hold twice.

    A builder given one writes each weight of at least `threshold` bytes to `path` at once and keeps
    only its location in the initializer, so a 4 GB model is built with one weight in memory at a time
    (and a model over protobuf's 2 GB limit can be saved at all). Save the model beside `path`.
    """

    def __init__(self, path: str | Path, threshold: int = 1024):
        self.path = Path(path)
        self.threshold = threshold
        self._file: BinaryIO | None = None

    def __enter__(self) -> ExternalWeights:
        self._file = open(self.path, "wb")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._file is not None
        self._file.close()

    def tensor(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        """The initializer for `array`: appended to the file (aligned) if big enough, else inline.

        Only numpy's own numeric types go out as raw bytes; the rest (strings, and the sub-byte types
        ONNX packs two or four to a byte) keep `numpy_helper.from_array`'s encoding, inline."""
        if array.nbytes < self.threshold or array.dtype.kind not in "biuf" or array.dtype.name not in _NUMPY_TYPES:
            return numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(order="C"), name)
        if self._file is None:
            raise ValueError(f"ExternalWeights({self.path}) used outside its with-block")
        self._file.write(b"\0" * (-self._file.tell() % ALIGNMENT))
        offset = self._file.tell()
        # a contiguous memory map is written straight from its pages: no copy of the tensor is made
        self._file.write(memoryview(np.ascontiguousarray(array, array.dtype.newbyteorder("<"))).cast("B"))
        t = onnx.TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", offset), ("length", array.nbytes)):
            t.external_data.add(key=key, value=str(value))
        return t
