"""The gRPC side of the Open Inference Protocol: `inference.GRPCInferenceService`.

The service definition and its stubs are the ones tritonclient ships (KServe's
`grpc_predict_v2.proto` plus Triton's repository extension, package `inference`), so
tritonclient's and KServe's gRPC clients talk to this server unchanged. Tensors travel as
`raw_input_contents` / `raw_output_contents` (what tritonclient sends and reads) or typed
`contents` on input. RequestError statuses map to gRPC codes (400 INVALID_ARGUMENT,
404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED); a request
whose bytes are not the method's message (`ParsedOrRefused`) is INVALID_ARGUMENT too, not
the UNKNOWN grpcio answers when a deserializer raises.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from mdoc.errors import MdocError

from .codec import RequestError, from_bytes, from_json, numpy_dtype, to_bytes, v2_datatype
from .metrics import log_access
from .service import Service

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL,
         503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}

# datatype -> the InferTensorContents field that holds it when a client sends typed contents
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents"}


def _tensor_metadata(t: dict) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: Service):
        self.service = service

    async def _refuse(self, context, method: str, started: float, e: RequestError, model: str = ""):
        log_access("grpc", method, model, e.status, started, error=str(e))
        await context.abort(CODES.get(e.status, grpc.StatusCode.UNKNOWN), str(e))

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version or None))

    async def ServerMetadata(self, request, context):
        meta = self.service.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request, context):
        started = time.perf_counter()
        try:
            meta = self.service.model_metadata(request.name, request.version or None)
        except RequestError as e:
            await self._refuse(context, "ModelMetadata", started, e)
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=[_tensor_metadata(t) for t in meta["inputs"]],
                                        outputs=[_tensor_metadata(t) for t in meta["outputs"]])

    async def ModelConfig(self, request, context):
        started = time.perf_counter()
        try:
            mv = self.service.repository.get(request.name, request.version or None)
        except RequestError as e:
            await self._refuse(context, "ModelConfig", started, e)
        config = mc.ModelConfig(name=request.name, platform=mv.runner.platform, max_batch_size=mv.batcher.max_batch)
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request, context):
        models = [pb.RepositoryIndexResponse.ModelIndex(name=m["name"], version=m["version"], state=m["state"])
                  for m in self.service.repository.index()]
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(self, request, context):
        started = time.perf_counter()
        try:
            await self.service.repository.load(request.model_name)
        except MdocError as e:
            await self._refuse(context, "RepositoryModelLoad", started, RequestError(str(e)))
        except RequestError as e:
            await self._refuse(context, "RepositoryModelLoad", started, e)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        started = time.perf_counter()
        try:
            await self.service.repository.unload(request.model_name)
        except RequestError as e:
            await self._refuse(context, "RepositoryModelUnload", started, e)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request, context):
        started = time.perf_counter()
        try:
            inputs = _inputs(request)
            wanted = [o.name for o in request.outputs] or None
            mv, outs = await self.service.infer(request.model_name, request.model_version or None, inputs, wanted,
                                                "grpc")
        except RequestError as e:
            await self._refuse(context, "ModelInfer", started, e, request.model_name)
        response = pb.ModelInferResponse(model_name=mv.name, model_version=str(mv.version), id=request.id)
        for name, value in outs.items():
            response.outputs.add(name=name, datatype=v2_datatype(value.dtype), shape=list(value.shape))
            response.raw_output_contents.append(to_bytes(value))
        log_access("grpc", "ModelInfer", request.model_name, 200, started)
        return response


def _inputs(request) -> list[tuple[str, str, np.ndarray]]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    out = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            array = from_bytes(raw[i], t.datatype, shape, t.name)
        else:
            field = CONTENTS.get(t.datatype)
            if field is None:
                numpy_dtype(t.datatype, t.name)  # names an unknown datatype
                raise RequestError(f"tensor '{t.name}': {t.datatype} travels only as raw_input_contents")
            array = from_json(list(getattr(t.contents, field)), t.datatype, shape, t.name)
        out.append((t.name, t.datatype, array))
    return out


class _Unparsed:
    def __init__(self, error: str):
        self.error = error


class ParsedOrRefused(grpc.aio.ServerInterceptor):
    """Parses each unary request itself: bytes that are not the method's message get INVALID_ARGUMENT naming it."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        parse, behaviour = handler.request_deserializer, handler.unary_unary
        method = details.method.rsplit("/", 1)[-1]

        def deserializer(data: bytes):
            try:
                return parse(data)
            except DecodeError as e:
                return _Unparsed(str(e))

        async def checked(request, context):
            if isinstance(request, _Unparsed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{method}: the request is not a valid protobuf message ({request.error})")
            return await behaviour(request, context)

        return handler._replace(request_deserializer=deserializer, unary_unary=checked)


def server(service: Service, host: str, port: int, max_body: int) -> grpc.aio.Server:
    options = [("grpc.max_receive_message_length", max_body), ("grpc.max_send_message_length", max_body),
               ("grpc.so_reuseport", 1)]
    s = grpc.aio.server(options=options, interceptors=[ParsedOrRefused()])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), s)
    bound = s.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return s
