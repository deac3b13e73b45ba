"""runtime_threads: a small static model runs on one thread; dynamic or heavy ones on every core."""

from __future__ import annotations

import json

import onnx

import mdoc
from mdoc.models.sample import sample
from mdoc.models.zoo import build
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, pipeline_for_level
from mdoc.targets.runtime_threads import threads_for


def _optimized(proto) -> "mdoc.ir.Model":
    model = import_model(proto)
    PassManager(pipeline_for_level(2)).run(model)
    return model


def test_small_static_model_takes_one_thread():
    choice = threads_for(_optimized(sample()), cores=2)
    assert choice["threads"] == 1 and "MFLOP" in choice["why"]


def test_dynamic_dims_and_heavy_models_take_every_core():
    assert threads_for(_optimized(build("resnet18")), cores=2)["threads"] == 2  # batch N is symbolic
    assert threads_for(_optimized(sample(image_size=224, width=64)), cores=2)["threads"] == 2
    assert threads_for(_optimized(sample()), cores=1)["threads"] == 1


def test_the_manifest_carries_the_choice(tmp_path):
    path = tmp_path / "sample.onnx"
    onnx.save(sample(), path)
    art = mdoc.compile(str(path), "x86", tmp_path / "sample.x86", show_progress=False)
    assert json.loads((art / "manifest.json").read_text())["runtime"]["threads"] == 1
