"""Tensors in and out of mdoc commands: `.npz` files keyed by tensor name, and seeded inputs.

Every command that takes or gives tensors uses the same convention, so the output
of `mdoc run` can be fed to `mdoc compare` and back. When no inputs are given,
inputs are drawn from a seeded generator so runs are repeatable.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import MdocError
from .limits import MAX_MATERIALIZED_BYTES, check_materialized, gib
from .ir import Model
from .types import DType, TensorType


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file, after checking each member's header against its stored size
    (`npz_problem`), so a hostile file cannot make numpy allocate what it does not hold."""
    path = Path(path)
    if not path.is_file():
        raise MdocError(f"{path}: no such file")
    try:
        problem = npz_problem(path)
        if problem:
            raise MdocError(f"{path}: not a readable .npz file ({problem})")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error, struct.error) as e:
        raise MdocError(f"{path}: not a readable .npz file ({type(e).__name__}: {' '.join(str(e).split())})") from None


def npz_problem(path: Path) -> str | None:
    """What makes the arrays of `path` unsafe to read, or None: a member whose header declares
    more bytes than the member holds, or that expands past `limits.MAX_MATERIALIZED_BYTES`, or that is
    encrypted (zipfile raises a RuntimeError for those)."""
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            if info.flag_bits & 0x1:
                return f"member '{info.filename}' is encrypted"
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_MATERIALIZED_BYTES:
                return f"member '{info.filename}' expands to {gib(info.file_size)}"
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    return f"member '{info.filename}' has .npy format version {version}"
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f, max_header_size=10000)
                declared = math.prod(shape) * dtype.itemsize
                if declared > info.file_size - f.tell():
                    return (f"member '{info.filename}' declares shape {list(shape)} of {dtype} "
                            f"({gib(declared)}) but holds {info.file_size - f.tell()} bytes")
    return None


def save_npz(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write atomically, so a failure leaves no partial file."""
    atomic_write(path, lambda f: np.savez(f, **tensors))


def concrete_shape(t: TensorType, dims: dict[str, int] | None = None, default: int = 1) -> tuple[int, ...]:
    """A shape with symbols bound from `dims` (others to `default`) and unknown dims set to `default`."""
    if t.shape is None:
        raise MdocError(f"input of type {t} has unknown rank; give it with --inputs")
    dims = dims or {}
    return tuple(d if isinstance(d, int) else dims.get(d, default) if isinstance(d, str) else default
                 for d in t.shape)


def random_inputs(model: Model, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input of `model` (see `random_tensors`)."""
    specs = []
    for v in model.graph.inputs:
        if not isinstance(v.type, TensorType):
            raise MdocError(f"input '{v.name}' is not a tensor ({v.type}); give it with --inputs")
        specs.append((v.name, v.type.dtype.numpy, concrete_shape(v.type, dims)))
    return random_tensors(specs, seed)


def random_tensors(specs: list[tuple[str, np.dtype, tuple[int, ...]]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded tensors by name: normal floats, small non-negative ints ({0, 1} for masks), bools."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    total = 0
    for name, dtype, shape in specs:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        total += nbytes
        check_materialized(total, f"seeded input '{name}' of shape {list(shape)}"
                           + ("" if total == nbytes else " with the inputs before it"),
                           "; give smaller dims with --dim, or the tensors with --inputs")
        small_int = dtype.name in ("int4", "uint4", "int2", "uint2")  # ml_dtypes: kind "V"
        if dtype.kind == "f" or DType.from_numpy(dtype).is_float:
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu" or small_int:
            high = 2 if "mask" in name.lower() else 16
            if small_int:
                import ml_dtypes

                high = min(high, int(ml_dtypes.iinfo(dtype).max) + 1)
            out[name] = rng.integers(0, high, shape).astype(dtype)
        else:
            raise MdocError(f"input '{name}' has type {dtype}, which mdoc cannot make up; give it with --inputs")
    return out


def check_inputs(model: Model, feeds: dict[str, np.ndarray], source: str) -> None:
    """Refuse feeds that miss an input, name an unknown one, or have the wrong dtype or rank."""
    names = {v.name: v for v in model.graph.inputs}
    for name in feeds:
        if name not in names:
            raise MdocError(f"{source}: tensor '{name}' is not an input of the model "
                            f"(inputs: {', '.join(names) or 'none'})")
    for name, v in names.items():
        if name not in feeds:
            raise MdocError(f"{source}: input '{name}' is missing")
        t, a = v.type, feeds[name]
        if isinstance(t, TensorType):
            if a.dtype != t.dtype.numpy:
                raise MdocError(f"{source}: input '{name}' is {a.dtype}, the model expects {t.dtype.text}")
            if t.shape is not None and (len(a.shape) != len(t.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(t.shape, a.shape))):
                raise MdocError(f"{source}: input '{name}' has shape {list(a.shape)}, the model expects {t}")
