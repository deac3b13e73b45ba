"""Front doors for models from other frameworks: convert them to ONNX, then mdoc reads them like any model.

    proto = convert_to_onnx("mobilenet.keras", dynamic=[DynamicAxis("image", 0, "N")])
    write_onnx(proto, "mobilenet.onnx")          # whole or not at all

`mdoc import` writes the ONNX file; `mdoc compile`, `opt` and `inspect` (through
`mdoc.load_model`) convert in memory first. Detection (`formats`) and the shape specs
(`specs`) import no framework; each format's converter (`tf_formats`,
`torch_formats`) imports its framework inside its functions, so none of this slows
down mdoc's startup or needs the optional extras until such a file arrives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnx

from ..atomic import atomic_write, publish_file, staging_folder
from ..errors import MdocError
from .formats import EXPECTED, EXPORTED_PROGRAM, TORCHSCRIPT, Format, check_file, detect_format
from .specs import DynamicAxis, InputSpec, name_dims

__all__ = ["DynamicAxis", "InputSpec", "convert_to_onnx", "detect_format", "write_onnx"]

# onnx.save refuses single-file protos above 2 GiB; weights then go beside the file.
_SINGLE_FILE_LIMIT = 2**31 - 2**24


def convert_to_onnx(path: str | os.PathLike, *, inputs: Sequence[InputSpec] = (), dynamic: Sequence[DynamicAxis] = (),
                    opset: int | None = None, signature: str = "serving_default") -> onnx.ModelProto:
    """The ONNX model for a SavedModel folder, .keras/.h5, .tflite, .pt2 or TorchScript .pt file."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt is None:
        raise MdocError(f"{path}: unrecognized model format (expected {EXPECTED})")
    check_file(path, fmt)
    inputs, dynamic = list(inputs), list(dynamic)
    if fmt is EXPORTED_PROGRAM:
        from .torch_formats import convert_exported_program
        proto = convert_exported_program(path, inputs, dynamic, opset)
    elif fmt is TORCHSCRIPT:
        from .torch_formats import convert_torchscript
        proto = convert_torchscript(path, inputs, dynamic, opset)
    else:
        from .tf_formats import convert_tensorflow
        proto = convert_tensorflow(path, fmt, inputs, dynamic, opset, signature)
    name_dims(proto, dynamic, str(path))
    check_converted(proto, str(path), fmt)
    return proto


def check_converted(proto: onnx.ModelProto, where: str, fmt: Format | None = None) -> None:
    """Refuse a conversion that left ops ONNX does not define (tf2onnx keeps what it cannot convert)."""
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    unknown = sorted({n.op_type for n in proto.graph.node if (n.domain or "") in ("", "ai.onnx")
                      and not onnx.defs.has(n.op_type)})
    if unknown:
        source = f"the {fmt.label}'s" if fmt else "its"
        raise MdocError(f"{where}: the converter left {source} ops {', '.join(unknown)} unconverted "
                        f"(no ONNX opset {opsets.get('', '?')} equivalent)")


def write_onnx(proto: onnx.ModelProto, output: str | os.PathLike) -> Path:
    """Write `proto` to `output` through a temporary file and a rename, so a failure leaves no half file."""
    output = Path(output)
    if output.suffix != ".onnx":
        raise MdocError(f"{output}: the output of a conversion is an .onnx file")
    if proto.ByteSize() <= _SINGLE_FILE_LIMIT:
        return atomic_write(output, lambda f: f.write(proto.SerializeToString()))
    with staging_folder(output) as tmp:  # the weights file first: the new model never names missing data
        data = output.name + ".data"
        try:
            onnx.save_model(proto, tmp / output.name, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data)
        except OSError as e:
            raise MdocError(f"{output}: cannot write it: {e.strerror or e}") from None
        publish_file(tmp / data, output.resolve().parent / data)
        publish_file(tmp / output.name, output)
    return output
