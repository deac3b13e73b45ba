"""The registry of target backends: how the core reaches `mdoc.targets` without importing it by name.

A backend compiles a `Model` for a target into an artifact folder and loads such
folders back. mdoc's TVM backend registers itself through the `mdoc.targets`
entry-point group; others can too.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .errors import MdocError

MANIFEST = "manifest.json"
BUILD_LOG = "build.log"  # in an artifact: what the backend's native code logged while building it
THREAD_CAP = "MDOC_MAX_THREADS"  # environment: the most threads a loaded artifact may run on (mdoc serve sets it)


class Target(Protocol):
    """A target a backend offers by name (what `mdoc targets` lists)."""

    description: str
    tvm: dict  # the backend's own description of the target, printed by `mdoc targets --json`


class Backend(Protocol):
    name: str

    def load(self, path: Path) -> Callable[..., dict[str, np.ndarray]]: ...

    def targets(self) -> dict[str, Target]: ...


BACKENDS: dict[str, Backend] = {}
_loaded = False


def register_backend(backend: Backend) -> Backend:
    if backend.name in BACKENDS and BACKENDS[backend.name] is not backend:
        raise MdocError(f"backend '{backend.name}' is registered twice")
    BACKENDS[backend.name] = backend
    return backend


def load_backends() -> dict[str, Backend]:
    global _loaded
    if not _loaded:
        _loaded = True
        for ep in metadata.entry_points(group="mdoc.targets"):
            ep.load()
    return BACKENDS


def get_backend(name: str) -> Backend:
    backends = load_backends()
    if name not in backends:
        raise MdocError(f"no backend '{name}' is installed (installed: {', '.join(backends) or 'none'})")
    return backends[name]


def list_targets() -> dict[str, Target]:
    """Every installed backend's named targets (presets), in registration order."""
    named: dict[str, Target] = {}
    for backend in load_backends().values():
        named.update(backend.targets())
    return named


def load_artifact(path: str | Path) -> Callable[..., dict[str, np.ndarray]]:
    """A callable `f(**inputs) -> {output name: array}` for a compiled artifact folder."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise MdocError(f"{path}: not an mdoc artifact (no {MANIFEST})")
    try:
        backend = json.loads(manifest.read_text())["backend"]
    except (ValueError, KeyError, TypeError, OSError):
        backend = None
    if not isinstance(backend, str):
        raise MdocError(f"{manifest}: unreadable manifest (not a JSON object or no 'backend' name)")
    return get_backend(backend).load(path)
