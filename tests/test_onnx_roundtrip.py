"""ONNX -> IR -> text -> IR -> ONNX keeps every model's meaning: checker passes, onnxruntime agrees."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from conftest import LIGHT_MODELS, light_expected, light_inputs
from mdoc.models import ZOO, build
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.parser import parse_model
from mdoc.printer import print_model
from mdoc.reference import run_onnxruntime
from mdoc.tensors import random_inputs
from mdoc.verifier import verify


def through_text(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = import_model(proto)
    verify(model)
    resources: dict = {}
    text = print_model(model, resources)
    again = parse_model(text, resources)
    verify(again)
    assert print_model(again, {}) == text
    out = export_model(again)
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=[os.path.basename(p)[6:-5] for p in LIGHT_MODELS])
def test_light_model_roundtrip(path):
    proto = onnx.load(path)
    out = through_text(proto)
    feeds = light_inputs(proto)
    got = run_onnxruntime(out, feeds, optimize=False)
    want = run_onnxruntime(proto, feeds, optimize=False)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    first = next(iter(got.values()))
    np.testing.assert_allclose(first, light_expected(path), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_roundtrip(name):
    proto = build(name, **ZOO[name].test_kwargs)
    out = through_text(proto)
    feeds = random_inputs(import_model(proto))
    got = run_onnxruntime(out, feeds, optimize=False)
    want = run_onnxruntime(proto, feeds, optimize=False)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_scaled_matmul_without_a_tail_exports_its_scale():
    """mdoc.matmul {scale} alone (attention's Q K^T / sqrt(d), fused by fuse-epilogue with no bias or
    activation after it) exported its MatMul but not the Mul: the written file named a missing value."""
    from mdoc.models.llama import llama_decoder
    from mdoc.pass_manager import PassManager, parse_pipeline

    proto = llama_decoder(layers=1)
    model = import_model(proto)
    PassManager(parse_pipeline("infer-shapes,fuse-epilogue,dce")).run(model)
    assert any(n.op == "mdoc.matmul" and "scale" in n.attrs for n in model.graph)
    exported = export_model(model)
    onnx.checker.check_model(exported, full_check=True)
    feeds = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.array([[0, 1, 2]])}
    feeds |= {f"past_key_values.0.{kv}": np.zeros((1, 2, 0, 16), np.float32) for kv in ("key", "value")}
    got, want = run_onnxruntime(exported, feeds), run_onnxruntime(proto, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
