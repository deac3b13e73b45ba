"""The wheel installs into a fresh venv and works from outside the checkout, under the one `mdoc` namespace."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd, cwd=None) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    return result.stdout


def test_wheel_in_fresh_venv(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", ROOT)
    wheel = next((tmp_path / "dist").glob("mdoc-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    # Dependencies come from the test environment (a .pth line adds its site-packages, after the
    # fresh venv's own, and without running the editable-install hooks that live there).
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    out = _run(venv / "bin" / "mdoc", "--help", cwd=tmp_path)
    assert "Usage: mdoc" in out
    where = _run(py, "-c", "import mdoc, mdoc.passes, mdoc.targets, mdoc.models, mdoc.tooling, mdoc.serving.cli, mdoc.cli; print(mdoc.__file__)",
                 cwd=tmp_path)
    assert str(venv) in where and str(ROOT) not in where
    for top in ("compiler", "passes", "targets", "models", "tooling", "serving"):
        r = subprocess.run([py, "-c", f"import {top}"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode != 0, f"the wheel installs a top-level '{top}' package"
    passes = _run(venv / "bin" / "mdoc", "passes", cwd=tmp_path)
    assert "fold-constants" in passes and "dce" in passes
    # Every source package ships: the wheel compiles and runs the bundled sample end to end.
    artifact = tmp_path / "sample.mdoc"
    _run(venv / "bin" / "mdoc", "compile", ROOT / "models" / "sample.onnx", "-t", "x86", "-o", artifact, cwd=tmp_path)
    _run(venv / "bin" / "mdoc", "compare", ROOT / "models" / "sample.onnx", artifact, cwd=tmp_path)
