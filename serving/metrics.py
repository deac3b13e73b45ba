"""Prometheus metrics of the server (on `/metrics`) and its structured access log.

Per model and version: requests by protocol and outcome, failures by reason (the HTTP
status), queue depth, batch sizes and request latency. Server-wide: model loads and
unloads, and worker restarts (counted by the `--workers` supervisor). With several
worker processes, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set
by the supervisor before any worker starts) sums what every worker wrote, so any worker's
`/metrics` answers for all of them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the REST app)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

access = logging.getLogger("mdoc.serve.access")


class Metrics:
    def __init__(self) -> None:
        multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        # multiprocess mode keeps values in files under the directory; its collector reads them at scrape time
        self.registry = CollectorRegistry() if not multiprocess else None
        reg = {"registry": self.registry} if not multiprocess else {}
        labels = ["model", "version"]
        self.requests = Counter("mdoc_requests", "Inference requests answered.",
                                labels + ["protocol", "outcome"], **reg)
        self.failures = Counter("mdoc_request_failures", "Inference requests that failed, by HTTP status.",
                                labels + ["protocol", "status"], **reg)
        self.latency = Histogram("mdoc_request_latency_seconds", "Time from a request's arrival to its answer.",
                                 labels, buckets=LATENCY_BUCKETS, **reg)
        self.batch = Histogram("mdoc_batch_size", "Rows per model call (dynamic batching stacks requests).",
                               labels, buckets=BATCH_BUCKETS, **reg)
        self.queue = Gauge("mdoc_queue_depth", "Requests waiting for the model.", labels,
                           **({"multiprocess_mode": "livesum"} if multiprocess else reg))
        self.loads = Counter("mdoc_model_loads", "Model versions loaded (an update loads a new version).",
                             ["model", "version"], **reg)
        self.unloads = Counter("mdoc_model_unloads", "Model versions unloaded after draining.",
                               ["model", "version"], **reg)
        self.restarts = Counter("mdoc_worker_restarts", "Worker processes that died and were restarted.", **reg)

    def scrape(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def log_access(protocol: str, method: str, path: str, status: int, started: float, **fields) -> None:
    """One JSON line per request on the `mdoc.serve.access` logger."""
    if access.isEnabledFor(logging.INFO):
        entry = {"ts": round(time.time(), 3), "protocol": protocol, "method": method, "path": path,
                 "status": status, "ms": round((time.perf_counter() - started) * 1000, 3), **fields}
        access.info(json.dumps(entry, separators=(",", ":")))


def configure_logging(access_log: Path | None, quiet: bool) -> None:
    """Server lines as `mdoc serve: ...` on stderr; the access log's JSON lines to `access_log`, stderr or nowhere."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mdoc serve: %(message)s"))
    server_log = logging.getLogger("mdoc.serve")
    server_log.addHandler(handler)
    server_log.setLevel(logging.INFO)
    access.propagate = False
    if quiet:
        access.disabled = True
        return
    target = logging.FileHandler(access_log) if access_log else logging.StreamHandler(sys.stderr)
    target.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(target)
    access.setLevel(logging.INFO)
