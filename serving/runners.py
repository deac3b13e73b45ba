"""What a repository entry runs: a compiled artifact through mdoc's loader, or an ONNX file in onnxruntime.

The server never compiles per request. An artifact folder is loaded with the same
loader as `mdoc run` and `mdoc.load`; an `.onnx` entry is compiled once, when it is
loaded, by `mdoc compile` in a child process (so a compile neither stalls the event loop
nor can take the server down), into the repository's cache, and the log says so. The
`onnxruntime` backend serves an `.onnx` as it is: the baseline that benchmarks/serve_load.py
serves the same way beside mdoc.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mdoc.backends import MANIFEST, THREAD_CAP, load_artifact
from mdoc.errors import MdocError

log = logging.getLogger("mdoc.serve")


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs as the manifest writes them: name, dtype name, dims (int, symbol name or None)."""

    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]

    def batch_symbol(self) -> str | None:
        """The symbol every input and output starts with, when there is one: the dim batching stacks on."""
        firsts = {t["shape"][0] if t["shape"] else None for t in self.inputs + self.outputs}
        (first,) = firsts if len(firsts) == 1 else (None,)
        return first if isinstance(first, str) else None


@dataclass
class Runner:
    run: Callable[..., dict[str, np.ndarray]]
    signature: Signature
    platform: str
    path: Path


def load_runner(path: Path, backend: str, target: str, cache: Path) -> Runner:
    """The runner of one model version at `path` (an artifact folder, a folder holding model.onnx, or an .onnx)."""
    onnx_file = path if path.suffix == ".onnx" else path / "model.onnx"
    if backend == "onnxruntime":
        if not onnx_file.is_file():
            raise MdocError(f"{path}: backend onnxruntime needs an .onnx file (or a folder holding model.onnx)")
        return _onnxruntime(onnx_file)
    if backend != "mdoc":
        raise MdocError(f"{path}: backend '{backend}' is not one of mdoc, onnxruntime")
    artifact = path
    if not (path / MANIFEST).is_file():
        if not onnx_file.is_file():
            raise MdocError(f"{path}: neither an mdoc artifact ({MANIFEST}) nor an .onnx model")
        artifact = compile_into(onnx_file, target, cache)
    run = load_artifact(artifact)
    manifest = run.manifest
    return Runner(run, Signature(tuple(manifest["inputs"]), tuple(manifest["outputs"])),
                  f"mdoc_{manifest['target'].get('name', manifest['target']['arch'])}", artifact)


def compile_into(model: Path, target: str, cache: Path) -> Path:
    """`mdoc compile MODEL -t TARGET` into `cache` (skipped when a build of the same file is there already)."""
    cache.mkdir(parents=True, exist_ok=True)
    stat = model.stat()
    out = cache / f"{model.stem}-{stat.st_size}-{stat.st_mtime_ns}.{target}"
    if (out / MANIFEST).is_file():
        log.info("loading %s: compiled earlier into %s", model, out)
        return out
    log.info("loading %s: compiling it for %s into %s", model, target, out)
    done = subprocess.run([sys.executable, "-c", "from mdoc.cli import main; main()", "compile", str(model),
                           "-t", target, "-o", str(out)], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise MdocError(f"{model}: mdoc compile failed: {last.removeprefix('mdoc: error: ')}")
    return out


def _onnxruntime(model: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    cap = os.environ.get(THREAD_CAP, "")
    if cap.isdigit():  # the same share of the cores as an mdoc artifact gets (`mdoc serve` sets it)
        options.intra_op_num_threads = max(1, int(cap))
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool", "tensor(int16)": "int16", "tensor(uint16)": "uint16"}

    def sig(args) -> tuple[dict, ...]:
        out = []
        for a in args:
            if a.type not in dtypes:
                raise MdocError(f"{model}: tensor '{a.name}' is {a.type}, which the server does not carry")
            out.append({"name": a.name, "dtype": dtypes[a.type],
                        "shape": [d if isinstance(d, (int, str)) else None for d in a.shape]})
        return tuple(out)

    names = [o.name for o in session.get_outputs()]

    def run(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds)))

    return Runner(run, Signature(sig(session.get_inputs()), sig(session.get_outputs())), "onnxruntime_onnx", model)
