#!/usr/bin/env python
"""Run onnx's operator conformance cases through mdoc and onnxruntime (the full run; CI runs a sample).

    python benchmarks/conformance.py --jobs 2 --timeout 60 --markdown benchmarks/conformance-latest.md
    python benchmarks/conformance.py --filter '^test_conv' --no-cache
    python benchmarks/conformance.py --sample 400 --json results.json

Same options as `mdoc conformance` (see --help); results are cached in .cache/conformance/.
"""

from mdoc.tooling.conformance_cli import conformance_cmd

if __name__ == "__main__":
    conformance_cmd(prog_name="conformance.py")
