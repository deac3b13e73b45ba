"""Which framework wrote a model file, read from its name and its first bytes, with no framework imported.

Detection comes before conversion so that a wrong or damaged file is refused in one
line that says why (a folder without saved_model.pb, a .tflite without the TFL3
identifier, a torch.save pickle passed as TorchScript) even where TensorFlow and
PyTorch are not installed, and so that `mdoc inspect` on a plain .onnx file never
pays for importing them.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import MdocError


@dataclass(frozen=True)
class Format:
    """A foreign model format: its name for messages and the extra that converts it."""

    key: str
    label: str
    extra: str


SAVED_MODEL = Format("savedmodel", "TensorFlow SavedModel", "tensorflow")
KERAS = Format("keras", "Keras file", "tensorflow")
TFLITE = Format("tflite", "TFLite file", "tensorflow")
EXPORTED_PROGRAM = Format("pt2", "PyTorch ExportedProgram", "torch")
TORCHSCRIPT = Format("torchscript", "TorchScript file", "torch")

SUFFIXES = {".keras": KERAS, ".h5": KERAS, ".hdf5": KERAS, ".tflite": TFLITE,
            ".pt2": EXPORTED_PROGRAM, ".pt": TORCHSCRIPT, ".pth": TORCHSCRIPT}
EXPECTED = "a SavedModel folder, .keras, .h5, .tflite, .pt2 (torch.export.save) or .pt (torch.jit.save)"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def detect_format(path: str | os.PathLike) -> Format | None:
    """The foreign format of `path` by its name (a folder is a SavedModel), or None for anything else."""
    path = Path(path)
    if path.is_dir() and path.suffix.lower() not in (".onnx", ".mdir"):
        return SAVED_MODEL
    return SUFFIXES.get(path.suffix.lower())


def check_file(path: Path, fmt: Format) -> None:
    """Refuse, in one line naming the file, what is not a well-formed file of `fmt`."""
    if not path.exists():
        raise MdocError(f"{path}: no such file or folder")
    if fmt is SAVED_MODEL:
        if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
            raise MdocError(f"{path}: a folder but not a TensorFlow SavedModel (no saved_model.pb in it)")
        return
    if not path.is_file():
        raise MdocError(f"{path}: not a file")
    head = _head(path)
    if not head:
        raise MdocError(f"{path}: empty file, not a {fmt.label}")
    if fmt is TFLITE:
        if head[4:8] != b"TFL3":
            raise MdocError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier at byte 4)")
    elif fmt is KERAS and path.suffix.lower() != ".keras":
        if head != _HDF5_SIGNATURE:
            raise MdocError(f"{path}: not an HDF5 file (a Keras .h5 starts with the HDF5 signature)")
    elif fmt is KERAS:
        if "config.json" not in _zip_names(path, fmt):
            raise MdocError(f"{path}: not a Keras v3 file (a .keras zip holds config.json)")
    elif fmt is EXPORTED_PROGRAM:
        if not any(n.endswith("/archive_format") or n == "archive_format" for n in _zip_names(path, fmt)):
            raise MdocError(f"{path}: not a torch.export archive (no archive_format entry; "
                            "save with torch.export.save)")
    elif fmt is TORCHSCRIPT:
        names = _zip_names(path, fmt)
        if not any("/code/" in n for n in names):
            raise MdocError(f"{path}: a torch.save file (pickled weights or module), not TorchScript: "
                            "save the model with torch.jit.save or torch.export.save, or use mdoc.from_torch")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def _zip_names(path: Path, fmt: Format) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise MdocError(f"{path}: not a {fmt.label} (not a readable zip archive: {e})") from None
