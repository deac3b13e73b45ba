"""Outputs are never half-written: an interrupted or failing command leaves the old output whole.

Each command's write path is interrupted at its worst moment (after the bytes are
written, before the rename) or killed mid-write in a child process; the old output
must be intact and no temporary must be left beside it (except the hidden one a
SIGKILL cannot clean up).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from mdoc import atomic
from mdoc.errors import MdocError

from conftest import tiny_model


def _interrupt_rename_to(monkeypatch, target):
    """Make the first rename onto `target` raise KeyboardInterrupt, as a ^C at that moment would."""
    real, fired = os.replace, []

    def replace(src, dst, *a, **k):
        if os.path.abspath(dst) == os.path.abspath(target) and not fired:
            fired.append(dst)
            raise KeyboardInterrupt
        return real(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", replace)


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_failing_writer_keeps_the_old_file(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")

    def write(f):
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(out, write)
    assert out.read_bytes() == b"old" and _leftovers(tmp_path, {"out.bin"}) == []


def test_new_file_gets_the_umask_mode_and_an_old_file_keeps_its_mode(tmp_path):
    new = atomic.write_bytes(tmp_path / "new.bin", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    old = tmp_path / "old.bin"
    old.write_bytes(b"")
    old.chmod(0o640)
    atomic.write_bytes(old, b"y")
    assert old.stat().st_mode & 0o777 == 0o640


def test_missing_folder_full_disk_and_folder_target_are_one_line_errors(tmp_path):
    with pytest.raises(MdocError, match="folder .* does not exist"):
        atomic.write_bytes(tmp_path / "no" / "x.onnx", b"")

    def write(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(MdocError, match="x.onnx: cannot write it: No space left on device"):
        atomic.atomic_write(tmp_path / "x.onnx", write)
    with pytest.raises(MdocError, match="is a folder"):
        atomic.write_bytes(tmp_path, b"")
    assert list(tmp_path.iterdir()) == []


def test_sigkill_mid_write_leaves_the_old_file(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old model")
    child = textwrap.dedent(f"""
        import os, signal
        from mdoc.atomic import atomic_write
        def write(f):
            f.write(b"x" * 100000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(out)!r}, write)
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"old model"
    assert all(p.name.startswith(".model.onnx.") for p in tmp_path.iterdir() if p != out)  # a hidden temporary


def test_opt_interrupted_before_the_rename(mdoc_cli, tmp_path, monkeypatch):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), src)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    _interrupt_rename_to(monkeypatch, out)
    r = mdoc_cli("opt", src, "-o", out)
    assert r.code == 130
    assert out.read_bytes() == b"previous output" and _leftovers(tmp_path, {"tiny.onnx", "out.onnx"}) == []


def test_print_mdir_interrupted_before_the_rename(mdoc_cli, tmp_path, monkeypatch):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), src)
    out = tmp_path / "tiny.mdir"
    out.write_text("previous text")
    _interrupt_rename_to(monkeypatch, out)
    r = mdoc_cli("print", src, "-o", out)
    assert r.code == 130
    assert out.read_text() == "previous text"
    assert _leftovers(tmp_path, {"tiny.onnx", "tiny.mdir", "tiny.mdir.npz"}) == []


def test_npz_outputs_interrupted_before_the_rename(tmp_path, monkeypatch):
    from mdoc.tensors import load_npz, save_npz

    out = tmp_path / "outs.npz"
    save_npz(out, {"y": np.ones(3, np.float32)})
    _interrupt_rename_to(monkeypatch, out)
    with pytest.raises(KeyboardInterrupt):
        save_npz(out, {"y": np.zeros(1000, np.float32)})
    assert np.array_equal(load_npz(out)["y"], np.ones(3, np.float32)) and _leftovers(tmp_path, {"outs.npz"}) == []


def test_folder_swap_interrupted_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "art"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    with atomic.staging_folder(out) as staged:
        (staged / "manifest.json").write_text("new")
        _interrupt_rename_to(monkeypatch, out)
        with pytest.raises(KeyboardInterrupt):
            atomic.publish_folder(staged, out)
    assert (out / "manifest.json").read_text() == "old" and _leftovers(tmp_path, {"art"}) == []
    monkeypatch.undo()
    with atomic.staging_folder(out) as staged:
        (staged / "manifest.json").write_text("new")
        atomic.publish_folder(staged, out)
    assert (out / "manifest.json").read_text() == "new" and _leftovers(tmp_path, {"art"}) == []


def test_compile_failing_mid_build_keeps_the_old_artifact(mdoc_cli, tmp_path, monkeypatch):
    from mdoc.targets import tvm_backend

    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), src)
    out = tmp_path / "tiny.x86"
    assert mdoc_cli("compile", src, "-t", "x86", "-o", out, "--dim", "N=2").code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def export(ex, lib, spec):  # half a library, then the C compiler dies
        lib.write_bytes(b"\x7fELF half")
        raise MdocError("exporting the library for x86 failed: the linker was killed")

    monkeypatch.setattr(tvm_backend, "_export", export)
    r = mdoc_cli("compile", src, "-t", "x86", "-o", out, "--dim", "N=2")
    assert r.code == 2 and "the linker was killed" in r.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path, {"tiny.onnx", "tiny.x86"}) == []
    assert mdoc_cli("run", out, "--repeat", "1").code == 0
