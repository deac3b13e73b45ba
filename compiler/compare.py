"""Run two models (or a model and a compiled artifact) on the same inputs and compare their outputs.

Models run in onnxruntime: an `.onnx` file as it is on disk (the reference), a
`.mdir` file after export. A folder is a compiled artifact and runs through the
target backend that wrote it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .backends import load_artifact
from .errors import MdocError
from .model_io import load_model
from .onnx_export import export_model
from .onnx_load import read_model_proto
from .reference import Difference, compare_outputs, run_onnxruntime
from .tensors import check_inputs, load_npz, random_inputs


def outputs_of(path: str | os.PathLike, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    path = Path(path)
    if path.is_dir():
        return load_artifact(path)(**feeds)
    if path.suffix == ".onnx":
        read_model_proto(path)  # one-line errors for files that are not ONNX
        return run_onnxruntime(path, feeds)
    return run_onnxruntime(export_model(load_model(path)), feeds)


def compare_models(a: str, b: str, inputs: str | None = None, rtol: float = 1e-4, atol: float = 1e-5,
                   seed: int = 0, dims: dict[str, int] | None = None) -> list[Difference]:
    model = load_model(a)
    if inputs:
        feeds = load_npz(inputs)
        check_inputs(model, feeds, inputs)
    else:
        feeds = random_inputs(model, seed, dims)
    expected = outputs_of(a, feeds)
    actual = outputs_of(b, feeds)
    missing = [n for n in expected if n not in actual]
    if missing and len(missing) == len(expected):
        raise MdocError(f"{b} has none of {a}'s outputs ({', '.join(missing)})")
    return compare_outputs(expected, actual, rtol, atol)
