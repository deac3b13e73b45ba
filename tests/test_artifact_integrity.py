"""Artifacts are verified before anything of them is loaded, and a compile is reproducible.

Tampered, dropped or misnamed files and malformed manifests are refused with one
line (exit 2) before TVM ever opens the library; compiling the same model with the
same options twice, into folders of different names, gives byte-identical folders.
"""

from __future__ import annotations

import json
import re
import shutil

import onnx
import pytest

from mdoc.errors import MdocError

from conftest import tiny_model


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    import mdoc

    folder = tmp_path_factory.mktemp("integrity")
    onnx.save(tiny_model(), folder / "tiny.onnx")
    return mdoc.compile(folder / "tiny.onnx", "x86", folder / "tiny.x86", show_progress=False)


@pytest.fixture
def copy(tiny_artifact, tmp_path):
    out = tmp_path / "copy.x86"
    shutil.copytree(tiny_artifact, out)
    return out


@pytest.fixture
def never_loaded(monkeypatch):
    """Fail the test if TVM is asked to load a library."""
    import tvm

    def load_module(*args, **kwargs):
        raise AssertionError(f"the library was loaded: {args}")

    monkeypatch.setattr(tvm.runtime, "load_module", load_module)


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edited = edit(manifest)
    if isinstance(edited, list):  # the edit replaced the whole manifest
        manifest = edited
    path.write_text(json.dumps(manifest))


def test_tampered_library_is_refused_before_it_is_loaded(mdoc_cli, copy, never_loaded):
    data = bytearray((copy / "model.so").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped in the middle, size unchanged
    (copy / "model.so").write_bytes(bytes(data))
    r = mdoc_cli("run", copy)
    assert r.code == 2 and r.err.count("\n") == 1
    assert "file 'model.so' does not match its sha256 in the manifest" in r.err


def test_swapped_library_is_refused(copy, tmp_path, never_loaded):
    import mdoc

    other = tmp_path / "other.onnx"
    proto = tiny_model()
    proto.graph.node[2].op_type = "Sigmoid"
    onnx.save(proto, other)
    built = mdoc.compile(other, "x86", tmp_path / "other.x86", show_progress=False)
    shutil.copy(built / "model.so", copy / "model.so")
    with pytest.raises(MdocError, match="'model.so' does not match its sha256"):
        mdoc.load(copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["files"].pop("model.so"), "gives no sha256 for 'model.so'; refusing to load an unverified library"),
    (lambda m: m["files"].update({"../tiny.onnx": "0" * 64}), "'files' names '../tiny.onnx', which is not a file"),
    (lambda m: m["files"].update({"model.so": "abc"}), "the sha256 of 'model.so' is not 64 hex digits"),
    (lambda m: m["files"].update({"missing.bin": "0" * 64}), "file 'missing.bin' listed in the manifest is missing"),
    (lambda m: [m], "not a JSON object"),
    (lambda m: m.update(files=[]), "'files' is missing or not a JSON object"),
    (lambda m: m.update(inputs=None), "'inputs' is missing or not a JSON array"),
    (lambda m: m["target"].pop("arch"), "'target.arch' is missing or not a string"),
    (lambda m: m["inputs"][0].update(dtype="object"), "inputs\\[0\\]: dtype 'object' is not a tensor element type"),
    (lambda m: m["inputs"][0].update(dtype="float99"), "dtype 'float99' is not a tensor element type"),
    (lambda m: m["inputs"][0].update(shape=[-1, 4]), "inputs\\[0\\]: dim -1 is not a size"),
    (lambda m: m["outputs"][0].update(shape="N,3"), "outputs\\[0\\]: 'shape' is missing or not a list"),
    (lambda m: m["outputs"].append(7), "outputs\\[1\\]: not an object"),
    (lambda m: m.update(runtime={"threads": 10**9}), "'runtime.threads' is not a thread count"),
])
def test_malformed_manifest_is_one_line(mdoc_cli, copy, never_loaded, edit, message):
    _edit_manifest(copy, edit)
    r = mdoc_cli("run", copy)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert r.err.startswith("mdoc: error: ")
    assert re.search(message, r.err), r.err


@pytest.mark.parametrize("text", ["", "{", "[]", '{"backend": ["tvm"]}', '"tvm"', "\xff\xfe"])
def test_unreadable_manifest_is_one_line(mdoc_cli, copy, never_loaded, text):
    (copy / "manifest.json").write_bytes(text.encode("latin-1"))
    r = mdoc_cli("run", copy)
    assert r.code == 2 and r.err.count("\n") == 1 and "manifest" in r.err, r.err


def test_compiling_twice_gives_byte_identical_artifacts(tiny_artifact, tmp_path):
    """Same model, same options, another folder name and working copy: every file is equal."""
    import mdoc

    (tmp_path / "elsewhere").mkdir()
    source = tmp_path / "elsewhere" / "renamed.onnx"
    shutil.copy(tiny_artifact.parent / "tiny.onnx", source)
    again = mdoc.compile(source, "x86", tmp_path / "elsewhere" / "again.x86", show_progress=False)
    first = {p.name: p.read_bytes() for p in sorted(tiny_artifact.iterdir())}
    second = {p.name: p.read_bytes() for p in sorted(again.iterdir())}
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two compiles of the same model"
