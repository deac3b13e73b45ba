"""mdoc's target backends: lowering into TVM Relax, target presets, kernels, artifacts.

Importing this package registers the TVM backend with the core's registry (the
`mdoc.targets` entry point does it for the CLI and the Python API).
"""

from . import tvm_backend  # noqa: F401
