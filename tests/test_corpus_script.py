"""Smoke test of benchmarks/corpus.py without its downloads: it lists its entries, and a model not
gathered yet is a row with its cause, not a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus.py"


def _corpus(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MDOC_CORPUS_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_lists_at_least_15_models_of_the_families_asked_for(tmp_path):
    done = _corpus("list", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) >= 15
    for family in ("NonMaxSuppression", "sentence encoder", "past key/values", "LSTM", "If", "segmentation",
                   "OCR text detection", "OCR text recognition"):
        assert any(family in line for line in lines), family
    for exporter in ("tf2onnx", "paddle2onnx", "torch.onnx (TorchScript)", "torch.onnx (dynamo)"):
        assert any(exporter in line for line in lines), exporter


def test_a_model_not_gathered_is_a_row(tmp_path):
    done = _corpus("run", "magika", "--no-write", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| magika"))
    assert "not gathered" in row


def test_unknown_entry_is_refused(tmp_path):
    done = _corpus("run", "no_such_model", cache=tmp_path)
    assert done.returncode == 2
    assert "unknown entries no_such_model" in done.stderr
