"""Target presets: names users type (`x86`, `aarch64`, `rpi4`, `cuda`) turned into TVM target dicts.

TVM 0.27 takes targets as JSON dicts only, and its LLVM rejects `mcpu: native`
silently (falling back to a generic CPU with no AVX), so `x86` reads the host's
CPU from /proc/cpuinfo and names a real `mcpu`. Each preset also says how to
export the library (the aarch64 ones cross-compile with the Debian toolchain)
and the vector width the default kernels should tile for.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from mdoc.errors import MdocError


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM dict plus what mdoc needs around it."""

    name: str
    tvm: dict
    device: str = "cpu"  # "cpu" or "cuda": where the artifact runs
    arch: str = "x86_64"  # machine the artifact runs on: x86_64 or aarch64
    vector_lanes: int = 16  # fp32 lanes of one SIMD register
    cross_compiler: str | None = None
    description: str = ""
    host: dict | None = field(default=None)

    def as_json(self) -> dict:
        return {"name": self.name, "tvm": self.tvm, "device": self.device, "arch": self.arch,
                "vector_lanes": self.vector_lanes}


_AARCH64_TRIPLE = "aarch64-linux-gnu"
_CROSS = "aarch64-linux-gnu-gcc"


def _cpuinfo_flags() -> tuple[set[str], str, int | None]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set(), "", None
    flags: set[str] = set()
    vendor, family = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu family" and family is None:
            family = int(value.strip() or 0)
    return flags, vendor, family


def host_mcpu() -> str:
    """The most specific LLVM CPU name that is safe on this host (never 'native')."""
    flags, vendor, family = _cpuinfo_flags()
    amd = vendor == "AuthenticAMD"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        if amd:
            return "znver4" if family and family >= 0x19 else "skylake-avx512"
        if "amx_tile" in flags:
            return "sapphirerapids"
        if "avx512_vnni" in flags and "avx512vbmi" in flags:
            return "icelake-server"
        if "avx512_vnni" in flags:
            return "cascadelake"
        return "skylake-avx512"
    if {"avx2", "fma"} <= flags:
        return "znver2" if amd else "haswell"
    return "x86-64"


def _num_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _x86(name: str, mcpu: str, lanes: int, description: str) -> TargetSpec:
    return TargetSpec(name, {"kind": "llvm", "mcpu": mcpu, "num-cores": _num_cores()}, "cpu", "x86_64", lanes,
                      None, description)


def _arm(name: str, mcpu: str | None, cores: int, description: str) -> TargetSpec:
    tvm = {"kind": "llvm", "mtriple": _AARCH64_TRIPLE, "mattr": ["+neon"], "num-cores": cores}
    if mcpu:
        tvm["mcpu"] = mcpu
    return TargetSpec(name, tvm, "cpu", "aarch64", 4, _CROSS, description)


def _cuda(name: str, arch: str, description: str) -> TargetSpec:
    host = {"kind": "llvm", "mcpu": host_mcpu()} if platform.machine() == "x86_64" else {"kind": "llvm"}
    return TargetSpec(name, {"kind": "cuda", "arch": arch, "host": host}, "cuda", platform.machine() or "x86_64",
                      32, None, description)


def _presets() -> dict[str, TargetSpec]:
    mcpu = host_mcpu()
    lanes = 16 if mcpu in ("znver4", "skylake-avx512", "cascadelake", "icelake-server", "sapphirerapids") else 8
    return {p.name: p for p in [
        _x86("x86", mcpu, lanes, f"this host's x86 CPU (mcpu {mcpu})"),
        _x86("x86-avx2", "haswell", 8, "any x86 CPU with AVX2 and FMA (Haswell, Zen 2 and later)"),
        _x86("x86-avx512", "skylake-avx512", 16, "x86 CPUs with AVX-512 (Skylake-SP and later, Zen 4)"),
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
        spec = TargetSpec(spec.name, {**spec.tvm, "arch": arch}, spec.device, spec.arch, spec.vector_lanes,
                          spec.cross_compiler, spec.description)
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
    kind = d["kind"]
    triple = str(d.get("mtriple", ""))
    if kind == "cuda":
        return TargetSpec("json", d, "cuda", platform.machine() or "x86_64", 32, None, "custom CUDA target")
    arm = triple.startswith("aarch64")
    lanes = 4 if arm else (16 if "avx512" in str(d.get("mcpu", "")) or d.get("mcpu") == "znver4" else 8)
    return TargetSpec("json", d, "cpu", "aarch64" if arm else "x86_64", lanes, _CROSS if arm else None,
                      "custom target")
