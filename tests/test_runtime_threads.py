"""runtime_threads: a small static model runs on one thread; dynamic or heavy ones on every core."""

from __future__ import annotations

import json
import os

import onnx
import pytest

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


def test_mdoc_max_threads_caps_the_pool_an_artifact_asks_for(monkeypatch):
    from mdoc.targets.artifact import thread_cap

    monkeypatch.delenv("MDOC_MAX_THREADS", raising=False)
    assert thread_cap() >= 1 << 10  # unset: no cap
    monkeypatch.setenv("MDOC_MAX_THREADS", "3")
    assert thread_cap() == 3
    monkeypatch.setenv("MDOC_MAX_THREADS", "0")
    assert thread_cap() == 1


def test_serve_gives_each_worker_its_share_of_the_cores_less_one(monkeypatch):
    serving_cli = pytest.importorskip("mdoc.serving.cli")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    for workers, share in ((1, "15"), (4, "3"), (16, "1")):
        monkeypatch.delenv("MDOC_MAX_THREADS", raising=False)
        monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
        serving_cli.share_cores(workers)
        assert os.environ["MDOC_MAX_THREADS"] == share
    monkeypatch.delenv("MDOC_MAX_THREADS")
    monkeypatch.setenv("TVM_NUM_THREADS", "2")  # the user's word stands
    serving_cli.share_cores(1)
    assert "MDOC_MAX_THREADS" not in os.environ
