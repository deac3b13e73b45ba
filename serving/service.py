"""The protocol's operations, shared by the REST and gRPC front ends: metadata, readiness and inference.

Inputs are checked against the model's signature before they queue (names, datatype,
rank, fixed dims, a symbol that two inputs share), so a bad request gets a 400 that
names the tensor and never reaches, or spoils, a batch of good ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mdoc.errors import MdocError
from mdoc.version import __version__

from .codec import RequestError, v2_datatype
from .metrics import Metrics
from .repository import ModelVersion, Repository

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


def v2_shape(dims: list) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


def tensor_metadata(sig: dict) -> dict:
    return {"name": sig["name"], "datatype": v2_datatype(sig["dtype"]), "shape": v2_shape(sig["shape"])}


@dataclass
class Service:
    repository: Repository
    metrics: Metrics
    ready: bool = False

    def server_metadata(self) -> dict:
        return {"name": "mdoc", "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        mv = self.repository.get(name, version)
        sig = mv.runner.signature
        return {"name": name, "versions": [str(mv.version)], "platform": mv.runner.platform,
                "inputs": [tensor_metadata(t) for t in sig.inputs],
                "outputs": [tensor_metadata(t) for t in sig.outputs]}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.repository.get(name, version)
        except RequestError:
            return False
        return True

    async def infer(self, name: str, version: str | None, inputs: list[tuple[str, str, np.ndarray]],
                    wanted: list[str] | None, protocol: str) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        """Run one request: `inputs` as (name, v2 datatype, array); returns the outputs asked for (all when
        `wanted` is None)."""
        started = time.perf_counter()
        if not self.ready:
            raise RequestError("the server is loading its models; retry when /v2/health/ready says so", 503)
        mv = self.repository.get(name, version)
        labels = (name, str(mv.version))
        mv.enter()
        try:
            feeds = self._checked(mv, inputs)
            outputs = [o["name"] for o in mv.runner.signature.outputs]
            for w in wanted or ():
                if w not in outputs:
                    raise RequestError(f"model '{name}' has no output '{w}' (outputs: {', '.join(outputs)})")
            try:
                result = await mv.batcher.submit(feeds)
            except MdocError as e:
                raise RequestError(f"model '{name}' failed: {e}", 500) from None
        except RequestError as e:
            self.metrics.failures.labels(*labels, protocol, str(e.status)).inc()
            self.metrics.requests.labels(*labels, protocol, "failure").inc()
            raise
        finally:
            mv.leave()
        self.metrics.requests.labels(*labels, protocol, "success").inc()
        self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        return mv, {k: result[k] for k in (wanted or outputs)}

    @staticmethod
    def _checked(mv: ModelVersion, inputs: list[tuple[str, str, np.ndarray]]) -> dict[str, np.ndarray]:
        sigs = {t["name"]: t for t in mv.runner.signature.inputs}
        feeds: dict[str, np.ndarray] = {}
        bound: dict[str, tuple[int, str]] = {}
        for tensor, datatype, array in inputs:
            sig = sigs.get(tensor)
            if sig is None:
                raise RequestError(f"tensor '{tensor}' is not an input of model '{mv.name}' "
                                   f"(inputs: {', '.join(sigs)})")
            if tensor in feeds:
                raise RequestError(f"tensor '{tensor}' is given twice")
            expected = v2_datatype(sig["dtype"])
            if datatype != expected:
                raise RequestError(f"tensor '{tensor}': datatype {datatype}, but model '{mv.name}' takes {expected}")
            dims = sig["shape"]
            shape = list(array.shape)
            if len(shape) != len(dims) or any(isinstance(d, int) and s != d for s, d in zip(shape, dims)):
                raise RequestError(f"tensor '{tensor}': shape {shape}, but model '{mv.name}' takes "
                                   f"{v2_shape(dims)}")
            for axis, d in enumerate(dims):
                if isinstance(d, str):
                    first = bound.setdefault(d, (shape[axis], tensor))
                    if first[0] != shape[axis]:
                        raise RequestError(f"tensor '{tensor}': {d} = {shape[axis]} (dim {axis}), but tensor "
                                           f"'{first[1]}' has {d} = {first[0]}")
            if mv.batcher.max_batch > 1 and shape[0] == 0:
                raise RequestError(f"tensor '{tensor}': an empty batch")
            feeds[tensor] = array
        missing = [n for n in sigs if n not in feeds]
        if missing:
            raise RequestError(f"input '{missing[0]}' of model '{mv.name}' is missing")
        return feeds

