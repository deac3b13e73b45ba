"""mdoc's tooling: what runs the compiler but is not part of it.

The ONNX conformance runner (`mdoc conformance`), the onnx Backend
(`MdocBackend`), and the qemu emulation of aarch64 artifacts live here.
They import mdoc's core and targets; nothing under `compiler/`, `passes/`
or `targets/` imports this package (the artifact loader finds the emulator
through the `mdoc.emulators` entry-point group).
"""
