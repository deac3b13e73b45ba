"""`mdoc serve --workers N`: N server processes on the same ports, and a supervisor that restarts the dead.

Each worker is a whole server (`server.serve`): its own event loop, models, batchers and
TVM thread pool, listening with SO_REUSEPORT on the REST and gRPC ports, so the kernel
spreads connections over the workers and one worker's crash takes down only the requests
it held. The supervisor starts them, restarts one that exits, counts every restart in
`mdoc_worker_restarts_total` and logs it, and on SIGTERM / SIGINT stops them all (each
drains as a single server does). Metrics are in prometheus_client's multiprocess mode:
the supervisor sets PROMETHEUS_MULTIPROC_DIR before it imports prometheus_client, so every
process writes its values there and any worker's `/metrics` sums them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import time

log = logging.getLogger("mdoc.serve")


def _worker(config, logging_args) -> None:
    from .metrics import configure_logging
    from .server import run

    configure_logging(*logging_args)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop (SIGTERM)
    run(config)


def supervise(config, workers: int, logging_args: tuple, metrics_dir: str) -> int:
    from prometheus_client import multiprocess

    from .metrics import Metrics

    metrics = Metrics()
    spawn = multiprocessing.get_context("spawn")
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start():
        p = spawn.Process(target=_worker, args=(config, logging_args), name="mdoc-serve-worker", daemon=False)
        p.start()
        return p

    procs = [start() for _ in range(workers)]
    log.info("supervising %d workers (pids %s)", workers, ", ".join(str(p.pid) for p in procs))
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                if p.exitcode is None or stopping:
                    continue
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit status {p.exitcode}"
                multiprocess.mark_process_dead(p.pid)
                metrics.restarts.inc()
                procs[i] = start()
                log.error("worker %d died (%s); restarted as %d", p.pid, how, procs[i].pid)
    finally:
        for p in procs:
            if p.exitcode is None:
                p.terminate()
        for p in procs:
            p.join(40)
            if p.exitcode is None:
                p.kill()
                p.join()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def multiprocess_metrics_dir() -> str:
    """A fresh PROMETHEUS_MULTIPROC_DIR, set in the environment the workers inherit (before prometheus_client loads)."""
    import tempfile

    path = tempfile.mkdtemp(prefix="mdoc-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path
