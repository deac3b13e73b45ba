"""The foundation commands on real files: inspect, print, opt, compare, zoo, passes."""

from __future__ import annotations

import json

import numpy as np
import onnx

from conftest import tiny_model


def test_inspect_json(mdoc_cli, tiny_path):
    r = mdoc_cli("inspect", tiny_path, "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["inputs"] == [{"name": "x", "type": "f32[N,4]"}]
    assert data["outputs"] == [{"name": "y", "type": "f32[N,3]"}]
    assert data["ops"] == {"onnx.Add": 1, "onnx.MatMul": 1, "onnx.Relu": 1}
    assert data["parameters"] == 15 and data["parameter_bytes"] == 60
    assert data["flops"] == 2 * 3 * 4 + 3 + 3  # matmul per row, add, relu (N counted as 1)


def test_inspect_text(mdoc_cli, tiny_path):
    r = mdoc_cli("inspect", tiny_path)
    assert r.code == 0
    assert "x: f32[N,4]" in r.out and "onnx.MatMul" in r.out and "parameters: 15" in r.out


def test_print_and_back(mdoc_cli, tiny_path, tmp_path):
    r = mdoc_cli("print", tiny_path)
    assert r.code == 0
    assert "onnx.MatMul(%x, %W)" in r.out and "-> (%y: f32[N,3])" in r.out
    mdir = tmp_path / "tiny.mdir"
    assert mdoc_cli("print", tiny_path, "-o", mdir).code == 0
    back = tmp_path / "back.onnx"
    assert mdoc_cli("opt", mdir, "-o", back, "-O0").code == 0
    r = mdoc_cli("compare", tiny_path, back)
    assert r.code == 0, r.err
    assert r.out.startswith("ok   y:")


def test_compare_detects_difference(mdoc_cli, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(tiny_model(), a)
    m = tiny_model()
    m.graph.node[2].op_type = "Sigmoid"
    onnx.save(m, b)
    r = mdoc_cli("compare", a, b, "--json")
    assert r.code == 1
    report = json.loads(r.out)
    assert report["ok"] is False and report["outputs"][0]["name"] == "y"
    assert "1 of 1 outputs differ" in r.err


def test_compare_with_given_inputs(mdoc_cli, tiny_path, tmp_path):
    feeds = tmp_path / "in.npz"
    np.savez(feeds, x=np.ones((2, 4), np.float32))
    r = mdoc_cli("compare", tiny_path, tiny_path, "--inputs", feeds)
    assert r.code == 0, r.err


def test_opt_writes_atomically_and_reports(mdoc_cli, tiny_path, tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.html"
    r = mdoc_cli("opt", tiny_path, "-o", out, "-O2", "--timing", "--check-each", "--report", report)
    assert r.code == 0, r.err
    assert "fold-constants" in r.out and "total" in r.out
    page = report.read_text()
    assert "<table>" in page and "fold-constants" in page
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mdoc-")] == []


def test_print_ir_after(mdoc_cli, tiny_path, tmp_path):
    r = mdoc_cli("opt", tiny_path, "-o", tmp_path / "o.mdir", "-p", "dce", "--print-ir-after", "dce")
    assert r.code == 0, r.err
    assert "# ----- IR after dce -----" in r.err and "graph @tiny" in r.err


def test_zoo_list_and_build(mdoc_cli, tmp_path):
    r = mdoc_cli("zoo", "list")
    assert r.code == 0 and "resnet18" in r.out and "bert_encoder" in r.out
    out = tmp_path / "s.onnx"
    assert mdoc_cli("zoo", "build", "sample", "-o", out).code == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_passes_lists_options(mdoc_cli):
    r = mdoc_cli("passes", "--json")
    assert r.code == 0
    data = json.loads(r.out)
    names = {p["name"] for p in data["passes"]}
    assert {"fold-constants", "dce", "cse", "simplify", "infer-shapes"} <= names
    fold = next(p for p in data["passes"] if p["name"] == "fold-constants")
    assert {"name": "max-bytes", "type": "int", "default": 1 << 20} in fold["options"]


def test_bundled_sample_is_what_the_builder_makes(tmp_path):
    from pathlib import Path

    from mdoc.models import build

    bundled = Path(__file__).resolve().parents[1] / "models" / "sample.onnx"
    assert onnx.load(bundled).SerializeToString() == build("sample").SerializeToString()
