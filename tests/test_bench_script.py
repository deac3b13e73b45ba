"""Smoke tests of the benchmark scripts: they run end to end and print or write their tables. No timing assertions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


def test_quick_run_on_sample_writes_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "sample", "--quick", "--no-tvm-importer", "--rounds", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = (tmp_path / "latest.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| sample"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "n/a"  # onnxruntime int8: no quantization yet
    assert cells[3] == "skipped"  # --no-tvm-importer
    assert cells[5] == "no tuning database"
    assert "mdoc -O2 yes" in cells[-1]
    assert "load average" in table


def test_call_overhead_runs_on_both_models():
    script = SCRIPT.parent / "call_overhead.py"
    proc = subprocess.run([sys.executable, str(script), "--rounds", "1", "--calls", "1", "--gap", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()[:1] in (["sample"], ["silero_vad"])}
    assert set(rows) == {"sample", "silero_vad"} and all("max abs diff" in r for r in rows.values())
    assert "load average" in proc.stdout
