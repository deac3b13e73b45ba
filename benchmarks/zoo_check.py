"""Compile every zoo model and check that nothing fails badly: "no internal error on any model onnxruntime runs".

    python benchmarks/zoo_check.py                      # `mdoc compile` + `mdoc compare`, per model
    python benchmarks/zoo_check.py --symbolic-hw        # image models with H and W left symbolic
    python benchmarks/zoo_check.py resnet18 vit_tiny    # only these

Default mode runs the real command (`mdoc compile MODEL -t x86`, then `mdoc compare MODEL ARTIFACT`) in a
subprocess and reports its exit status, how many lines it left on stderr (TVM's log must not reach it) and
how many lines TVM logged into the artifact's build.log. `--symbolic-hw` declares the image input's
spatial dims as H and W, compiles once through the backend (dims stay symbolic; `mdoc compile` fixes
them today) and compares against onnxruntime at the model's size and a smaller one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from mdoc.models.zoo import build, list_models


def _mdoc(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from mdoc.cli import main; main()", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def check_cli(name: str, work: Path) -> str:
    model, art = work / f"{name}.onnx", work / f"{name}.x86"
    onnx.save(build(name), model)
    done = _mdoc("compile", model, "-o", art)
    log = art / "build.log"
    line = (f"{name:<14} compile exit {done.returncode}, stderr lines {len(done.stderr.splitlines())}, "
            f"build.log lines {len(log.read_text().splitlines()) if log.is_file() else 0}")
    if done.returncode:
        return f"{line}: {done.stderr.strip()[:300]}"
    compared = _mdoc("compare", model, art)
    return f"{line}, compare exit {compared.returncode}{': ' + compared.stdout.strip()[:200] if compared.returncode else ''}"


def check_symbolic_hw(name: str, work: Path) -> str:
    import onnxruntime as ort

    from mdoc.api import load, optimize
    from mdoc.backends import get_backend
    from mdoc.errors import MdocError
    from mdoc.onnx_import import import_model

    proto = build(name)
    image = proto.graph.input[0]
    dims = image.type.tensor_type.shape.dim
    if len(dims) != 4:
        return f"{name:<14} skipped (input '{image.name}' is not an image)"
    size = (dims[2].dim_value, dims[3].dim_value)
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    try:
        model = import_model(proto)
        optimize(model, 2)
        run = load(get_backend("tvm").compile(model, "x86", work / f"{name}.hw"))
    except MdocError as e:
        return f"{name:<14} exit {e.exit_code}: {str(e)[:300]}"
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    report = []
    for hw in (size, (size[0] * 3 // 4, size[1] // 2)):
        x = np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
        try:
            want = session.run(None, {image.name: x})
        except Exception:  # noqa: BLE001  (the model itself only runs at its own size)
            report.append(f"{hw[0]}x{hw[1]}: onnxruntime refuses")
            continue
        got = list(run(**{image.name: x}).values())
        same = all(g.shape == w.shape for g, w in zip(got, want))
        err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want)) if same else float("nan")
        report.append(f"{hw[0]}x{hw[1]}: {'max abs ' + format(err, '.1e') if same else 'SHAPES DIFFER'}")
    return f"{name:<14} " + ", ".join(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="zoo model names (default: all)")
    parser.add_argument("--symbolic-hw", action="store_true", help="image inputs with symbolic H and W")
    args = parser.parse_args()
    check = check_symbolic_hw if args.symbolic_hw else check_cli
    with tempfile.TemporaryDirectory(prefix="mdoc-zoo-check-") as tmp:
        for name in args.models or list_models():
            print(check(name, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
