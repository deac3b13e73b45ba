"""The REST side of the Open Inference Protocol (KServe v2, with Triton's binary-tensor and repository extensions).

A FastAPI app, but for the infer route: plain ASGI (`Infer`), which reads the raw body
itself, since a binary request is a JSON header (`Inference-Header-Content-Length` bytes)
followed by the tensors' bytes, which no JSON body model can take, and skips FastAPI's
per-request machinery on the one route that takes thousands of requests a second. A body over `max_body` bytes gets 413: before it is
read when its Content-Length says so (`AccessLog`, which also writes the access log), else
as soon as the bytes read pass the limit; a body not all there within `read_timeout_s`
(a client trickling it), 408. Malformed JSON, a bad tensor or an unknown model get 4xx
with `{"error": ...}`; a model that fails to load through the repository API, 400.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mdoc.errors import MdocError

from .codec import RequestError, from_bytes, from_json, shown, to_bytes, to_json, v2_datatype
from .metrics import CONTENT_TYPE_LATEST, log_access
from .service import Service

HEADER = b"inference-header-content-length"


def error(e: RequestError) -> JSONResponse:
    """The refusal; after 408 or 413 the rest of the body is never read, so the connection closes."""
    headers = {"Connection": "close"} if e.status in (408, 413) else None
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)


def app(service: Service, max_body: int, read_timeout_s: float = 30.0):
    api = FastAPI(title="mdoc serve", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(RequestError)
    async def refused(_request: Request, e: RequestError):
        return error(e)

    @api.exception_handler(MdocError)
    async def cannot_load(_request: Request, e: MdocError):
        return error(RequestError(str(e)))

    @api.get("/v2/health/live")
    async def live():
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @api.get("/v2")
    async def server_metadata():
        return service.server_metadata()

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        return service.model_metadata(name, version)

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        ok = service.model_ready(name, version)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 400)

    @api.get("/v2/models/{name}/config")
    @api.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None):
        mv = service.repository.get(name, version)
        return {"name": name, "platform": mv.runner.platform, "max_batch_size": mv.batcher.max_batch,
                "dynamic_batching": {"max_queue_delay_microseconds": int(mv.policy.max_queue_delay_ms * 1000)}}

    @api.post("/v2/repository/index")
    async def repository_index():
        return service.repository.index()

    @api.post("/v2/repository/models/{name}/load")
    async def repository_load(name: str):
        await service.repository.load(name)
        return {}

    @api.post("/v2/repository/models/{name}/unload")
    async def repository_unload(name: str):
        await service.repository.unload(name)
        return {}

    @api.get("/metrics")
    async def metrics():
        return Response(service.metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    return AccessLog(Infer(api, service, max_body, read_timeout_s), max_body)


INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class Infer:
    """ASGI: `POST /v2/models/NAME[/versions/V]/infer` answered here, everything else by the FastAPI app.
    The hot route skips FastAPI's routing, request object, dependency solving and body streaming: those
    cost more server CPU per request than the whole call of a small CNN (benchmarks/serve_load.py,
    column `srv ms`)."""

    def __init__(self, app, service: Service, max_body: int, read_timeout_s: float):
        self.app, self.service, self.max_body, self.read_timeout_s = app, service, max_body, read_timeout_s

    async def __call__(self, scope, receive, send):
        route = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        try:
            body = await self._body(receive)
            if body is None:  # the client went away
                return
            header_length = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER), None)
            header, binary = split_body(body, header_length)
            inputs, wanted, binary_out = parse_request(header, binary)
            mv, outs = await self.service.infer(route[1], route[2], inputs, list(wanted) or None, "http")
            response = respond(header, mv.name, mv.version, outs, wanted, binary_out)
        except RequestError as e:
            response = error(e)
        except MdocError as e:
            response = error(RequestError(str(e)))
        await response(scope, receive, send)

    async def _body(self, receive) -> bytes | None:
        """The whole body (None when the client went away): 413 once it passes `max_body` bytes, 408 when
        it has not all come within `read_timeout_s` (a client trickling it)."""
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        raise RequestError(f"request body of over {self.max_body} bytes is over the limit of "
                                           f"{self.max_body}", 413)
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            raise RequestError(f"request body not received within {self.read_timeout_s:g} s ({size} bytes came)",
                               408) from None


class AccessLog:
    """ASGI middleware: refuses a body whose Content-Length is over the limit (413) before it is read, and logs
    one JSON line per request. Plain ASGI rather than FastAPI's `@middleware("http")`, which wraps every
    request and response in extra tasks and streams: a cost paid on each of thousands of small requests."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        size = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if size.isdigit() and int(size) > self.max_body:
            e = RequestError(f"request body of {int(size)} bytes is over the limit of {self.max_body}", 413)
            await error(e)(scope, receive, sending)
        else:
            await self.app(scope, receive, sending)
        client = scope.get("client")
        log_access("http", scope["method"], scope["path"], status[0], started, client=client[0] if client else None)


def parameters(entry: dict, where: str) -> dict:
    """An entry's `parameters` object ({} when absent)."""
    value = entry.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{where}: 'parameters' is not a JSON object")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and the bytes after it."""
    view = memoryview(body)
    if header_length is not None:
        if not re.fullmatch(r"[0-9]{1,19}", header_length) or int(header_length) > len(body):
            raise RequestError(f"Inference-Header-Content-Length {shown(header_length)} does not fit a body of "
                               f"{len(body)} bytes")
        cut = int(header_length)
    else:
        cut = len(body)
    what = "request body" if header_length is None else f"request header (Inference-Header-Content-Length {cut})"
    try:
        header = json.loads(bytes(view[:cut]))
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"{what} is not JSON ({e})") from None
    except RecursionError:
        raise RequestError(f"{what} is not JSON this server reads (nested too deeply)") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise RequestError("request JSON has no 'inputs' list")
    return header, view[cut:]


def parse_request(header: dict, binary: memoryview) -> tuple[list, dict[str, bool], bool]:
    """(inputs as (name, datatype, array), the outputs asked for -> binary or not, binary by default)."""
    inputs, offset = [], 0
    for i, t in enumerate(header["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise RequestError(f"input {i} of the request has no 'name'")
        name, datatype, shape = t["name"], t.get("datatype"), t.get("shape")
        size = parameters(t, f"tensor '{name}'").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise RequestError(f"tensor '{name}': binary_data_size {shown(size)} runs past the end of the body "
                                   f"({len(binary) - offset} bytes left)")
            array = from_bytes(binary[offset:offset + size], datatype, shape, name)
            offset += size
        else:
            array = from_json(t.get("data"), datatype, shape, name)
        inputs.append((name, datatype, array))
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes after the last binary tensor belong to no input")
    binary_out = bool(parameters(header, "the request").get("binary_data_output", False))
    outputs = header.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise RequestError("the request's 'outputs' is not a list")
    wanted = {}
    for o in outputs or []:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise RequestError("an entry of the request's 'outputs' has no 'name'")
        wanted[o["name"]] = bool(parameters(o, f"output '{o['name']}'").get("binary_data", binary_out))
    return inputs, wanted, binary_out


def respond(header: dict, name: str, version: int, outs: dict[str, np.ndarray], wanted: dict[str, bool],
            binary_out: bool) -> Response:
    entries, chunks = [], []
    for key, value in outs.items():
        entry = {"name": key, "datatype": v2_datatype(value.dtype), "shape": list(value.shape)}
        if wanted.get(key, binary_out):
            raw = to_bytes(value)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = to_json(value)
        entries.append(entry)
    body = {"model_name": name, "model_version": str(version), "outputs": entries}
    if "id" in header:
        body["id"] = header["id"]
    text = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(b"".join([text, *chunks]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})
