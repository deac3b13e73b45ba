"""mdoc: an MLIR-style graph compiler for ONNX models.

The core lives here: the IR (`mdoc.ir`), its textual form, the ONNX frontend and
exporter, the pass manager and the CLI. Passes (`mdoc.passes`) and targets
(`mdoc.targets`) plug in through registries, so this package never imports them
by name.
"""

__version__ = "0.1.0"

from .api import compile, from_torch, load, optimize  # noqa: E402
from .errors import CheckFailed, MdocError  # noqa: E402
from .model_io import load_model, save_model  # noqa: E402

__all__ = ["CheckFailed", "MdocError", "compile", "from_torch", "load", "load_model", "optimize", "save_model"]
