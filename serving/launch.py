"""`mdoc serve` in a child process on free ports, for tests, benchmarks and scripts that need a live server.

Starting a real process (not a thread) is the point: the server runs exactly as a user
starts it, with its own event loop, signals and TVM thread pool, and a client in the
parent talks to it over sockets like any other client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`mdoc serve SOURCE ARGS...` on 127.0.0.1; `with` starts it, waits until ready, and stops it."""

    def __init__(self, source: str | os.PathLike, *args: str, log: Path | None = None, ready_timeout: float = 120):
        self.source, self.args, self.ready_timeout = Path(source), [str(a) for a in args], ready_timeout
        self.port, self.grpc_port = free_port(), free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> "ServerProcess":
        out = open(self.log, "w") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from mdoc.cli import main; main()", "serve", str(self.source),
             "--port", str(self.port), "--grpc-port", str(self.grpc_port), *self.args],
            stdout=out, stderr=out if self.log else subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mdoc serve exited with status {self.proc.returncode}"
                                   + (f" (log: {self.log})" if self.log else ""))
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"mdoc serve was not ready within {self.ready_timeout} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the whole group: --workers children too
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://{self.url}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
