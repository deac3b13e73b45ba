"""Fuzzing `mdoc serve`: hostile Open Inference Protocol requests over REST and gRPC, and the rule every answer keeps.

The bounded CI campaign (`tests/test_serve_fuzz.py`) and the long one
(`benchmarks/fuzz_campaign.py serve`) draw their cases from the hypothesis strategies
here, so a case found by one reproduces in the other:

* `http_cases(model, meta)`: a POST to an infer route that is malformed JSON, the wrong
  structure, a tensor with the wrong datatype, shape or data, missing, extra or repeated
  inputs, lying binary-extension sizes (`Inference-Header-Content-Length`,
  `binary_data_size`), a huge declared shape, a body cut short, an oversized body, or a
  bad model name or version;
* `grpc_cases(model, meta)`: the same faults in a `ModelInferRequest`, plus its
  serialized bytes flipped or cut (protos the stubs would never write).

`send_http` and `send_grpc` deliver a case over a raw socket (so a body can lie about its
length or stop early) and a raw gRPC call (so the bytes need not parse), and return the
answer's `problem()`: None when the server kept the rule (a success, or a 4xx / gRPC
client-side status whose one-line message names what `case.names` says), else why not:
a 5xx, INTERNAL or UNKNOWN, a message without the tensor's name, no answer in time.
`trickle` sends a request a few bytes at a time, the slow client a server must cut off;
`GoodClient` keeps sending valid requests beside all of it and checks every answer, and
`campaign` runs a seeded number of cases of each protocol and gathers the problems.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seeded
from hypothesis import strategies as st

from mdoc.errors import one_line
from mdoc.serving.codec import DATATYPES as _SERVED
from mdoc.serving.codec import numpy_dtype

DATATYPES = list(_SERVED)
HEADER = "Inference-Header-Content-Length"
_HUGE = [2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**64, 10**30]


@dataclass(frozen=True)
class Case:
    """One request: `body` to `path` (REST) or a serialized ModelInferRequest (gRPC, `path` unused).

    `names` is what a refusal's message must contain (the tensor, the header, the model), None when any
    one-line message will do; `cut` sends only that many bytes of the body and then closes the writing side;
    `chunked` sends the body with chunked transfer encoding (no Content-Length: a limit found while reading)."""

    what: str
    body: bytes
    path: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    names: str | None = None
    cut: int | None = None
    chunked: bool = False


@dataclass(frozen=True)
class Answer:
    status: int | None  # HTTP status, or None: no answer (the connection closed, or the time ran out)
    message: str
    timed_out: bool = False
    grpc_code: str | None = None

    def problem(self, case: Case) -> str | None:
        """Why this answer breaks the rule for bad requests, or None."""
        if self.timed_out:
            return f"{case.what}: no answer in time (a hang)"
        if self.grpc_code is not None:
            if self.grpc_code == "OK":
                return None
            if self.grpc_code in ("INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"):
                return f"{case.what}: gRPC {self.grpc_code}: {self.message[:300]!r}"
        elif self.status is None:
            return None if case.cut is not None else f"{case.what}: the server closed the connection unanswered"
        elif self.status < 400:
            return None
        elif self.status >= 500 and self.status not in (503, 504):
            return f"{case.what}: HTTP {self.status}: {self.message[:300]!r}"
        if "\n" in self.message.strip() or not self.message.strip():
            return f"{case.what}: refusal whose message is not one line: {self.message[:300]!r}"
        if case.names is not None and one_line(case.names) not in self.message:
            return f"{case.what}: refusal that does not name {case.names!r}: {self.message[:300]!r}"
        return None


# -- the model under fuzz: its inputs as (name, datatype, shape with -1 for a free dim) --------------


def signature(meta: dict) -> list[tuple[str, str, list[int]]]:
    """The inputs of a model's v2 metadata (REST `GET /v2/models/NAME`)."""
    return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]]


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@st.composite
def _values(draw, datatype: str, n: int) -> list:
    if datatype == "BOOL":
        return draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if datatype.startswith(("INT", "UINT")):
        lo = 0 if datatype.startswith("U") else -8
        return draw(st.lists(st.integers(lo, 8), min_size=n, max_size=n))
    return draw(st.lists(st.floats(-4, 4, width=16), min_size=n, max_size=n))


@st.composite
def good_inputs(draw, sig) -> list[dict]:
    """Valid JSON input entries for every input of `sig` (a free dim shared across inputs gets one value)."""
    batch = draw(st.integers(1, 3))
    out = []
    for name, datatype, shape in sig:
        dims = [batch if i == 0 and d < 0 else (draw(st.integers(1, 3)) if d < 0 else d) for i, d in enumerate(shape)]
        out.append({"name": name, "datatype": datatype, "shape": dims, "data": draw(_values(datatype, _count(dims)))})
    return out


# -- REST ----------------------------------------------------------------------------------------


def _json(doc) -> bytes:
    return json.dumps(doc).encode()


def _infer_path(model: str, version: str | None = None) -> str:
    name = urllib.parse.quote(model, safe="")
    return f"/v2/models/{name}" + (f"/versions/{urllib.parse.quote(version, safe='')}" if version else "") + "/infer"


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                  st.text(max_size=8), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                          st.integers(), max_size=2))


@st.composite
def _malformed_json(draw, model, sig) -> Case:
    good = _json({"inputs": draw(good_inputs(sig))})
    kind = draw(st.sampled_from(["cut", "bytes", "deep", "not-utf8", "top-level"]))
    if kind == "cut":
        body = good[:draw(st.integers(0, len(good) - 1))]
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    elif kind == "deep":
        n = draw(st.sampled_from([200, 1000, 3000, 4000]))
        body = b'{"inputs": ' + b"[" * n + b"]" * n + b"}"
    elif kind == "not-utf8":
        body = good.replace(b'"inputs"', b'"inp\xff\xfets"')
    else:
        body = _json(draw(_JUNK))
    return Case(f"malformed JSON ({kind})", body, _infer_path(model))


@st.composite
def _bad_structure(draw, model, sig) -> Case:
    inputs = draw(good_inputs(sig))
    doc = {"inputs": inputs}
    kind = draw(st.sampled_from(["inputs", "entry", "name", "parameters", "outputs", "output-entry",
                                 "output-parameters", "request-parameters", "id"]))
    if kind == "inputs":
        doc["inputs"] = draw(_JUNK.filter(lambda v: not isinstance(v, list)))
    elif kind == "entry":
        inputs[0] = draw(_JUNK.filter(lambda v: not isinstance(v, dict)))
    elif kind == "name":
        inputs[0]["name"] = draw(_JUNK.filter(lambda v: not isinstance(v, str)))
    elif kind == "parameters":
        inputs[0]["parameters"] = draw(_JUNK)
    elif kind == "outputs":
        doc["outputs"] = draw(_JUNK)
    elif kind == "output-entry":
        doc["outputs"] = [draw(_JUNK)]
    elif kind == "output-parameters":
        doc["outputs"] = [{"name": draw(st.text(max_size=4)), "parameters": draw(_JUNK)}]
    elif kind == "request-parameters":
        doc["parameters"] = draw(_JUNK)
    else:
        doc["id"] = draw(_JUNK)
    return Case(f"wrong structure ({kind})", _json(doc), _infer_path(model))


@st.composite
def _bad_tensor(draw, model, sig) -> Case:
    inputs = draw(good_inputs(sig))
    i = draw(st.integers(0, len(inputs) - 1))
    t = inputs[i]
    kind = draw(st.sampled_from(["datatype", "shape", "huge-shape", "data-count", "data-type", "data-range",
                                 "no-data"]))
    if kind == "datatype":
        t["datatype"] = draw(st.one_of(st.sampled_from(DATATYPES + ["BYTES", "STRING", "fp32", ""]), _JUNK))
    elif kind == "shape":
        t["shape"] = draw(st.one_of(st.lists(st.integers(-3, 6), max_size=4), _JUNK,
                                    st.lists(st.one_of(st.booleans(), st.floats(0, 4), st.text(max_size=2)),
                                             min_size=1, max_size=3)))
    elif kind == "huge-shape":
        t["shape"] = [draw(st.sampled_from(_HUGE + [0]))] + [draw(st.sampled_from(_HUGE)) for _ in t["shape"][1:]]
    elif kind == "data-count":
        t["data"] = t["data"] + t["data"][:1] if draw(st.booleans()) or len(t["data"]) < 2 else t["data"][1:]
    elif kind == "data-type":
        t["data"] = draw(st.one_of(_JUNK, st.lists(_JUNK, min_size=1, max_size=4),
                                   st.just([[1, 2], [3]]), st.just([{"a": 1}] * len(t["data"]))))
    elif kind == "data-range":
        t["data"] = [draw(st.sampled_from([2**64, -2**64, 1e308, -1, 300]))] * len(t["data"])
    else:
        del t["data"]
    return Case(f"bad tensor ({kind})", _json({"inputs": inputs}), _infer_path(model), names=f"'{t['name']}'")


@st.composite
def _wrong_inputs(draw, model, sig) -> Case:
    inputs = draw(good_inputs(sig))
    kind = draw(st.sampled_from(["missing", "extra", "twice", "outputs"]))
    if kind == "missing":
        gone = inputs.pop(draw(st.integers(0, len(inputs) - 1)))
        return Case("missing input", _json({"inputs": inputs}), _infer_path(model), names=f"'{gone['name']}'")
    if kind == "extra":
        name = draw(st.text(min_size=1, max_size=6).filter(lambda n: n not in {s[0] for s in sig}))
        inputs.append({**inputs[0], "name": name})
        return Case("extra input", _json({"inputs": inputs}), _infer_path(model), names=f"'{name}'")
    if kind == "twice":
        inputs.append(dict(inputs[0]))
        return Case("input given twice", _json({"inputs": inputs}), _infer_path(model), names=f"'{inputs[0]['name']}'")
    name = draw(st.text(min_size=1, max_size=6))
    return Case("unknown output", _json({"inputs": inputs, "outputs": [{"name": name}]}), _infer_path(model))


def _binary_body(inputs: list[dict]) -> tuple[dict, bytes]:
    """The header (each entry's data moved into the extension's bytes) and the bytes, as a client would send."""
    chunks = []
    for t in inputs:
        raw = np.asarray(t.pop("data"), dtype=np.float32).astype(numpy_dtype(t["datatype"], t["name"])).tobytes()
        t["parameters"] = {"binary_data_size": len(raw)}
        chunks.append(raw)
    return {"inputs": inputs}, b"".join(chunks)


@st.composite
def _binary_lies(draw, model, sig) -> Case:
    header, raw = _binary_body(draw(good_inputs(sig)))
    kind = draw(st.sampled_from(["size", "huge-shape", "header-length", "extra-bytes", "short-bytes"]))
    names = None
    if kind == "size":
        t = header["inputs"][draw(st.integers(0, len(header["inputs"]) - 1))]
        t["parameters"]["binary_data_size"] = draw(st.one_of(st.integers(-5, len(raw) + 8), st.sampled_from(_HUGE),
                                                             _JUNK))
        names = f"'{t['name']}'"
    elif kind == "huge-shape":
        t = header["inputs"][0]
        t["shape"] = [draw(st.sampled_from(_HUGE))] + t["shape"][1:]
        names = f"'{t['name']}'"
    elif kind == "extra-bytes":
        raw += draw(st.binary(min_size=1, max_size=16))
    elif kind == "short-bytes":
        raw = raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    text = _json(header)
    length = str(len(text))
    if kind == "header-length":
        length = draw(st.one_of(st.integers(-3, len(text) + len(raw) + 4).map(str), st.sampled_from(
            ["", "abc", "1e3", " 12", "\u00b2", "\u0663", "9" * 5000, str(2**64), "+5", "0x10"])))
        names = HEADER
    return Case(f"binary extension lie ({kind})", text + raw, _infer_path(model), ((HEADER, length),), names)


@st.composite
def _cut_body(draw, model, sig) -> Case:
    body = _json({"inputs": draw(good_inputs(sig))})
    return Case("body cut short", body, _infer_path(model), cut=draw(st.integers(0, len(body) - 1)))


@st.composite
def _bad_route(draw, model, sig) -> Case:
    body = _json({"inputs": draw(good_inputs(sig))})
    names = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=12)
    if draw(st.booleans()):
        name = draw(names.filter(lambda n: n != model))
        return Case("unknown model", body, _infer_path(name), names=f"'{name}'")
    version = draw(st.one_of(names, st.sampled_from(["0", "-1", "2", "01", "99999999999999999999999"])))
    return Case("unknown version", body, _infer_path(model, version))


def http_cases(model: str, sig, max_body: int) -> st.SearchStrategy[Case]:
    """Every kind of bad REST infer request for `model` (inputs `sig`) on a server whose body limit is `max_body`."""
    oversized = st.tuples(st.integers(max_body + 1, max_body + 4096), st.booleans()).map(
        lambda n: Case("oversized body" + " (chunked)" * n[1], b"[" * n[0], _infer_path(model), names=str(max_body),
                       chunked=n[1]))
    return st.one_of(_malformed_json(model, sig), _bad_structure(model, sig), _bad_tensor(model, sig),
                     _wrong_inputs(model, sig), _binary_lies(model, sig), _cut_body(model, sig),
                     _bad_route(model, sig), oversized)


def send_http(host: str, port: int, case: Case, timeout: float = 10.0) -> Answer:
    """POST `case` over a raw socket (Content-Length is the body's whole length even when `cut` stops early)."""
    head = [f"POST {case.path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    head.append("Transfer-Encoding: chunked" if case.chunked else f"Content-Length: {len(case.body)}")
    head += [f"{k}: {v}" for k, v in case.headers]
    data = "\r\n".join(head).encode("latin-1", errors="replace") + b"\r\n\r\n"
    body = case.body if case.cut is None else case.body[:case.cut]
    if case.chunked:
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                        for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
    data += body
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if case.cut is not None:
                s.shutdown(socket.SHUT_WR)
            return _read_answer(s)
        except socket.timeout:
            return Answer(None, "", timed_out=True)
        except ConnectionResetError:
            return Answer(None, "connection reset")


def _read_answer(s: socket.socket) -> Answer:
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return Answer(None, "")
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        doc = json.loads(body)
        message = doc.get("error", doc.get("detail")) if isinstance(doc, dict) else None
        message = message if isinstance(message, str) else body.decode(errors="replace")
    except ValueError:
        message = body.decode(errors="replace")
    return Answer(status, message)


def trickle(host: str, port: int, data: bytes, interval: float, timeout: float,
            at_once: int = 0) -> tuple[Answer, float]:
    """Send the first `at_once` bytes of `data`, then one byte every `interval` s (a slowloris client) until the
    server answers or closes; the answer and the seconds it took. Past `timeout` s the server let it hold on."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data[:at_once])
        s.settimeout(interval)
        try:
            for i in range(at_once, len(data)):
                if time.monotonic() - started > timeout:
                    return Answer(None, "", timed_out=True), time.monotonic() - started
                s.sendall(data[i:i + 1])
                try:
                    first = s.recv(65536, socket.MSG_PEEK)
                except socket.timeout:
                    continue
                s.settimeout(timeout)
                return (_read_answer(s) if first else Answer(None, "closed")), time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError):
            return Answer(None, "closed"), time.monotonic() - started
        s.settimeout(timeout)
        try:
            return _read_answer(s), time.monotonic() - started
        except socket.timeout:
            return Answer(None, "", timed_out=True), time.monotonic() - started


# -- gRPC ----------------------------------------------------------------------------------------


def _request(model: str, inputs: list[dict], version: str = ""):
    """A ModelInferRequest carrying `inputs` (JSON-style entries) as raw_input_contents, as tritonclient sends."""
    from tritonclient.grpc import service_pb2 as pb

    header, raw = _binary_body(inputs)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    offset = 0
    for t in header["inputs"]:
        size = t["parameters"]["binary_data_size"]
        request.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        request.raw_input_contents.append(raw[offset:offset + size])
        offset += size
    return request


@st.composite
def grpc_cases(draw, model: str, sig) -> Case:
    """A bad ModelInferRequest for `model`, serialized (and perhaps broken in its bytes)."""
    inputs = draw(good_inputs(sig))
    request = _request(model, inputs)
    kind = draw(st.sampled_from(["datatype", "shape", "huge-shape", "raw-size", "raw-count", "contents",
                                 "missing", "extra", "outputs", "model", "version", "bytes", "cut"]))
    i = draw(st.integers(0, len(request.inputs) - 1))
    t = request.inputs[i]
    names = f"'{t.name}'"
    if kind == "datatype":
        t.datatype = draw(st.one_of(st.sampled_from(DATATYPES + ["BYTES", ""]), st.text(max_size=6)))
    elif kind == "shape":
        del t.shape[:]
        t.shape.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=4)))
    elif kind == "huge-shape":
        t.shape[0] = draw(st.sampled_from([s for s in _HUGE if s < 2**63]))
    elif kind == "raw-size":
        raw = request.raw_input_contents[i]
        request.raw_input_contents[i] = raw[:draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=5))
    elif kind == "raw-count":
        if draw(st.booleans()):
            request.raw_input_contents.append(b"\0" * 4)
        else:
            del request.raw_input_contents[-1]
        names = None
    elif kind == "contents":
        del request.raw_input_contents[:]
        values = draw(st.lists(st.integers(-3, 3), max_size=20))
        field = draw(st.sampled_from(["fp32_contents", "int_contents", "int64_contents", "bool_contents",
                                      "bytes_contents", "fp64_contents", "uint_contents"]))
        for k in range(len(request.inputs)):
            getattr(request.inputs[k].contents, field).extend(
                [bytes([abs(v)]) for v in values] if field == "bytes_contents" else
                [bool(v) for v in values] if field == "bool_contents" else
                [abs(v) for v in values] if field.startswith("uint") else values)
        names = None
    elif kind == "missing":
        del request.inputs[i]
        del request.raw_input_contents[i]
    elif kind == "extra":
        extra = request.inputs.add()
        extra.CopyFrom(t)
        extra.name = draw(st.text(min_size=1, max_size=6).filter(lambda n: n not in {s[0] for s in sig}))
        request.raw_input_contents.append(request.raw_input_contents[i])
        names = f"'{extra.name}'"
    elif kind == "outputs":
        request.outputs.add(name=draw(st.text(max_size=6)))
        names = None
    elif kind == "model":
        request.model_name = draw(st.text(max_size=10).filter(lambda n: n != model))
        names = f"'{request.model_name}'"
    elif kind == "version":
        request.model_version = draw(st.sampled_from(["0", "2", "-1", "abc", "99999999999999999999"]))
        names = None
    payload = request.SerializeToString()
    if kind == "bytes":
        data = bytearray(payload)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        payload, names = bytes(data), None
    elif kind == "cut":
        payload, names = payload[:draw(st.integers(0, len(payload) - 1))], None
    return Case(f"gRPC {kind}", payload, names=names)


def send_grpc(channel, case: Case, timeout: float = 10.0) -> Answer:
    """Call ModelInfer with `case.body` as the request's bytes, unparsed by the client."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b,
                               response_deserializer=pb.ModelInferResponse.FromString)
    try:
        call(case.body, timeout=timeout)
        return Answer(200, "", grpc_code="OK")
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Answer(None, e.details() or "", timed_out=True, grpc_code="DEADLINE_EXCEEDED")
        return Answer(None, e.details() or "", grpc_code=e.code().name)


# -- a well-behaved client beside the fuzzer, and the campaign ------------------------------------


class GoodClient:
    """A thread sending valid requests all along (seeded random `x` of [N, 4] FP32, tests/conftest.py's tiny
    model) and checking every answer against `reference(x) -> y` (onnxruntime on the same model): what the
    fuzzer must not disturb."""

    def __init__(self, host: str, port: int, model: str, reference, seed: int = 0):
        self.host, self.port, self.model, self.reference = host, port, model, reference
        self.answered, self.wrong = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(seed,), daemon=True)

    def __enter__(self) -> "GoodClient":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            x = rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32)
            body = _json({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                      "data": x.reshape(-1).tolist()}]})
            answer = send_http(self.host, self.port, Case("good", body, _infer_path(self.model)), timeout=30)
            try:
                doc = json.loads(answer.message) if answer.status == 200 else None
            except ValueError:
                doc = None
            if doc is None:
                self.wrong.append(f"HTTP {answer.status}: {answer.message[:200]!r}")
                continue
            out = doc["outputs"][0]
            y = np.asarray(out["data"], np.float32).reshape(out["shape"])
            if not np.allclose(y, self.reference(x), rtol=1e-5, atol=1e-5):
                self.wrong.append(f"wrong answer for x of shape {list(x.shape)}")
            self.answered += 1


def campaign(host: str, port: int, grpc_target: str, model: str, sig, max_body: int, cases: int, seed: int):
    """`cases` REST and `cases` gRPC cases from `seed`: (cases per kind, {problem's first words: problem})."""
    import grpc

    counts: collections.Counter = collections.Counter()
    problems: dict[str, str] = {}
    run = settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
                   suppress_health_check=list(HealthCheck))

    def record(case: Case, answer: Answer) -> None:
        counts[case.what] += 1
        problem = answer.problem(case)
        if problem:
            problems.setdefault(problem[:80], problem)

    @seeded(seed)
    @run
    @given(http_cases(model, sig, max_body))
    def rest(case):
        record(case, send_http(host, port, case))

    with grpc.insecure_channel(grpc_target) as channel:
        @seeded(seed)
        @run
        @given(grpc_cases(model, sig))
        def rpc(case):
            record(case, send_grpc(channel, case))

        rest()
        rpc()
    return counts, problems
