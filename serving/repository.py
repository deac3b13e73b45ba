"""The model repository: named, versioned models in a folder, loaded, swapped and drained without dropping requests.

What `mdoc serve SOURCE` accepts:

* an artifact folder (`mdoc compile -o cnn.x86`): one model named for the folder (`cnn`), version 1;
* an `.onnx` file: one model named for the file, compiled when it is loaded;
* a repository folder whose entries are models: `NAME/` an artifact, `NAME.onnx`, or `NAME/` holding
  numbered version folders `NAME/1/`, `NAME/2/`, ... (each an artifact or a folder holding
  `model.onnx`). `NAME/config.json` may set that model's `backend` (`mdoc` or `onnxruntime`),
  `max_batch_size`, `max_queue_delay_ms`, `max_queue_size` and `timeout_ms`.

Names starting with a dot are skipped (the compile cache `.mdoc-cache`, a version being copied in:
copy it to `.3`, then rename it to `3`). The highest version of each model is served (Triton's
"latest" policy). When a higher one appears (the repository is polled, or a client asks to load the
model through the repository API), it is loaded beside the old one, takes every new request, and
the old version is unloaded once the requests it had accepted are answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from mdoc.backends import MANIFEST
from mdoc.errors import MdocError

from .batching import BatchStats, Batcher
from .codec import RequestError
from .metrics import Metrics
from .runners import Runner, load_runner

log = logging.getLogger("mdoc.serve")
CACHE = ".mdoc-cache"


@dataclass(frozen=True)
class Policy:
    """How one model is served: the CLI's defaults, overridden by the model's config.json."""

    backend: str = "mdoc"
    max_batch_size: int = 1
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    timeout_ms: float = 30000.0

    def updated(self, config: dict, where: Path) -> "Policy":
        known = set(self.__dataclass_fields__)
        if not isinstance(config, dict) or set(config) - known:
            extra = sorted(set(config) - known) if isinstance(config, dict) else config
            raise MdocError(f"{where}: unknown settings {extra} (known: {', '.join(sorted(known))})")
        return replace(self, **config)


@dataclass
class ModelVersion:
    name: str
    version: int
    runner: Runner
    batcher: Batcher
    policy: Policy
    inflight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.inflight += 1
        self.drained.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.drained.set()


def model_sources(source: Path) -> dict[str, Path]:
    """Model name -> its folder or file, for every entry SOURCE holds."""
    if not source.exists():
        raise MdocError(f"{source}: no such file or folder")
    if source.suffix == ".onnx" or (source / MANIFEST).is_file():
        return {source.name.split(".")[0]: source}
    if not source.is_dir():
        raise MdocError(f"{source}: neither an artifact folder, an .onnx file nor a model repository folder")
    found = {}
    for entry in sorted(source.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.suffix == ".onnx" or entry.is_dir():
            found[entry.name.removesuffix(".onnx")] = entry
    return found


def versions(entry: Path) -> dict[int, Path]:
    """Version number -> folder (or file) of one repository entry."""
    if entry.suffix == ".onnx" or (entry / MANIFEST).is_file() or (entry / "model.onnx").is_file():
        return {1: entry}
    if not entry.is_dir():
        return {}
    return {int(p.name): p for p in entry.iterdir() if p.is_dir() and p.name.isdigit()}


class Repository:
    """The loaded models, keyed by name; every method runs on the server's event loop."""

    def __init__(self, source: Path, defaults: Policy, target: str, metrics: Metrics):
        self.source, self.defaults, self.target, self.metrics = source, defaults, target, metrics
        self.cache = (source if source.is_dir() and not (source / MANIFEST).is_file() else source.parent) / CACHE
        self.models: dict[str, ModelVersion] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task] = set()
        self._failed: dict[str, tuple] = {}  # name -> (version, mtime) that failed to load: polls skip it

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        mv = self.models.get(name)
        if mv is None:
            raise RequestError(f"model '{name}' is not loaded (models: {', '.join(sorted(self.models)) or 'none'})",
                               404)
        if version not in (None, "") and str(mv.version) != version:
            raise RequestError(f"model '{name}' has no version '{version}' loaded (serving version {mv.version})",
                               404)
        return mv

    def index(self) -> list[dict]:
        """The repository API's index: every model in SOURCE, with its state."""
        out = []
        for name, entry in model_sources(self.source).items():
            mv = self.models.get(name)
            for v in sorted(versions(entry)):
                state = "READY" if mv is not None and mv.version == v else "UNAVAILABLE"
                out.append({"name": name, "version": str(v), "state": state})
        return out

    async def load_all(self) -> None:
        for name in model_sources(self.source):
            await self.load(name)

    async def load(self, name: str) -> ModelVersion:
        """Serve the highest version of `name` in SOURCE: load it if it is not the one served, then drain the old."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = model_sources(self.source).get(name)
            found = versions(entry) if entry is not None else {}
            if not found:
                raise RequestError(f"model '{name}' is not in the repository {self.source}", 404)
            version = max(found)
            old = self.models.get(name)
            if old is not None and old.version == version:
                return old
            policy = self.defaults
            config = (entry / "config.json") if entry.is_dir() else None
            if config is not None and config.is_file():
                try:
                    settings = json.loads(config.read_text())
                except ValueError as e:
                    raise MdocError(f"{config}: not JSON ({e})") from None
                policy = policy.updated(settings, config)
            loop = asyncio.get_running_loop()
            runner = await loop.run_in_executor(None, load_runner, found[version], policy.backend, self.target,
                                                self.cache / name)
            mv = self._serve(name, version, runner, policy)
            self.models[name] = mv
            self.metrics.loads.labels(name, str(version)).inc()
            log.info("model %s version %d ready (%s, %s%s)", name, version, runner.platform, runner.path,
                     f", batches of up to {mv.batcher.max_batch}" if mv.batcher.max_batch > 1 else "")
            if old is not None:
                self._retire(old)
            return mv

    async def unload(self, name: str) -> None:
        mv = self.models.pop(name, None)
        if mv is None:
            raise RequestError(f"model '{name}' is not loaded", 404)
        self._retire(mv)

    async def close(self) -> None:
        for name in list(self.models):
            self._retire(self.models.pop(name))
        if self._retiring:
            await asyncio.gather(*self._retiring)

    def _serve(self, name: str, version: int, runner: Runner, policy: Policy) -> ModelVersion:
        labels = (name, str(version))
        batch = policy.max_batch_size if runner.signature.batch_symbol() else 1
        if policy.max_batch_size > 1 and batch == 1:
            log.info("model %s: no batch dim shared by every input and output; requests run one by one", name)
        stats = BatchStats(batch=self.metrics.batch.labels(*labels).observe,
                           depth=self.metrics.queue.labels(*labels).set)
        batcher = Batcher(runner.run, max_batch=batch, max_delay_s=policy.max_queue_delay_ms / 1000,
                          max_queue=policy.max_queue_size, timeout_s=policy.timeout_ms / 1000, stats=stats)
        mv = ModelVersion(name, version, runner, batcher, policy)
        mv.drained.set()
        return mv

    def _retire(self, mv: ModelVersion) -> None:
        """Unload `mv` in the background once the requests it accepted are answered."""
        async def drain() -> None:
            await mv.drained.wait()
            await mv.batcher.close()
            self.metrics.unloads.labels(mv.name, str(mv.version)).inc()
            if self.metrics.registry is not None:  # a gauge of a version that is gone would read 0 forever
                self.metrics.queue.remove(mv.name, str(mv.version))
            log.info("model %s version %d unloaded (drained)", mv.name, mv.version)

        task = asyncio.get_running_loop().create_task(drain())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def poll(self, seconds: float) -> None:
        """Load new versions as they appear in SOURCE, every `seconds`; one that fails is logged and not retried
        until its file or folder changes (or a client asks for it through the repository API)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                entries = model_sources(self.source)
            except (MdocError, OSError) as e:
                log.error("repository poll: %s", e)
                continue
            for name, entry in entries.items():
                mv = self.models.get(name)
                found = versions(entry)
                if not found or (mv is not None and max(found) <= mv.version):
                    continue
                newest = max(found)
                stamp = (newest, found[newest].stat().st_mtime_ns)
                if self._failed.get(name) == stamp:
                    continue
                try:
                    await self.load(name)
                except (MdocError, RequestError, OSError, ValueError) as e:
                    self._failed[name] = stamp
                    log.error("model %s version %d not loaded: %s", name, newest, e)
