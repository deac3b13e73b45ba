"""`mdoc serve` against clients the project did not write (tritonclient, HTTP and gRPC), and its refusals.

One artifact of a small model with a batch dim is compiled per module and served by a
real `mdoc serve` process; outputs must equal `mdoc run`'s on the same inputs. Bad
requests must get a 4xx naming the tensor and leave the server serving.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")
pytest.importorskip("fastapi")
http = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

from conftest import tiny_model  # noqa: E402

from mdoc.serving.launch import ServerProcess  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    import mdoc

    folder = tmp_path_factory.mktemp("serve")
    onnx.save(tiny_model(), folder / "tiny.onnx")
    return mdoc.compile(folder / "tiny.onnx", "x86", folder / "tiny.x86", show_progress=False)


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with ServerProcess(artifact, "--max-body-mb", "0.01", log=log) as s:
        s.log_path = log
        yield s


@pytest.fixture(scope="module")
def expected(artifact, tmp_path_factory):
    """`mdoc run`'s outputs on a batch of 3."""
    from mdoc.cli import main

    folder = tmp_path_factory.mktemp("run")
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    np.savez(folder / "in.npz", x=x)
    main(["run", str(artifact), "--inputs", str(folder / "in.npz"), "-o", str(folder / "out.npz"), "--repeat", "1"])
    return x, dict(np.load(folder / "out.npz"))["y"]


def test_tritonclient_http_equals_mdoc_run(server, expected):
    x, y = expected
    client = http.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    for binary in (True, False):  # the binary-tensor extension, then plain JSON both ways
        inp = http.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = http.InferRequestedOutput("y", binary_data=binary)
        result = client.infer("tiny", [inp], outputs=[out], model_version="1")
        np.testing.assert_array_equal(result.as_numpy("y"), y)
    assert not client.is_model_ready("nonesuch")


def test_tritonclient_grpc_equals_mdoc_run(server, expected):
    x, y = expected
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny", as_json=True)
    assert meta["platform"] == "mdoc_x86" and meta["inputs"][0]["shape"] == ["-1", "4"]
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("tiny", [inp])
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    with pytest.raises(Exception, match=r"tensor 'x': shape \[3, 5\], but model 'tiny' takes \[-1, 4\]"):
        bad = grpcclient.InferInput("x", [3, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((3, 5), np.float32))
        client.infer("tiny", [bad])
    with pytest.raises(Exception, match="model 'nonesuch' is not loaded"):
        client.infer("nonesuch", [inp])


def _infer(server, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    status, text = server.request("POST", "/v2/models/tiny/infer", body, headers)
    return status, text.decode(errors="replace")


BAD = [
    (b"{not json", 400, "request body is not JSON"),
    (b'{"inputs": 3}', 400, "no 'inputs' list"),
    (json.dumps({"inputs": []}).encode(), 400, "input 'x' of model 'tiny' is missing"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode(),
     400, "tensor 'x': datatype FP64, but model 'tiny' takes FP32"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [1] * 5}]}).encode(),
     400, r"tensor 'x': shape \[1, 5\]"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1] * 5}]}).encode(),
     400, r"tensor 'x': 5 elements of data, but shape \[2, 4\] holds 8"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "STRING", "shape": [1, 4], "data": [1] * 4}]}).encode(),
     400, "tensor 'x': datatype 'STRING' is not one"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ["a"] * 4}]}).encode(),
     400, "tensor 'x': data is not a list of FP32 values"),
    (json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}).encode(),
     400, "tensor 'z' is not an input of model 'tiny'"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}],
                 "outputs": [{"name": "q"}]}).encode(), 400, "model 'tiny' has no output 'q'"),
    (b"x" * 20000, 413, "over the limit of 10485"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[m.split("'")[0][:30] for _, _, m in BAD])
def test_bad_requests_get_4xx_naming_the_problem(server, body, status, message):
    code, text = _infer(server, body)
    assert code == status, text
    assert re.search(message, json.loads(text)["error"]), text
    ok = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    assert _infer(server, ok.encode())[0] == 200  # still serving


def test_binary_sizes_that_do_not_fit(server):
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    code, text = _infer(server, header + b"\0" * 12, {"Inference-Header-Content-Length": str(len(header))})
    assert code == 400 and "tensor 'x': binary_data_size 16 runs past the end" in text
    code, text = _infer(server, header + b"\0" * 20, {"Inference-Header-Content-Length": str(len(header))})
    assert code == 400 and "4 bytes after the last binary tensor" in text
    code, text = _infer(server, header + b"\0" * 16, {"Inference-Header-Content-Length": "99999"})
    assert code == 400 and "Inference-Header-Content-Length" in text


def test_metrics_and_access_log(server, expected):
    x, _ = expected
    client = http.InferenceServerClient(server.url)
    inp = http.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("tiny", [inp])
    _infer(server, b"{not json")
    status, text = server.get("/metrics")
    text = text.decode()
    assert status == 200
    ok = re.search(r'mdoc_requests_total\{model="tiny",outcome="success",protocol="http",version="1"\} (\d+)', text)
    assert ok and float(ok.group(1)) >= 1
    assert re.search(r'mdoc_request_latency_seconds_count\{model="tiny",version="1"\} [1-9]', text)
    assert re.search(r'mdoc_batch_size_count\{model="tiny",version="1"\} [1-9]', text)
    assert 'mdoc_queue_depth{model="tiny",version="1"}' in text
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(e["path"] == "/v2/models/tiny/infer" and e["status"] == 200 and e["ms"] > 0 for e in lines)


def test_serve_refuses_bad_sources_and_taken_ports_in_one_line(mdoc_cli, tmp_path, server, artifact):
    r = mdoc_cli("serve", tmp_path / "nope")
    assert r.code == 2 and r.err.strip() == f"mdoc: error: {tmp_path / 'nope'}: no such file or folder"
    r = mdoc_cli("serve", tmp_path)
    assert r.code == 2 and "holds no models" in r.err and len(r.err.strip().splitlines()) == 1
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"max_batch": 4}')
    (tmp_path / "m" / "model.onnx").write_bytes(b"")
    r = mdoc_cli("serve", tmp_path, "--port", str(server.port), "--grpc-port", "0", "--quiet")
    assert r.code == 2 and "cannot serve on 127.0.0.1: Address already in use" in r.err, r.err
    from mdoc.serving.launch import free_port

    r = mdoc_cli("serve", tmp_path, "--port", str(free_port()), "--grpc-port", "0", "--quiet")
    assert r.code == 2 and re.search(r"config.json: unknown settings \['max_batch'\] \(known: backend, max_batch_size",
                                     r.err), r.err
