"""One server process: the repository, the REST app under uvicorn and the gRPC server on one event loop.

Startup loads every model before `/v2/health/ready` says yes; SIGTERM or SIGINT stops
taking connections, lets the requests in flight finish (uvicorn's and gRPC's graceful
shutdown) and drains every model before the process exits. A client that opens a
connection and trickles its request's head (slowloris) is cut off after `read_timeout_s`
(`head_timeout_protocol`; uvicorn itself has no such limit), and one that trickles the
body gets 408 after as long again (rest.read_body): it holds a socket, never the server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from mdoc.errors import MdocError

from . import grpc_service, rest
from .metrics import Metrics
from .repository import Policy, Repository
from .service import Service

log = logging.getLogger("mdoc.serve")


@dataclass(frozen=True)
class ServeConfig:
    source: Path
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = 8001  # None: no gRPC
    target: str = "x86"
    policy: Policy = field(default_factory=Policy)
    max_body: int = 64 << 20
    poll_seconds: float = 2.0  # 0: never poll (load new versions through the repository API only)
    reuse_port: bool = False   # several worker processes listen on the same ports
    read_timeout_s: float = 30.0  # for a request's head to arrive, then again for its body


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def head_timeout_protocol(seconds: float) -> type:
    """uvicorn's HTTP protocol, closing a connection whose first request head has not all come in `seconds`."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeadTimeout(AutoHTTPProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.loop.call_later(seconds, self._head_late)

        def _head_late(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeout


async def serve(config: ServeConfig) -> None:
    """Serve until SIGTERM / SIGINT. A lone server listens at once (live, not ready, while models load); a
    worker of several loads first and only then joins the shared ports, so no connection reaches it unready."""
    metrics = Metrics()
    repository = Repository(config.source, config.policy, config.target, metrics)
    service = Service(repository, metrics)
    web = uvicorn.Server(uvicorn.Config(rest.app(service, config.max_body, config.read_timeout_s), log_level="warning",
                                        access_log=False, timeout_graceful_shutdown=30, lifespan="off",
                                        http=head_timeout_protocol(config.read_timeout_s)))
    grpc_server, web_task, poll_task, http_sock = None, None, None, None

    async def listen() -> None:
        nonlocal grpc_server, web_task, http_sock
        http_sock = listening_socket(config.host, config.port, config.reuse_port)
        if config.grpc_port is not None:
            grpc_server = grpc_service.server(service, config.host, config.grpc_port, config.max_body)
            await grpc_server.start()
        web_task = asyncio.create_task(web.serve(sockets=[http_sock]))

    try:
        if not config.reuse_port:
            await listen()
        await repository.load_all()
        if config.reuse_port:
            await listen()
        service.ready = True
        log.info("serving %d model%s on http://%s:%d%s", len(repository.models), "s"[:len(repository.models) != 1],
                 config.host, config.port, f" and grpc {config.host}:{config.grpc_port}" if grpc_server else "")
        if config.poll_seconds > 0:
            poll_task = asyncio.create_task(repository.poll(config.poll_seconds))
        await web_task
    finally:
        service.ready = False
        if poll_task is not None:
            poll_task.cancel()
        if web_task is not None and not web_task.done():
            web.should_exit = True
            await web_task
        if grpc_server is not None:
            await grpc_server.stop(grace=10)
        await repository.close()
        if http_sock is not None:
            http_sock.close()


def run(config: ServeConfig) -> None:
    """Serve in this process until stopped; a port already taken is a one-line MdocError."""
    try:
        asyncio.run(serve(config))
    except OSError as e:
        raise MdocError(f"cannot serve on {config.host}: {e.strerror or e}") from None
