"""Compiled artifacts: a folder with the library (weights inside) and a manifest that describes it.

The manifest names the inputs and outputs (names, dtypes, shapes), the target,
the mdoc and TVM versions, the pipeline that produced it and the sha256 of each
file; loading checks every hash, so a corrupted or swapped library is refused
before it runs. Writing goes to a temporary folder that is renamed into place,
so a failed compile leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mdoc.backends import MANIFEST
from mdoc.errors import MdocError

from .storage import from_storage, restored, to_storage

LIBRARY = "model.so"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSig:
    name: str
    dtype: str
    shape: list

    def as_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


class StagedArtifact:
    """A temporary folder beside the destination; `commit` renames it into place."""

    def __init__(self, out: Path):
        self.out = out
        parent = out.resolve().parent
        if not parent.is_dir():
            raise MdocError(f"{out}: folder '{parent}' does not exist")
        if out.exists() and not (out / MANIFEST).is_file():
            raise MdocError(f"{out}: exists and is not an mdoc artifact; refusing to overwrite it")
        self.dir = Path(tempfile.mkdtemp(dir=parent, prefix=".mdoc-artifact-"))

    def __enter__(self) -> "StagedArtifact":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, manifest: dict) -> Path:
        manifest["files"] = {p.name: sha256(p) for p in sorted(self.dir.iterdir()) if p.name != MANIFEST}
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.dir, 0o777 & ~umask)  # mkdtemp made it private; an artifact is for sharing
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.dir, self.out)
        return self.out


def read_manifest(path: Path) -> dict:
    """The manifest of artifact `path`, after checking every file's sha256."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MdocError(f"{path}: not an mdoc artifact (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        manifest["inputs"], manifest["outputs"], manifest["target"]
    except (ValueError, KeyError, TypeError) as e:
        raise MdocError(f"{manifest_path}: malformed manifest ({type(e).__name__}: {e})") from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise MdocError(f"{path}: file '{name}' listed in the manifest is missing")
        if sha256(f) != digest:
            raise MdocError(f"{path}: file '{name}' does not match its sha256 in the manifest (corrupted or replaced)")
    return manifest


def check_feeds(manifest: dict, feeds: dict[str, np.ndarray], where: str) -> list[np.ndarray]:
    """The inputs in the library's order, after checking names, dtypes and static dims.

    Returned in the types the library takes: float8, float4 and the 2/4-bit integers
    in their storage types (`storage.to_storage`).
    """
    ordered = []
    names = [i["name"] for i in manifest["inputs"]]
    for extra in set(feeds) - set(names):
        raise MdocError(f"{where}: tensor '{extra}' is not an input of the artifact (inputs: {', '.join(names)})")
    for sig in manifest["inputs"]:
        if sig["name"] not in feeds:
            raise MdocError(f"{where}: input '{sig['name']}' is missing")
        a = restored(np.asarray(feeds[sig["name"]]), sig["dtype"])
        if str(a.dtype) != sig["dtype"]:
            raise MdocError(f"{where}: input '{sig['name']}' is {a.dtype}, the artifact expects {sig['dtype']}")
        shape = sig["shape"]
        if len(a.shape) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, a.shape)):
            raise MdocError(f"{where}: input '{sig['name']}' has shape {list(a.shape)}, the artifact expects {shape}")
        a = to_storage(a)
        ordered.append(a if a.flags.c_contiguous else a.copy(order="C"))  # ascontiguousarray makes scalars 1-d
    return ordered


def returned(manifest: dict, values: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The library's results by output name, in the dtypes the manifest declares."""
    return {o["name"]: from_storage(v, o["dtype"]) for o, v in zip(manifest["outputs"], values)}


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def load(path: str | os.PathLike) -> Callable[..., dict[str, np.ndarray]]:
    """A callable `f(**inputs) -> {output name: array}` for an artifact written by the TVM backend."""
    path = Path(path)
    manifest = read_manifest(path)
    target = manifest["target"]
    if target["arch"] != host_arch():
        if target["arch"] == "aarch64":
            return _Emulated(path, manifest)
        raise MdocError(f"{path}: artifact is for {target['arch']}, this machine is {host_arch()}")
    return _Runner(path, manifest)


class _Runner:
    """Runs the library in this process with TVM's Relax VM."""

    def __init__(self, path: Path, manifest: dict):
        # TVM's runtime uses half the cores on x86 unless told otherwise (measured: one thread on 2 cores).
        os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
        import tvm
        from tvm.runtime.vm import VirtualMachine  # not tvm.relax: works with the runtime-only library too

        self.path, self.manifest = path, manifest
        if manifest["target"]["device"] == "cuda":
            _load_cuda_runtime(manifest["target"]["tvm"].get("arch", "sm_80"))
            self.dev = tvm.cuda(0)
            if not self.dev.exist:
                raise MdocError(f"{path}: artifact targets CUDA but this machine has no CUDA GPU")
        else:
            self.dev = tvm.cpu(0)
        lib = tvm.runtime.load_module(str(path / LIBRARY))
        self.vm = VirtualMachine(lib, self.dev)
        self.tvm = tvm

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        args = [self.tvm.runtime.tensor(a, self.dev) for a in check_feeds(self.manifest, feeds, str(self.path))]
        result = self.vm["main"](*args)
        return returned(self.manifest, [result[i].numpy() for i in range(len(self.manifest["outputs"]))])

    def time(self, feeds: dict[str, np.ndarray], repeat: int) -> list[float]:
        """Seconds per call for `repeat` calls after one warm-up, inputs already on the device."""
        import time

        args = [self.tvm.runtime.tensor(a, self.dev) for a in check_feeds(self.manifest, feeds, str(self.path))]
        self.vm["main"](*args)
        self.dev.sync()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self.vm["main"](*args)
            self.dev.sync()
            times.append(time.perf_counter() - start)
        return times


def _load_cuda_runtime(arch: str) -> None:
    """Make TVM ready to load a CUDA library with the runtime-only TVM library as well as the full one.

    The runtime-only library does not load TVM's CUDA sidecar, and the library keeps
    its kernels as CUDA source that TVM compiles (NVRTC, or nvcc with
    TVM_CUDA_COMPILE_MODE=nvcc) when it is loaded; TVM's own compile callback asks
    the compiler's current target for the architecture, which the runtime cannot,
    so mdoc registers one that takes the architecture from the manifest.
    """
    import tvm_ffi
    from tvm.base import _LOADED_LIBS
    from tvm.support import nvcc
    from tvm_ffi.libinfo import load_lib_ctypes

    mode = os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc").lower()

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code: str) -> bytes:
        return nvcc.compile_cuda(code, target_format="cubin" if mode == "nvrtc" else "fatbin", arch=arch,
                                 compiler=mode)

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as e:
        raise MdocError(f"TVM's CUDA runtime cannot be loaded: {' '.join(str(e).split())[:200]}") from None


class _Emulated:
    """Runs an aarch64 library under qemu in the arm64 root that `.ci/setup-arm.sh` builds."""

    def __init__(self, path: Path, manifest: dict):
        from .emulation import arm_root

        if arm_root() is None:
            raise MdocError(f"{path}: artifact is for aarch64; run it on an aarch64 device, or set up emulation "
                            "with `.ci/setup-arm.sh` to run it here under qemu")
        self.path, self.manifest = path, manifest

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        from .emulation import run_aarch64

        ordered = check_feeds(self.manifest, feeds, str(self.path))
        names = [i.get("param", i["name"]) for i in self.manifest["inputs"]]  # Relax's parameter names
        outs = run_aarch64(self.path / LIBRARY, dict(zip(names, ordered)))
        return returned(self.manifest, outs)
