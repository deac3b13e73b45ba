"""Model updates and worker crashes under load: no request lost, the old version drained, restarts counted.

A repository holds `tiny/1` (an artifact) and `lin.onnx` (compiled when loaded). Clients
keep inferring while version 2 is dropped in (copied to a dot-folder, then renamed, as the
repository's docstring says to); every request must succeed, the answers must move to
version 2, and version 1 must be unloaded once drained. With --workers 2, a worker killed
with SIGKILL must come back and show in mdoc_worker_restarts_total.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time

import numpy as np
import onnx
import psutil
import pytest

pytest.importorskip("tvm")
pytest.importorskip("fastapi")
http = pytest.importorskip("tritonclient.http")

from conftest import tiny_model  # noqa: E402

from mdoc.serving.launch import ServerProcess  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    import mdoc

    folder = tmp_path_factory.mktemp("art")
    onnx.save(tiny_model(), folder / "tiny.onnx")
    return mdoc.compile(folder / "tiny.onnx", "x86", folder / "tiny.x86", show_progress=False)


class Load:
    """`clients` threads inferring in a loop with tritonclient; failures and the versions that answered."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.stop = url, threading.Event()
        self.failures: list[str] = []
        self.failed_at: list[float] = []
        self.versions: list[str] = []
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        client = http.InferenceServerClient(self.url, connection_timeout=30, network_timeout=30)
        x = np.ones((2, 4), np.float32)
        while not self.stop.is_set():
            inp = http.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            try:
                result = client.infer("tiny", [inp])
                self.versions.append(result.get_response()["model_version"])
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                self.failures.append(str(e))
                self.failed_at.append(time.monotonic())

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _metrics(server) -> str:
    return server.get("/metrics")[1].decode()


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except ConnectionError:  # a connection the killed worker had accepted
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_new_version_takes_over_under_load_without_losing_a_request(artifact, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(artifact, repo / "tiny" / "1")
    onnx.save(tiny_model(), repo / "lin.onnx")
    log = tmp_path / "serve.log"
    with ServerProcess(repo, "--poll-seconds", "0.2", "--max-batch", "8", "--quiet", log=log) as server:
        assert re.search(r"loading .*lin\.onnx: compiling it for x86", log.read_text())
        client = http.InferenceServerClient(server.url)
        assert client.is_model_ready("lin")
        with Load(server.url) as load:
            _wait(lambda: len(load.versions) > 50, 30, "requests answered by version 1")
            shutil.copytree(artifact, repo / "tiny" / ".2")
            os.rename(repo / "tiny" / ".2", repo / "tiny" / "2")
            _wait(lambda: load.versions.count("2") > 50, 30, "requests answered by version 2")
        assert load.failures == []
        assert load.versions[0] == "1" and load.versions[-1] == "2"
        assert client.is_model_ready("tiny", "2") and not client.is_model_ready("tiny", "1")
        _wait(lambda: 'mdoc_model_unloads_total{model="tiny",version="1"} 1.0' in _metrics(server), 10,
              "version 1 unloaded")
        assert 'mdoc_model_loads_total{model="tiny",version="2"} 1.0' in _metrics(server)
        # the repository API: unload, index, load again
        client.unload_model("lin")
        assert not client.is_model_ready("lin")
        index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
        assert index[("lin", "1")] == "UNAVAILABLE" and index[("tiny", "2")] == "READY"
        client.load_model("lin")
        assert client.is_model_ready("lin")
        # a broken entry: the poll logs it once, the API answers 400 naming the file, the rest keeps serving
        (repo / "broken.onnx").write_bytes(b"not onnx")
        _wait(lambda: "model broken version 1 not loaded" in log.read_text(), 30, "the poll's error")
        with pytest.raises(Exception, match=r"broken\.onnx"):
            client.load_model("broken")
        assert client.is_model_ready("tiny") and not client.is_model_ready("broken")
        time.sleep(1)
        assert log.read_text().count("model broken version 1 not loaded") == 1
    assert "model tiny version 1 unloaded (drained)" in log.read_text()


def test_a_killed_worker_is_restarted_and_counted(artifact, tmp_path):
    with ServerProcess(artifact, "--workers", "2", "--quiet", log=tmp_path / "serve.log") as server:
        def workers():
            kids = psutil.Process(server.proc.pid).children()
            return [k for k in kids if "spawn_main" in " ".join(k.cmdline())]

        _wait(lambda: len(workers()) == 2, 60, "two workers")
        with Load(server.url, clients=2) as load:
            _wait(lambda: len(load.versions) > 20, 30, "requests answered")
            victim = workers()[0].pid
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            _wait(lambda: "mdoc_worker_restarts_total 1.0" in _metrics(server), 30,
                  "the restart in the metrics")
            restarted = time.monotonic()
            _wait(lambda: len(workers()) == 2 and victim not in [w.pid for w in workers()], 30,
                  "a new second worker")
            answered = len(load.versions)
            _wait(lambda: len(load.versions) > answered + 20, 30, "requests answered after the restart")
        # what the killed worker held when it died is lost (its connections close); nothing else is:
        # no failure is an answer, and none comes after the restart was counted
        assert all("connection" in f.lower() for f in load.failures), load.failures
        assert all(killed <= t <= restarted for t in load.failed_at), (killed, restarted, load.failed_at)
        assert "died (signal 9); restarted as" in (tmp_path / "serve.log").read_text()
