"""Models in and out by file extension: `.onnx` through the frontend/exporter, `.mdir` as IR text."""

from __future__ import annotations

import os
from pathlib import Path

from .convert import convert_to_onnx, detect_format
from .errors import MdocError
from .ir import Model
from .onnx_export import save_onnx
from .onnx_import import import_model
from .parser import load_mdir
from .printer import save_mdir

SUFFIXES = (".onnx", ".mdir")


def load_model(path: str | os.PathLike) -> Model:
    """Read .mdir text, .onnx, or a TensorFlow/PyTorch file converted to ONNX in memory (`mdoc.convert`)."""
    path = Path(path)
    if path.suffix == ".mdir":
        return load_mdir(path)
    if detect_format(path) is not None:
        return import_model(convert_to_onnx(path), name=str(path))
    return import_model(path)


def save_model(model: Model, path: str | os.PathLike, *, runtime_ops: bool = False) -> None:
    """Write `.mdir` or `.onnx` by extension; `runtime_ops` writes mdoc ops as onnxruntime contrib ops."""
    path = Path(path)
    if path.suffix == ".mdir":
        save_mdir(model, path)
    elif path.suffix == ".onnx":
        save_onnx(model, path, runtime_ops=runtime_ops)
    else:
        raise MdocError(f"{path}: unknown output format '{path.suffix}' (use {' or '.join(SUFFIXES)})")
