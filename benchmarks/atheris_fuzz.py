"""Coverage-guided fuzzing (atheris, libFuzzer) of the readers of untrusted files: ONNX, .mdir text, .npz inputs.

    pip install 'mdoc[fuzz]'
    python benchmarks/atheris_fuzz.py onnx -max_total_time=200 [-seed=1] [CORPUS_DIR ...]
    python benchmarks/atheris_fuzz.py mdir -atheris_runs=20000
    python benchmarks/atheris_fuzz.py npz -max_total_time=200

The hypothesis campaigns (tests/test_fuzz_inputs.py, benchmarks/fuzz_campaign.py) mutate
at random; libFuzzer keeps the inputs that reach new lines of mdoc's Python (atheris
instruments every `mdoc` module) and mutates those, so it walks deeper into the ONNX
loader and importer (`model_io.load_model`: protobuf, check_model_proto's limits,
shape inference, the importer, the verifier), the .mdir parser and `tensors.load_npz`.
The rule is the CLI's: reading any bytes ends in a model, an array dict, or an
`MdocError` whose message is one line. Anything else (another exception, a multi-line
message) is a finding: libFuzzer stops and writes the input to `crash-<sha1>`. With no
CORPUS_DIR the seeds are tests/conftest.py's tiny model and tests/test_fuzz_inputs.py's
rich one (their .onnx bytes, their .mdir text, an .npz of a few arrays).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["mdoc"]):
    from mdoc.errors import MdocError
    from mdoc.model_io import load_model
    from mdoc.printer import print_model
    from mdoc.tensors import load_npz

SUFFIX = {"onnx": ".onnx", "mdir": ".mdir", "npz": ".npz"}


def seeds(target: str) -> list[bytes]:
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import tiny_model
    from test_fuzz_inputs import rich_model

    from mdoc.onnx_import import import_model

    models = [tiny_model(), rich_model()]
    if target == "onnx":
        return [m.SerializeToString() for m in models]
    if target == "mdir":
        return [print_model(import_model(m)).encode() for m in models]
    out = []
    for arrays in ({"x": np.ones((2, 4), np.float32)}, {"a": np.arange(6, dtype=np.int64).reshape(2, 3),
                                                        "b": np.zeros(3, np.float16)}):
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays) if "b" in arrays else np.savez(buf, **arrays)
        out.append(buf.getvalue())
    return out


def harness(target: str, folder: Path):
    path = folder / f"input{SUFFIX[target]}"
    read = load_npz if target == "npz" else load_model

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            read(path)
        except MdocError as e:
            if "\n" in str(e).strip():
                raise AssertionError(f"a multi-line MdocError: {str(e)!r}") from None

    return one_input


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in SUFFIX:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(SUFFIX)}}} [libFuzzer flags] [CORPUS_DIR ...]")
    target, args = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
    folder = Path(tempfile.mkdtemp(prefix=f"mdoc-atheris-{target}-"))
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus given: the seeds, in a fresh one
        corpus = folder / "corpus"
        corpus.mkdir()
        for k, data in enumerate(seeds(target)):
            (corpus / f"seed{k}").write_bytes(data)
        args.append(str(corpus))
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    atheris.Setup(args, harness(target, folder))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
