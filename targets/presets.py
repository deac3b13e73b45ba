"""Target presets: names users type (`x86`, `aarch64`, `rpi4`, `cuda`) turned into TVM target dicts.

TVM 0.27 takes targets as JSON dicts only, and its LLVM rejects `mcpu: native`
silently (falling back to a generic CPU with no AVX), so `x86` reads the host's
CPU from /proc/cpuinfo and names a real `mcpu`. Each preset also says how to
export the library (the aarch64 ones cross-compile with the Debian toolchain)
and describes the CPU the kernels tile for (`cpu_description.CpuSpec`).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, replace
from pathlib import Path

from mdoc.errors import MdocError

from .cpu_description import CpuSpec, host_mcpu


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM dict plus what mdoc needs around it.

    cpu: the description of the CPU the artifact runs on (`cpu_description.CpuSpec`: ISA, vector
    width, registers, cores, caches, dot products) that every kernel, the layout plan, the generic
    schedule and tuning read; None for a GPU target.
    """

    name: str
    tvm: dict
    device: str = "cpu"  # "cpu" or "cuda": where the artifact runs
    arch: str = "x86_64"  # machine the artifact runs on: x86_64 or aarch64
    cpu: CpuSpec | None = None
    cross_compiler: str | None = None
    description: str = ""

    def as_json(self) -> dict:
        return {"name": self.name, "tvm": self.tvm, "device": self.device, "arch": self.arch,
                "cpu": self.cpu.as_json() if self.cpu is not None else None}


_AARCH64_TRIPLE = "aarch64-linux-gnu"
_CROSS = "aarch64-linux-gnu-gcc"


def _cpu(name: str, tvm: dict, description: str, cpu: CpuSpec | None = None) -> TargetSpec:
    """A CPU target; `cpu` defaults to what the TVM dict names."""
    cpu = cpu or CpuSpec.from_target(tvm)
    arm = cpu.isa == "neon"
    return TargetSpec(name, tvm, "cpu", "aarch64" if arm else "x86_64", cpu, _CROSS if arm else None, description)


def _x86(name: str, mcpu: str, description: str) -> TargetSpec:
    return _cpu(name, {"kind": "llvm", "mcpu": mcpu, "num-cores": _num_cores()}, description)


def _x86_host() -> TargetSpec:
    if platform.machine() != "x86_64":
        return _x86("x86", "x86-64", "any x86-64 CPU (this host is not x86)")
    host = CpuSpec.host()
    return _cpu("x86", dict(host.target), f"this host's x86 CPU (mcpu {host.target['mcpu']})", host)


def _arm(name: str, mcpu: str | None, cores: int, description: str) -> TargetSpec:
    tvm = {"kind": "llvm", "mtriple": _AARCH64_TRIPLE, "mattr": ["+neon"], "num-cores": cores}
    if mcpu:
        tvm["mcpu"] = mcpu
    return _cpu(name, tvm, description)


def _cuda(name: str, arch: str, description: str) -> TargetSpec:
    host = {"kind": "llvm", "mcpu": host_mcpu()} if platform.machine() == "x86_64" else {"kind": "llvm"}
    return TargetSpec(name, {"kind": "cuda", "arch": arch, "host": host}, "cuda", platform.machine() or "x86_64",
                      None, None, description)


def _num_cores() -> int:
    return CpuSpec.host().cores


def _presets() -> dict[str, TargetSpec]:
    return {p.name: p for p in [
        _x86_host(),
        _x86("x86-avx2", "haswell", "any x86 CPU with AVX2 and FMA (Haswell, Zen 2 and later)"),
        _x86("x86-avx512", "skylake-avx512", "x86 CPUs with AVX-512 (Skylake-SP and later, Zen 4)"),
        _arm("aarch64", None, 4, "generic 64-bit ARM with NEON (cross-compiled)"),
        _arm("rpi4", "cortex-a72", 4, "Raspberry Pi 4 (Cortex-A72, 4 cores)"),
        _arm("rpi5", "cortex-a76", 4, "Raspberry Pi 5 (Cortex-A76, 4 cores)"),
        _arm("jetson-orin-cpu", "cortex-a78", 8, "NVIDIA Jetson Orin CPU (Cortex-A78AE, up to 12 cores)"),
        _cuda("cuda", "sm_80", "NVIDIA GPU through CUDA; pick the GPU with --arch sm_XX (default sm_80)"),
        _cuda("jetson-orin-gpu", "sm_87", "NVIDIA Jetson Orin GPU (sm_87)"),
    ]}


def list_presets() -> dict[str, TargetSpec]:
    return _presets()


def resolve_target(text: str, arch: str | None = None) -> TargetSpec:
    """A preset name, a JSON target dict (inline or a .json file), with an optional CUDA `arch` override."""
    presets = _presets()
    if text in presets:
        spec = presets[text]
    else:
        spec = _from_json(text, presets)
    if arch:
        if spec.device != "cuda":
            raise MdocError(f"--arch {arch} only applies to CUDA targets, not '{spec.name}'")
        if not arch.startswith("sm_") or not arch[3:].isdigit():
            raise MdocError(f"--arch '{arch}' is not a CUDA architecture like sm_80")
        spec = replace(spec, tvm={**spec.tvm, "arch": arch})
    return spec


def _from_json(text: str, presets: dict[str, TargetSpec]) -> TargetSpec:
    raw = text
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise MdocError(f"{text}: target file not found")
        raw = path.read_text()
    elif not text.lstrip().startswith("{"):
        raise MdocError(f"unknown target '{text}' (presets: {', '.join(presets)}; or a JSON target dict)")
    try:
        d = json.loads(raw)
    except ValueError as e:
        raise MdocError(f"target '{text[:60]}' is not valid JSON: {e}") from None
    if not isinstance(d, dict) or "kind" not in d:
        raise MdocError(f"target '{text[:60]}' must be a JSON object with a 'kind' (llvm, cuda, ...)")
    if d.get("mcpu") == "native":
        raise MdocError("target mcpu 'native' is silently wrong in TVM 0.27's LLVM; name the CPU (e.g. znver4) "
                        "or use the 'x86' preset")
    if d["kind"] == "cuda":
        return TargetSpec("json", d, "cuda", platform.machine() or "x86_64", None, None, "custom CUDA target")
    return _cpu("json", d, "custom target")
