"""A protocol fuzzer against a live `mdoc serve`, with a well-behaved client beside it that must get right answers.

Hypothesis draws hostile requests from `mdoc.tooling.serve_fuzz` (malformed JSON, wrong
structure, bad tensors, missing / extra / repeated inputs, lying binary-extension sizes,
huge declared shapes, cut and oversized bodies, unknown models and versions over REST;
the same faults and broken bytes in gRPC ModelInferRequests), derandomized with a fixed
count so CI runs the same cases every time (`benchmarks/fuzz_campaign.py serve` runs more).
Every answer must be a success or a one-line 4xx / client-side gRPC status naming the
tensor or header at fault: never a 5xx, INTERNAL or UNKNOWN, never a hang. Slow clients
(a trickled head, a trickled body) are cut off without holding the others up. Then one
reproduction per bug the fuzzer found, each a 500 or an UNKNOWN before its fix.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")
pytest.importorskip("fastapi")
grpc = pytest.importorskip("grpc")
ort = pytest.importorskip("onnxruntime")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from conftest import tiny_model  # noqa: E402

from mdoc.serving.launch import ServerProcess  # noqa: E402
from mdoc.tooling import serve_fuzz as sf  # noqa: E402

MAX_BODY = int(0.01 * (1 << 20))
READ_TIMEOUT_S = 1.5
CASES = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import mdoc

    folder = tmp_path_factory.mktemp("serve-fuzz")
    onnx.save(tiny_model(), folder / "tiny.onnx")
    artifact = mdoc.compile(folder / "tiny.onnx", "x86", folder / "tiny.x86", show_progress=False, tuning_db=False)
    session = ort.InferenceSession(str(folder / "tiny.onnx"), providers=["CPUExecutionProvider"])
    return artifact, lambda x: session.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def server(model):
    with ServerProcess(model[0], "--max-body-mb", "0.01", "--read-timeout-ms", str(READ_TIMEOUT_S * 1000),
                       "--quiet") as s:
        status, meta = s.get("/v2/models/tiny")
        s.sig = sf.signature(json.loads(meta))
        with sf.GoodClient("127.0.0.1", s.port, "tiny", model[1]) as good:
            s.good = good
            yield s
        assert good.answered > 0 and not good.wrong, (good.answered, good.wrong[:3])


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_url) as c:
        yield c


def _still_good(server, before: int) -> None:
    good = server.good
    assert not good.wrong, good.wrong[:3]
    assert good.answered > before, "the well-behaved client got no answer while the fuzzer ran"


def test_rest_fuzz(server):
    before = server.good.answered

    @CASES
    @given(sf.http_cases("tiny", server.sig, MAX_BODY))
    def fuzz(case):
        problem = sf.send_http("127.0.0.1", server.port, case).problem(case)
        assert problem is None, problem

    fuzz()
    _still_good(server, before)


def test_grpc_fuzz(server, channel):
    before = server.good.answered

    @CASES
    @given(sf.grpc_cases("tiny", server.sig))
    def fuzz(case):
        problem = sf.send_grpc(channel, case).problem(case)
        assert problem is None, problem

    fuzz()
    _still_good(server, before)


def test_slow_clients_are_cut_off_and_hold_no_one_up(server):
    good = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    request = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(good)}\r\n\r\n"
               + good).encode()
    head_end = request.index(b"\r\n\r\n") + 4
    answers = {}

    def slow(what, at_once):
        answers[what] = sf.trickle("127.0.0.1", server.port, request, 0.1, 20, at_once=at_once)

    before = server.good.answered
    threads = [threading.Thread(target=slow, args=a) for a in (("head", 0), ("body", head_end))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (head, head_s), (body, body_s) = answers["head"], answers["body"]
    assert head.status is None and not head.timed_out and READ_TIMEOUT_S <= head_s < READ_TIMEOUT_S + 2, answers
    assert body.status == 408 and "request body not received within 1.5 s" in body.message, answers
    assert body_s < READ_TIMEOUT_S + 2, answers  # answered and closed, not left to the keep-alive timeout
    _still_good(server, before)


def _header_case(length: str) -> sf.Case:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    return sf.Case("header", header + b"\0" * 16, "/v2/models/tiny/infer", ((sf.HEADER, length),))


def _doc(**edit) -> bytes:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    for key, value in edit.items():
        if key == "x":
            doc["inputs"][0].update(value)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


FOUND = [  # (case, status, fragment): each was HTTP 500 before its fix
    (_header_case("9" * 5000), 400, "Inference-Header-Content-Length '99999"),  # int() past 4300 digits
    (_header_case("\u00b2"), 400, "Inference-Header-Content-Length '\u00b2'"),  # str.isdigit() says yes
    (sf.Case("deep", b'{"inputs": ' + b"[" * 4000 + b"]" * 4000 + b"}", "/v2/models/tiny/infer"), 400,
     "nested too deeply"),  # RecursionError in json.loads
    (sf.Case("params", _doc(parameters=[1]), "/v2/models/tiny/infer"), 400,
     "the request: 'parameters' is not a JSON object"),
    (sf.Case("params", _doc(x={"parameters": 7}), "/v2/models/tiny/infer"), 400,
     "tensor 'x': 'parameters' is not a JSON object"),
    (sf.Case("params", _doc(outputs=[{"name": "y", "parameters": "b"}]), "/v2/models/tiny/infer"), 400,
     "output 'y': 'parameters' is not a JSON object"),
    (sf.Case("outputs", _doc(outputs=5), "/v2/models/tiny/infer"), 400, "'outputs' is not a list"),
    (sf.Case("zero", _doc(x={"shape": [0, 2**62], "data": []}), "/v2/models/tiny/infer"), 400,
     "tensor 'x': shape [0, 4611686018427387904] declares over 2**48 elements"),  # numpy's reshape raised
    (sf.Case("newline", _doc(outputs=[{"name": "a\nb"}]), "/v2/models/tiny/infer"), 400,
     "has no output 'a\\nb'"),  # a two-line message before
]


@pytest.mark.parametrize("case, status, fragment", FOUND, ids=[f[2][:40] for f in FOUND])
def test_rest_requests_the_fuzzer_found(server, case, status, fragment):
    answer = sf.send_http("127.0.0.1", server.port, case)
    assert answer.status == status and fragment in answer.message, answer


@pytest.mark.parametrize("payload", [b"\n\x04tiny*\r", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x02\xc3\x28"])
def test_grpc_bytes_that_are_no_model_infer_request(server, channel, payload):
    """Cut or broken protobuf bytes (or a string field that is not UTF-8): UNKNOWN before, from grpcio's
    deserializer raising; INVALID_ARGUMENT naming the method now."""
    answer = sf.send_grpc(channel, sf.Case("bytes", payload))
    assert answer.grpc_code == "INVALID_ARGUMENT", answer
    assert answer.message.startswith("ModelInfer: the request is not a valid protobuf message"), answer
