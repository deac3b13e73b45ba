"""`mdoc package ARTIFACT --docker DIR`: the build context's content, its pins, and that its repository serves.

No docker on CI machines: the test checks what the image would be built from. The
Dockerfile's base matches the artifact's architecture and its CMD serves the copied
repository; requirements.txt pins every package to the version installed here, and
together they are exactly the closure of mdoc[serve] (pip check finds nothing missing);
the artifact inside still matches its hashes and `mdoc serve` answers from that folder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")
pytest.importorskip("fastapi")
http = pytest.importorskip("tritonclient.http")

from conftest import tiny_model  # noqa: E402

from mdoc.serving.launch import ServerProcess  # noqa: E402


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    import mdoc
    from mdoc.cli import main

    folder = tmp_path_factory.mktemp("pkg")
    onnx.save(tiny_model(), folder / "tiny.onnx")
    art = mdoc.compile(folder / "tiny.onnx", "x86", folder / "tiny.x86", show_progress=False)
    main(["package", str(art), "--docker", str(folder / "ctx")])
    return folder / "ctx"


def test_dockerfile_serves_the_copied_repository(context):
    text = (context / "Dockerfile").read_text()
    assert "FROM --platform=linux/amd64 python:" in text
    wheel = next((context / "wheels").glob("mdoc-*.whl")).name
    assert f"pip install --no-deps -r /srv/requirements.txt && pip install --no-deps /srv/{wheel}" in text
    cmd = json.loads(re.search(r"^CMD (.*)$", text, re.M).group(1))
    assert cmd[:3] == ["mdoc", "serve", "/srv/models"] and "0.0.0.0" in cmd
    assert re.search(r"^COPY models/ /srv/models/$", text, re.M)
    from mdoc.targets.artifact import read_manifest

    assert read_manifest(context / "models" / "tiny" / "1")["inputs"][0]["name"] == "x"


def test_requirements_pin_the_installed_closure(context):
    lines = [l for l in (context / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    pins = dict(l.split("==") for l in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.+\-]*", l) for l in lines), lines
    for name in ("fastapi", "uvicorn", "grpcio", "prometheus_client", "tritonclient", "apache-tvm", "numpy", "onnx"):
        assert name in pins, name
        assert pins[name] == metadata.version(name)
    assert "pytest" not in pins and "mdoc" not in pins  # test tools stay out; mdoc comes from its wheel
    # the pins are one consistent set: pip resolves them without fetching anything else
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-q",
                           "-r", str(context / "requirements.txt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_context_repository_serves(context):
    with ServerProcess(context / "models", "--quiet", "--grpc-port", "0") as server:
        client = http.InferenceServerClient(server.url)
        x = np.ones((1, 4), np.float32)
        inp = http.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("tiny", [inp]).as_numpy("y").shape == (1, 3)


def test_refuses_a_non_empty_folder_and_writes_nothing_on_failure(context, tmp_path, mdoc_cli):
    r = mdoc_cli("package", context / "models" / "tiny" / "1", "--docker", context)
    assert r.code == 2 and "exists and is not empty" in r.err
    r = mdoc_cli("package", tmp_path, "--docker", tmp_path / "ctx")
    assert r.code == 2 and "not an mdoc artifact" in r.err and not (tmp_path / "ctx").exists()
    assert not list(tmp_path.glob(".mdoc-package-*"))
