"""`mdoc serve SOURCE --ray`: the same KServe v2 REST server as replicas of a Ray Serve deployment.

Each replica is a whole mdoc server without sockets of its own: its repository, batchers and
metrics are built in the replica (on its first request, when Ray Serve's event loop is
running) from the same `ServeConfig`, and Ray Serve's HTTP proxy hands it every request,
which it passes to the very ASGI app `mdoc serve` runs under uvicorn (`rest.app`), so
routes, errors and binary tensors are the same. Ray spreads requests over the replicas and
restarts one that dies. SOURCE must be readable at the same path on every node (one
machine, or a shared file system). Not here: gRPC (Ray Serve's gRPC proxy routes by method
to deployment methods; only REST is bridged), and `/metrics` is per replica (Ray's own
metrics export cluster-wide). Needs `pip install 'mdoc[serve,ray]'`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

from starlette.requests import Request
from starlette.responses import Response

from ray import serve

from .server import ServeConfig

log = logging.getLogger("mdoc.serve")


@serve.deployment(name="mdoc", ray_actor_options={"num_cpus": 0})
class Replica:
    def __init__(self, config: ServeConfig, logging_args: tuple):
        from .metrics import configure_logging

        configure_logging(*logging_args)
        self.config = config
        self.app = None
        self._starting = asyncio.Lock()

    async def _started(self):
        async with self._starting:
            if self.app is None:
                from . import rest
                from .metrics import Metrics
                from .repository import Repository
                from .service import Service

                metrics = Metrics()
                repository = Repository(self.config.source, self.config.policy, self.config.target, metrics)
                service = Service(repository, metrics)
                await repository.load_all()
                service.ready = True
                if self.config.poll_seconds > 0:
                    self._poll = asyncio.get_running_loop().create_task(repository.poll(self.config.poll_seconds))
                self.app = rest.app(service, self.config.max_body, self.config.read_timeout_s)
                log.info("ray replica %d serving %d models", os.getpid(), len(repository.models))
        return self.app

    async def __call__(self, request: Request) -> Response:
        app = self.app or await self._started()
        start, chunks = {}, []

        async def send(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(request.scope, request.receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])
                   if k.lower() != b"content-length"}
        return Response(b"".join(chunks), status_code=start.get("status", 500), headers=headers)


def run_on_ray(config: ServeConfig, replicas: int, address: str | None, logging_args: tuple) -> None:
    """Start (or join, with `address`) a Ray cluster, deploy `replicas` replicas on the REST port, wait for SIGTERM."""
    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(Replica.options(num_replicas=replicas).bind(config, logging_args), name="mdoc", route_prefix="/")
        log.info("serving on Ray: %d replicas on http://%s:%d", replicas, config.host, config.port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
