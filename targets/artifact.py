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
import math
import os
import platform
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mdoc.backends import MANIFEST, THREAD_CAP
from mdoc.atomic import publish_folder
from mdoc.errors import MdocError

from .feeds import InputChecks
from .storage import STORAGE, from_storage

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
        """Hash every file into the manifest, write it, and swap the folder in (`mdoc.atomic.publish_folder`)."""
        manifest["files"] = {p.name: sha256(p) for p in sorted(self.dir.iterdir()) if p.name != MANIFEST}
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return publish_folder(self.dir, self.out)


def read_manifest(path: Path) -> dict:
    """The manifest of artifact `path`, after checking its form and every file's sha256.

    Runs before anything of the artifact is loaded: the library must be listed (an
    artifact whose manifest drops it would otherwise load unverified), every listed
    name must be a plain file of the folder, and every hash must match.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MdocError(f"{path}: not an mdoc artifact (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, OSError) as e:
        raise MdocError(f"{manifest_path}: malformed manifest ({type(e).__name__}: {e})") from None
    problem = manifest_problem(manifest)
    if problem:
        raise MdocError(f"{manifest_path}: malformed manifest ({problem})")
    files = manifest["files"]
    if LIBRARY not in files:
        raise MdocError(f"{path}: the manifest gives no sha256 for '{LIBRARY}'; refusing to load an unverified library")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise MdocError(f"{path}: file '{name}' listed in the manifest is missing")
        if sha256(f) != digest:
            raise MdocError(f"{path}: file '{name}' does not match its sha256 in the manifest (corrupted or replaced)")
    return manifest


def manifest_problem(manifest) -> str | None:
    """What is wrong with the form of a manifest's fields that loading reads, or None.

    A hand-edited or corrupted manifest must fail here with one line, not deep in
    the loader or the first call with a KeyError.
    """
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, kind in (("files", dict), ("inputs", list), ("outputs", list), ("target", dict)):
        if not isinstance(manifest.get(key), kind):
            return f"'{key}' is missing or not a JSON {'object' if kind is dict else 'array'}"
    for name, digest in manifest["files"].items():
        if name in ("", ".", "..") or "/" in name or "\\" in name or name == MANIFEST:
            return f"'files' names '{name}', which is not a file of the artifact's folder"
        if not isinstance(digest, str) or len(digest) != 64:
            return f"the sha256 of '{name}' is not 64 hex digits"
    target = manifest["target"]
    for key in ("arch", "device"):
        if not isinstance(target.get(key), str):
            return f"'target.{key}' is missing or not a string"
    if target["device"] == "cuda" and not isinstance(target.get("tvm"), dict):
        return "'target.tvm' is missing or not an object"
    for kind in ("inputs", "outputs"):
        for k, sig in enumerate(manifest[kind]):
            problem = _signature_problem(sig)
            if problem:
                return f"{kind}[{k}]: {problem}"
    runtime = manifest.get("runtime")
    if runtime is not None and not (isinstance(runtime, dict) and type(runtime.get("threads")) is int
                                    and 0 < runtime["threads"] <= 4096):
        return "'runtime.threads' is not a thread count"
    return None


def _signature_problem(sig) -> str | None:
    if not isinstance(sig, dict):
        return "not an object"
    if not isinstance(sig.get("name"), str):
        return "'name' is missing or not a string"
    if "param" in sig and not isinstance(sig["param"], str):
        return "'param' is not a string"
    dtype = sig.get("dtype")
    if not isinstance(dtype, str):
        return "'dtype' is missing or not a string"
    if dtype not in STORAGE:
        try:
            kind = np.dtype(dtype).kind
        except TypeError:
            kind = None
        if kind is None or kind in "OUSMm":  # objects and strings never cross into a library
            return f"dtype '{dtype}' is not a tensor element type"
    shape = sig.get("shape")
    if not isinstance(shape, list) or len(shape) > 64:
        return "'shape' is missing or not a list of dims"
    for d in shape:
        if not (d is None or isinstance(d, str) or (type(d) is int and 0 <= d < 2**62)):
            return f"dim {d!r} is not a size, a name or null"
    return None


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
    """Runs the library in this process with TVM's Relax VM, at a few microseconds per call over the kernels.

    What `load` can prepare it does: the input checks (`feeds.InputChecks`), the VM's
    `main`, which outputs need a dtype conversion. On CPU an input that is C-contiguous,
    writeable and 64-byte aligned (TVM's kernels assume that alignment) goes to the VM
    without a copy (`tvm_ffi.from_dlpack`, 0.3 us, against 26-29 us for
    `tvm.runtime.tensor`); any other is copied into an aligned buffer kept per input.
    Outputs are copied out of the VM's tensors (`np.from_dlpack(t).copy()`, under 1 us
    for a small output, against 6-9 us for `.numpy()`): the VM may return an input, a
    constant or one tensor twice, so the caller gets arrays of its own that the next call
    cannot overwrite. Calls are serialized by a lock: the VM and the staging buffers are
    not for two threads at once. The thread count the manifest chose (`runtime_threads`: one for a
    small static model), at most MDOC_MAX_THREADS (`thread_cap`), sizes TVM's pool unless
    TVM_NUM_THREADS is set.
    """

    def __init__(self, path: Path, manifest: dict):
        chosen = "TVM_NUM_THREADS" in os.environ  # the user's word beats the manifest's
        # TVM's runtime uses half the cores on x86 unless told otherwise (measured: one thread on 2 cores).
        os.environ.setdefault("TVM_NUM_THREADS", str(min(len(os.sched_getaffinity(0)), thread_cap())))
        import tvm
        import tvm_ffi
        from tvm.runtime.vm import VirtualMachine  # not tvm.relax: works with the runtime-only library too

        self.path, self.manifest = path, manifest
        self._cpu = manifest["target"]["device"] != "cuda"
        if not self._cpu:
            _load_cuda_runtime(manifest["target"]["tvm"].get("arch", "sm_80"))
            self.dev = tvm.cuda(0)
            if not self.dev.exist:
                raise MdocError(f"{path}: artifact targets CUDA but this machine has no CUDA GPU")
        else:
            self.dev = tvm.cpu(0)
        lib = tvm.runtime.load_module(str(path / LIBRARY))
        self.vm = VirtualMachine(lib, self.dev)
        _check_signature(self.vm, manifest, path)
        if self._cpu and not chosen and "runtime" in manifest:
            _use_threads(int(manifest["runtime"]["threads"]))
        self.tvm, self._from_dlpack = tvm, tvm_ffi.from_dlpack
        self._main = self.vm["main"]
        self._check = InputChecks(manifest["inputs"], str(path))
        # (name, dtype, whether numpy can take the VM's tensor in place: CPU outputs of numpy's dtypes)
        self._outputs = tuple((o["name"], o["dtype"], self._cpu and _dlpack_readable(o["dtype"]))
                              for o in manifest["outputs"])
        self._staging: list[tuple[np.ndarray, object] | None] = [None] * len(manifest["inputs"])
        self._lock = threading.Lock()

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        arrays = self._check(feeds)
        with self._lock:
            try:
                result = self._main(*[self._to_vm(i, a) for i, a in enumerate(arrays)])
            except Exception as e:  # noqa: BLE001  (TVM reports a failed allocation as its own error type)
                if isinstance(e, MemoryError) or "bad_alloc" in str(e) or "Out of memory" in str(e):
                    shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(self._check.names, arrays))
                    on = f" on inputs {shapes}" if shapes else ""
                    raise MdocError(f"{self.path}: out of memory running the model{on}") from None
                if "ErrorContext(fn=main, loc=param" in str(e):  # the VM's check of an argument
                    detail = " ".join(str(e).split())
                    raise MdocError(f"{self.path}: the library refuses its inputs as the manifest describes them "
                                    f"(the manifest was edited or belongs to another library): "
                                    f"{detail[detail.find('ErrorContext'):][:200]}") from None
                raise
            values = [np.from_dlpack(t).copy() if readable else t.numpy()
                      for (_, _, readable), t in zip(self._outputs, result)]
        return {name: from_storage(v, dtype) for (name, dtype, _), v in zip(self._outputs, values)}

    def resident(self, feeds: dict) -> list:
        """One call whose inputs may be the VM's own tensors from an earlier call (a decoder's KV cache)
        and whose outputs stay the VM's tensors: nothing is copied either way. numpy inputs take
        the usual path; `to_numpy` reads an output (for a decoder, only the last logits row)."""
        names = self._check.names
        missing = [n for n in names if n not in feeds]
        if missing or len(feeds) != len(names):
            raise MdocError(f"{self.path}: inputs {sorted(feeds)} do not match the artifact's {names}")
        with self._lock:
            result = self._main(*[self._to_vm(i, feeds[n]) if isinstance(feeds[n], np.ndarray) else feeds[n]
                                  for i, n in enumerate(names)])
            return [result[k] for k in range(len(self._outputs))]

    def to_numpy(self, tensor) -> np.ndarray:
        """A VM tensor as numpy: a view on CPU (valid while the tensor lives), else a copy."""
        return np.from_dlpack(tensor) if self._cpu else tensor.numpy()

    def empty(self, shape: tuple, dtype: str):
        """A VM tensor of zeros (an empty cache: a length-0 past)."""
        return self.tvm.runtime.tensor(np.zeros(shape, dtype), self.dev)

    def _to_vm(self, index: int, a: np.ndarray):
        """Input `index` as the VM's tensor: on CPU without a copy where it can (`_on_cpu`), else copied to the device."""
        return self._on_cpu(index, a) if self._cpu else self.tvm.runtime.tensor(_contiguous(a), self.dev)

    def _on_cpu(self, index: int, a: np.ndarray):
        """Input `index` as a TVM tensor: `a` itself where its layout allows, else a copy in its staging buffer."""
        if a.dtype.kind not in "biufc":  # bfloat16 and other ml_dtypes: numpy has no DLPack for them
            return self.tvm.runtime.tensor(_contiguous(a), self.dev)
        flags = a.flags
        if flags.c_contiguous and flags.writeable and a.size:
            t = self._from_dlpack(a)
            if t.data_ptr() % ALIGNMENT == 0:
                return t
        staged = self._staging[index]
        if staged is None or staged[0].shape != a.shape:
            staged = self._staging[index] = aligned(a.shape, a.dtype)
        staged[0][...] = a
        return staged[1]


def _check_signature(vm, manifest: dict, path: Path) -> None:
    """Refuse a manifest whose inputs are not the library's parameters (the manifest has no hash of
    its own: an edited one must fail here, in one line, not inside the VM's first call)."""
    arity = vm._get_function_arity("main")
    params = [vm._get_function_param_name("main", i) for i in range(arity)]
    listed = [i.get("param", i["name"]) for i in manifest["inputs"]]
    if params != listed:
        raise MdocError(f"{path}: the library takes inputs ({', '.join(params)}) but the manifest lists "
                        f"({', '.join(listed)}); the manifest was edited or belongs to another library")


_POOL_THREADS = [0]  # what the loaded artifacts asked of TVM's process-wide thread pool (the largest)


def thread_cap() -> int:
    """The most threads an artifact may ask of TVM's pool in this process (MDOC_MAX_THREADS; unset: no cap).
    `mdoc serve` sets it so that its workers' pools and their HTTP event loops share the cores, where each
    artifact's own choice assumes it has the machine to itself."""
    value = os.environ.get(THREAD_CAP, "")
    return max(1, int(value)) if value.isdigit() else 1 << 16


def _use_threads(n: int) -> None:
    """Size TVM's thread pool for an artifact that asked for `n` threads (`runtime_threads`), within the
    process's cap: the pool is one per process, so it takes the most any loaded artifact asked for."""
    n = min(n, thread_cap())
    if n > _POOL_THREADS[0]:
        import tvm_ffi

        _POOL_THREADS[0] = n
        tvm_ffi.get_global_func("runtime.config_threadpool")(0, n)


ALIGNMENT = 64  # bytes; what TVM's kernels assume of every buffer they are given


def aligned(shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, object]:
    """An uninitialized array of `shape` at an ALIGNMENT-byte address, and the TVM tensor that views it."""
    from tvm_ffi import from_dlpack

    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT + dtype.itemsize, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    if nbytes == 0:  # numpy gives empty arrays odd strides and addresses; TVM checks both
        strides = [dtype.itemsize * math.prod(shape[k + 1:]) for k in range(len(shape))]
        base = raw[start:start + dtype.itemsize].view(dtype)
        array = np.lib.stride_tricks.as_strided(base, shape, strides, writeable=True)
    else:
        array = raw[start:start + nbytes].view(dtype).reshape(shape)
    return array, from_dlpack(array, require_alignment=ALIGNMENT)


def _contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else a.copy(order="C")  # np.ascontiguousarray makes scalars 1-d


def _dlpack_readable(dtype_name: str) -> bool:
    """Whether numpy takes the library's tensors for an output of `dtype_name` through DLPack
    (the storage types and numpy's own numbers; bfloat16 and the like go through `.numpy()`)."""
    if dtype_name in STORAGE:
        return True
    try:
        return np.dtype(dtype_name).kind in "biufc"
    except TypeError:
        return False

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


def _emulator(machine: str):
    """The module that runs `machine` libraries here, from the `mdoc.emulators` entry-point group (mdoc.tooling
    registers qemu for aarch64); None when nothing is registered for it."""
    from importlib import metadata

    for ep in metadata.entry_points(group="mdoc.emulators"):
        if ep.name == machine:
            return ep.load()
    return None


class _Emulated:
    """Runs an aarch64 library under qemu in the arm64 root that `.ci/setup-arm.sh` builds."""

    def __init__(self, path: Path, manifest: dict):
        self.emulator = _emulator("aarch64")
        if self.emulator is None or self.emulator.arm_root() is None:
            raise MdocError(f"{path}: artifact is for aarch64; run it on an aarch64 device, or set up emulation "
                            "with `.ci/setup-arm.sh` to run it here under qemu")
        self.path, self.manifest = path, manifest
        self._check = InputChecks(manifest["inputs"], str(path))

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        ordered = [_contiguous(a) for a in self._check(feeds)]
        names = [i.get("param", i["name"]) for i in self.manifest["inputs"]]  # Relax's parameter names
        outs = self.emulator.run_aarch64(self.path / LIBRARY, dict(zip(names, ordered)))
        return returned(self.manifest, outs)
