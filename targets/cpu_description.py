"""The one description of a CPU target: ISA, fp32 vector width, vector registers, cores, caches and
dot-product instructions, read from a TVM target dict or detected on the host.

Why one place: the kernel builders, the layout plan, the generic schedule and tuning all size
their tiles by the vector width and the register file, and each used to work it out from the
`mcpu` on its own (with lists that did not agree).  A resolved target (`presets.TargetSpec`)
carries its `CpuSpec`; code that only holds a TVM target dict derives the same one with
`CpuSpec.from_target`.  Nothing here pretends to be a particular machine: a `CpuSpec` is built
from a target or from this host (`CpuSpec.host()`), or field by field.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from mdoc.errors import MdocError

__all__ = ["CpuSpec", "ISAS", "host_mcpu"]

# isa -> (fp32 lanes, architectural vector registers)
ISAS = {"avx512": (16, 32), "avx2": (8, 16), "sse": (4, 16), "neon": (4, 32)}

# LLVM x86 CPU names by vector ISA; dot-product instructions (int8) by name where the CPU has them
_X86_CPUS = {
    "avx512": ("znver4", "znver5", "skylake-avx512", "cascadelake", "cooperlake", "icelake-server",
               "icelake-client", "sapphirerapids", "tigerlake", "rocketlake", "graniterapids", "emeraldrapids",
               "x86-64-v4"),
    "avx2": ("haswell", "broadwell", "skylake", "znver1", "znver2", "znver3", "alderlake", "raptorlake",
             "meteorlake", "x86-64-v3"),
    "sse": ("x86-64", "x86-64-v2", "generic", ""),
}
_DOT_PRODUCT = {
    "avx512_vnni": ("znver4", "znver5", "cascadelake", "cooperlake", "icelake-server", "icelake-client",
                    "sapphirerapids", "tigerlake", "rocketlake", "graniterapids", "emeraldrapids"),
    "avx_vnni": ("alderlake", "raptorlake", "meteorlake", "sapphirerapids", "graniterapids", "emeraldrapids",
                 "znver5"),
    "dotprod": ("cortex-a55", "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78", "cortex-a710", "cortex-x1",
                "cortex-x2", "neoverse-n1", "neoverse-n2", "neoverse-v1", "apple-m1", "apple-m2"),
    "i8mm": ("cortex-a710", "cortex-x2", "neoverse-n2", "neoverse-v1", "apple-m2"),
}
# mattr features (LLVM spelling) that name a vector ISA or a dot product
_MATTR_ISA = (("avx512f", "avx512"), ("avx2", "avx2"))
_MATTR_DOT = {"avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "dotprod": "dotprod", "i8mm": "i8mm"}
# /proc/cpuinfo flags of the same (x86 "flags", aarch64 "Features")
_FLAG_DOT = {"avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni", "asimddp": "dotprod", "i8mm": "i8mm"}


@dataclass(frozen=True)
class CpuSpec:
    """A CPU as the kernels see it.

    isa: the widest vector ISA the kernels use: "avx512", "avx2", "sse" (x86-64 baseline, no FMA)
        or "neon".
    lanes: fp32 lanes in one vector register (16 for AVX-512, 8 for AVX2, 4 for SSE and NEON).
    vector_registers: architectural vector registers (32 for AVX-512 and NEON, 16 for AVX2 and SSE);
        a register tile keeps `accumulators` of them.
    cores: threads the parallel outer loops are cut for.
    target: the TVM target dict that kernels are built for.
    l1d_bytes, l2_bytes: per-core data cache sizes, where known (host detection reads them).
    dot_product: the int8 dot-product instructions: avx512_vnni, avx_vnni, dotprod, i8mm.
    """

    isa: str
    lanes: int
    vector_registers: int
    cores: int
    target: dict = field(hash=False)
    l1d_bytes: int | None = None
    l2_bytes: int | None = None
    dot_product: tuple[str, ...] = ()

    def __post_init__(self):
        if self.isa not in ISAS:
            raise MdocError(f"CpuSpec.isa={self.isa!r}: expected one of {', '.join(ISAS)}")
        if self.lanes not in (4, 8, 16):
            raise MdocError(f"CpuSpec.lanes={self.lanes}: expected 4 (NEON, SSE), 8 (AVX2) or 16 (AVX-512) fp32 lanes")
        if self.cores < 1 or self.vector_registers < 8:
            raise MdocError(f"CpuSpec: cores={self.cores} and vector_registers={self.vector_registers} "
                            "must be >= 1 and >= 8")

    @property
    def accumulators(self) -> int:
        """Vector registers a register tile may hold as accumulators (the rest feed the FMAs)."""
        return self.vector_registers - 4

    @property
    def fma_vectors(self) -> bool:
        """Whether the CPU has fused multiply-add vectors, which mdoc's hand-scheduled kernels need."""
        return self.isa != "sse"

    @classmethod
    def from_target(cls, target) -> CpuSpec:
        """The CPU a TVM target (a `tvm.target.Target` or its dict) names through mcpu, mattr, mtriple, num-cores."""
        cfg = _target_dict(target)
        mcpu = str(cfg.get("mcpu", "") or "")
        mattr = [str(a).lstrip("+") for a in (cfg.get("mattr") or []) if not str(a).startswith("-")]
        arm = str(cfg.get("mtriple", "") or "").startswith(("aarch64", "arm64")) or "neon" in mattr
        # the widest of what mcpu names and what mattr adds
        named_isas = [name for flag, name in _MATTR_ISA if flag in mattr]
        named_isas += [name for name, cpus in _X86_CPUS.items() if mcpu in cpus]
        isa = "neon" if arm else next((name for name in _X86_CPUS if name in named_isas), None)
        if isa is None:
            known = ", ".join(c for cpus in _X86_CPUS.values() for c in cpus if c)
            raise MdocError(f"target {cfg!r}: cannot tell the vector width of mcpu '{mcpu}'; name one of {known}, "
                            "or give mattr ['+avx2'] / ['+avx512f']")
        named = {_MATTR_DOT[a] for a in mattr if a in _MATTR_DOT}
        dots = tuple(d for d, cpus in _DOT_PRODUCT.items() if mcpu in cpus or d in named)
        cores = int(cfg.get("num-cores", 0) or 0) or _host_cores()
        lanes, registers = ISAS[isa]
        return cls(isa, lanes, registers, cores, _kernel_target(cfg), dot_product=dots)

    @staticmethod
    @lru_cache(maxsize=1)
    def host() -> CpuSpec:
        """This machine: /proc/cpuinfo flags, the cores this process may run on, sysfs cache sizes."""
        cores = _host_cores()
        flags = _cpuinfo()[0]
        l1d, l2 = _cache_sizes()
        flagged = {d for flag, d in _FLAG_DOT.items() if flag in flags}
        dots = tuple(d for d in _DOT_PRODUCT if d in flagged)
        if platform.machine() in ("aarch64", "arm64"):
            target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": cores}
        else:
            target = {"kind": "llvm", "mcpu": host_mcpu(), "num-cores": cores}
        spec = CpuSpec.from_target(target)
        return CpuSpec(spec.isa, spec.lanes, spec.vector_registers, cores, target, l1d, l2, dots)

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.target)

    def as_json(self) -> dict:
        d = asdict(self)
        d["dot_product"] = list(self.dot_product)
        return d


def host_mcpu() -> str:
    """The most specific LLVM CPU name that is safe on this x86 host (never 'native', which TVM 0.27's
    LLVM silently turns into a generic CPU without AVX)."""
    flags, vendor, family = _cpuinfo()
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


def _target_dict(target) -> dict:
    if isinstance(target, dict):
        return dict(target)
    return dict(target.export())  # a tvm.target.Target


def _kernel_target(cfg: dict) -> dict:
    """The keys of a target dict that decide the code of a CPU kernel."""
    return {k: v for k, v in cfg.items() if k in ("kind", "mcpu", "mattr", "mtriple", "num-cores")}


def _host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[frozenset[str], str, int | None]:
    """(feature flags, vendor, family) of the first CPU in /proc/cpuinfo; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset(), "", None
    flags: frozenset[str] = frozenset()
    vendor, family = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu family" and family is None:
            family = int(value.strip() or 0)
    return flags, vendor, family


def _cache_sizes() -> tuple[int | None, int | None]:
    """(L1 data, L2) bytes of cpu0 from sysfs, None where the kernel does not say."""
    sizes: dict[tuple[str, str], int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
        sizes[(level, kind)] = int(size.rstrip("KM")) * scale
    return sizes.get(("1", "Data")), sizes.get(("2", "Unified"))
