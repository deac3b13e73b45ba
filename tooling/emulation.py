"""Run aarch64 TVM artifacts on an x86-64 machine, under qemu user-mode emulation.

Why this exists: mdoc's ARM edge-device route cross-compiles a model for
aarch64 (`{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}`,
exported with `aarch64-linux-gnu-gcc`), and there is no ARM machine in CI.
Linking proves little; this module loads the exported library with the real
aarch64 TVM runtime (the `apache-tvm` aarch64 wheel, inside an arm64 Debian
root made by `.ci/setup-arm.sh`) and runs it with `qemu-aarch64-static`, so
tests can check the numbers the artifact computes against numpy or onnxruntime.

How a run works: a temporary directory inside the root receives a copy of the
library, the inputs as an .npz and a small runner script; the root's python3
runs the script under `qemu-aarch64-static -L <root>` (no chroot, binfmt_misc
or root privileges needed); the runner imports TVM in runtime-only mode
(`TVM_USE_RUNTIME_LIB=1`: the 240 MB compiler library is never loaded, which
makes the import about 1 s instead of 6 s under emulation), drives the Relax VM
through `tvm.runtime.vm.VirtualMachine`, and writes the outputs back as .npz.
Each run is a fresh process: expect about 2 s of start-up on top of the model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np

__all__ = ["arm_root", "run_aarch64", "why_no_arm_root"]

DEFAULT_ROOT = Path.home() / ".cache" / "mdoc" / "arm64-root"
STAMP = ".mdoc-arm-root"  # written by .ci/setup-arm.sh once the root works
ROOT_PYTHON = "usr/bin/python3"
log = logging.getLogger(__name__)
SETUP_HINT = "run .ci/setup-arm.sh as root, or set MDOC_ARM_ROOT to a root it made"

_EM_AARCH64 = 183
_ELF_MACHINES = {3: "x86 (32-bit)", 40: "arm (32-bit)", 62: "x86-64", 243: "riscv"}


def _configured_root() -> Path:
    return Path(os.environ.get("MDOC_ARM_ROOT") or DEFAULT_ROOT).absolute()


def _qemu() -> str | None:
    override = os.environ.get("MDOC_QEMU_AARCH64")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def why_no_arm_root() -> str | None:
    """Why emulated aarch64 runs are unavailable here, in one line; None when they are available."""
    root = _configured_root()
    if not (root / STAMP).is_file():
        return f"no arm64 root at {root}: {SETUP_HINT}"
    if not (root / ROOT_PYTHON).exists():
        return f"the arm64 root at {root} has no {ROOT_PYTHON}: remove it and {SETUP_HINT}"
    if _qemu() is None:
        return "qemu-aarch64-static is not on PATH: install qemu-user-static (.ci/setup-arm.sh does)"
    return None


def arm_root() -> Path | None:
    """The arm64 root that `.ci/setup-arm.sh` made ($MDOC_ARM_ROOT, else ~/.cache/mdoc/arm64-root); None when not set up."""
    return None if why_no_arm_root() else _configured_root()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _check_aarch64_library(lib: Path) -> None:
    if not lib.is_file():
        raise RuntimeError(f"run_aarch64: library {lib} does not exist")
    with lib.open("rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise RuntimeError(
            f"run_aarch64: {lib} is not an ELF shared library; export it with "
            "ex.export_library(path, fcompile=tvm.support.cc.cross_compiler('aarch64-linux-gnu-gcc'))"
        )
    machine = int.from_bytes(header[18:20], "little")
    if machine != _EM_AARCH64:
        kind = _ELF_MACHINES.get(machine, f"ELF machine {machine}")
        raise RuntimeError(
            f"run_aarch64: {lib} is built for {kind}, not aarch64; compile with target "
            '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"} and export with the aarch64 cross compiler'
        )


# Runs inside the root, under emulation, with the root's python3 (3.11) and the
# aarch64 TVM wheels.  Everything it touches lives next to it, so it works the
# same under `qemu -L <root>` and inside a chroot.  Arrays cross as .npz entries
# arr_<i> (any parameter name works) described by JSON; ml_dtypes types
# (bfloat16, float8_*) cross as unsigned integers of their size plus the type's
# name.  Exit status 3 means the failure is described by the one line in error.txt.
_RUNNER = textwrap.dedent(
    """\
    import json, os, sys, time
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"  # runtime only: never load libtvm_compiler.so
    work = os.path.dirname(os.path.abspath(__file__))

    def fail(message):
        with open(os.path.join(work, "error.txt"), "w") as f:
            f.write(" ".join(message.split()) + "\\n")
        sys.exit(3)

    def first_line(exc):
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        return type(exc).__name__ + (": " + lines[0] if lines else "")

    try:
        import numpy as np
        import tvm
        from tvm.runtime.vm import VirtualMachine
    except Exception as exc:
        fail("cannot import the aarch64 TVM runtime: " + first_line(exc))

    with open(os.path.join(work, "spec.json")) as f:
        spec = json.load(f)
    func = spec["func"]
    t0 = time.perf_counter()
    try:
        vm = VirtualMachine(tvm.runtime.load_module(os.path.join(work, "lib.so")), tvm.cpu())
    except Exception as exc:
        fail("cannot load the library as a Relax VM executable: " + first_line(exc))
    try:
        arity = vm.module["get_function_arity"](func)
        params = [vm.module["get_function_param_name"](func, i) for i in range(arity)]
    except Exception as exc:
        fail(f"no function {func!r} in the library: " + first_line(exc))

    given = {}
    with np.load(os.path.join(work, "inputs.npz"), allow_pickle=False) as data:
        for i, (name, dtype) in enumerate(spec["inputs"]):
            array = data[f"arr_{i}"]
            if dtype is not None:
                import ml_dtypes
                array = array.view(getattr(ml_dtypes, dtype))
            given[name] = array
    if sorted(given) != sorted(params):
        fail(f"{func} takes inputs ({', '.join(params)}) but was given ({', '.join(given)})")
    args = [tvm.runtime.tensor(np.array(given[p], order="C"), tvm.cpu()) for p in params]  # 0-d stays 0-d
    t1 = time.perf_counter()

    def flatten(value, out):
        if hasattr(value, "numpy"):
            out.append(value.numpy())
        elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            out.append(np.asarray(value, dtype="int64"))  # a shape (tvm_ffi.Shape is a tuple of ints)
        elif isinstance(value, (int, float, bool)):
            out.append(np.asarray(value))
        else:
            try:
                items = list(value)
            except TypeError:
                fail(f"{func} returned a {type(value).__name__}, which is neither a tensor nor a tuple")
            for item in items:
                flatten(item, out)
        return out

    try:
        result = vm[func](*args)
    except Exception as exc:
        fail(f"{func} failed: " + first_line(exc))
    t2 = time.perf_counter()
    outputs = flatten(result, [])
    dtypes = [o.dtype.name if o.dtype.kind == "V" else None for o in outputs]
    raw = [o.view(f"u{o.dtype.itemsize}") if d else o for o, d in zip(outputs, dtypes)]
    np.savez(os.path.join(work, "outputs.npz"), *raw)
    with open(os.path.join(work, "outputs.json"), "w") as f:
        json.dump({"dtypes": dtypes, "load_s": t1 - t0, "run_s": t2 - t1}, f)
    """
)


def _to_raw(name: str, value: object) -> tuple[np.ndarray, str | None]:
    """An input array as it crosses to the emulated runtime, and its ml_dtypes type name if it has one."""
    array = np.array(value, order="C")  # np.ascontiguousarray would make a scalar input 1-d
    if array.dtype.hasobject:
        raise RuntimeError(f"run_aarch64: input {name!r} has dtype object; give a numeric array")
    if array.dtype.kind == "V":
        import ml_dtypes

        if getattr(ml_dtypes, array.dtype.name, None) != array.dtype.type or array.dtype.itemsize not in (1, 2, 4, 8):
            raise RuntimeError(f"run_aarch64: input {name!r} has dtype {array.dtype}, which cannot cross to the emulated runtime")
        return array.view(f"u{array.dtype.itemsize}"), array.dtype.name
    return array, None


def _from_raw(array: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None:
        return array
    import ml_dtypes

    return array.view(getattr(ml_dtypes, dtype))


def run_aarch64(
    lib_path: str | os.PathLike,
    func_inputs: dict[str, np.ndarray],
    *,
    func_name: str = "main",
    root: str | os.PathLike | None = None,
    num_threads: int | None = None,
    timeout: float = 600.0,
) -> list[np.ndarray]:
    """Run `func_name` of an exported aarch64 Relax library under qemu; return its outputs, tuples flattened.

    `func_inputs` maps the function's parameter names to arrays (all of them, no
    others); they are passed in the function's parameter order.  `root`
    defaults to `arm_root()`; `num_threads` sets TVM_NUM_THREADS for the run.
    Every failure raises RuntimeError with a one-line message.
    """
    lib = Path(lib_path).absolute()
    _check_aarch64_library(lib)
    if root is None:
        reason = why_no_arm_root()
        if reason:
            raise RuntimeError(f"run_aarch64: {reason}")
        root_dir = _configured_root()
    else:
        root_dir = Path(root).absolute()  # the emulated python runs with cwd in the work directory
        if not (root_dir / ROOT_PYTHON).exists():
            raise RuntimeError(f"run_aarch64: {root_dir} has no {ROOT_PYTHON}: {SETUP_HINT}")
    qemu = _qemu()
    if qemu is None:
        raise RuntimeError("run_aarch64: qemu-aarch64-static is not on PATH: install qemu-user-static")

    names: list[str] = []
    raw: list[np.ndarray] = []
    dtypes: list[str | None] = []
    for name, value in func_inputs.items():
        if not isinstance(name, str):
            raise RuntimeError(f"run_aarch64: input names must be strings, got {name!r}")
        array, dtype = _to_raw(name, value)
        names.append(name)
        raw.append(array)
        dtypes.append(dtype)

    tmp_parent = root_dir / "tmp"
    if not os.access(tmp_parent, os.W_OK):
        raise RuntimeError(f"run_aarch64: cannot write to {tmp_parent}; run .ci/setup-arm.sh again or fix its permissions")
    work = Path(tempfile.mkdtemp(prefix="mdoc-run-", dir=tmp_parent))
    try:
        try:
            os.link(lib, work / "lib.so")
        except OSError:
            shutil.copyfile(lib, work / "lib.so")
        np.savez(work / "inputs.npz", *raw)
        spec = {"func": func_name, "inputs": [[n, d] for n, d in zip(names, dtypes)]}
        (work / "spec.json").write_text(json.dumps(spec))
        (work / "runner.py").write_text(_RUNNER)

        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TVM_USE_RUNTIME_LIB": "1"}
        if num_threads is not None:
            env["TVM_NUM_THREADS"] = str(int(num_threads))
        cmd = [qemu, "-L", str(root_dir), str(root_dir / ROOT_PYTHON), "-I", str(work / "runner.py")]
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"run_aarch64: {lib.name} did not finish within {timeout:g} s under qemu") from None

        error_file = work / "error.txt"
        if error_file.is_file():
            raise RuntimeError(f"run_aarch64: {lib.name}: {error_file.read_text().strip()}")
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])
            how = f"signal {_signal_name(-proc.returncode)}" if proc.returncode < 0 else f"status {proc.returncode}"
            raise RuntimeError(f"run_aarch64: the emulated python exited with {how} running {lib.name}: {tail or 'no output'}")
        report = json.loads((work / "outputs.json").read_text())
        # time inside the emulated process: loading the library, then one call
        log.debug("run_aarch64 %s: load %.3f s, run %.3f s", lib.name, report["load_s"], report["run_s"])
        with np.load(work / "outputs.npz", allow_pickle=False) as data:
            return [_from_raw(data[f"arr_{i}"], d) for i, d in enumerate(report["dtypes"])]
    finally:
        shutil.rmtree(work, ignore_errors=True)
