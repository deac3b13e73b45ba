"""The one CPU description (targets/cpu_description.py): what each preset and TVM target dict
describes, host detection, and that nothing falls back to a made-up CPU."""

from __future__ import annotations

import pytest

from mdoc.errors import MdocError
from mdoc.targets.cpu_description import CpuSpec, host_mcpu
from mdoc.targets.presets import list_presets, resolve_target


@pytest.mark.parametrize("tvm, isa, lanes, registers, dots", [
    ({"kind": "llvm", "mcpu": "znver4", "num-cores": 2}, "avx512", 16, 32, ("avx512_vnni",)),
    ({"kind": "llvm", "mcpu": "sapphirerapids"}, "avx512", 16, 32, ("avx512_vnni", "avx_vnni")),
    ({"kind": "llvm", "mcpu": "haswell"}, "avx2", 8, 16, ()),
    ({"kind": "llvm", "mcpu": "x86-64"}, "sse", 4, 16, ()),
    ({"kind": "llvm", "mcpu": "x86-64", "mattr": ["+avx2", "+avxvnni"]}, "avx2", 8, 16, ("avx_vnni",)),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "mcpu": "cortex-a72"}, "neon", 4, 32, ()),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+i8mm", "+dotprod"]}, "neon", 4, 32,
     ("dotprod", "i8mm")),
])
def test_a_target_dict_names_its_cpu(tvm, isa, lanes, registers, dots):
    cpu = CpuSpec.from_target(tvm)
    assert (cpu.isa, cpu.lanes, cpu.vector_registers, cpu.dot_product) == (isa, lanes, registers, dots)
    assert cpu.fma_vectors == (isa != "sse")


def test_every_cpu_preset_carries_its_description():
    for name, spec in list_presets().items():
        if spec.device == "cuda":
            assert spec.cpu is None, name
            continue
        assert spec.cpu.target == {k: v for k, v in spec.tvm.items() if k != "host"}, name
        assert (spec.cpu.isa == "neon") == (spec.arch == "aarch64"), name
        assert spec.as_json()["cpu"]["lanes"] == spec.cpu.lanes
    assert resolve_target("x86-avx2").cpu.lanes == 8 and resolve_target("rpi5").cpu.dot_product == ("dotprod",)
    assert resolve_target('{"kind": "llvm", "mcpu": "skylake-avx512"}').cpu.lanes == 16


def test_the_x86_preset_is_this_host():
    host = CpuSpec.host()
    assert resolve_target("x86").cpu == host
    assert host.target["mcpu"] == host_mcpu() and host.cores >= 1
    assert host.l1d_bytes is None or host.l1d_bytes >= 1024


def test_no_cpu_is_made_up():
    with pytest.raises(TypeError):
        CpuSpec()  # noqa - a CpuSpec says which CPU it is
    with pytest.raises(MdocError, match="cannot tell the vector width of mcpu 'bonnell'"):
        resolve_target('{"kind": "llvm", "mcpu": "bonnell"}')
    with pytest.raises(MdocError, match="lanes=32"):
        CpuSpec("avx512", 32, 32, 2, {"kind": "llvm"})
