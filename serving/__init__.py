"""`mdoc serve`: compiled artifacts over the Open Inference Protocol (KServe v2), REST and gRPC.

Built on FastAPI + uvicorn (REST) and grpcio (gRPC) with the v2 service stubs that
tritonclient ships, not on the `kserve` package's ModelServer. Measured on this project's
venv (kserve 0.21.0): `pip install kserve` brings 63 packages (kubernetes, pandas, pillow,
cryptography, cloudevents, the kubernetes client's auth stack) for a server that
needs five, and downgrades protobuf and psutil under onnx and TVM's tuner; its ModelServer
also runs its own process model and batching, which mdoc needs to own (draining a version
on update, batching on the artifact's batch symbol, restarts counted in the metrics).
FastAPI + uvicorn + grpcio are the same pieces kserve's server is made of, so the wire
protocol is the same, and the clients users already have (tritonclient, kserve's) work
unchanged: the tests drive this server with tritonclient over HTTP and gRPC.

Modules, in the order a request meets them: `rest` and `grpc_service` (the two front
ends), `codec` (v2 tensors <-> numpy), `service` (checks and operations shared by both),
`repository` (named, versioned models; updates and draining), `batching` (bounded queue,
dynamic batching, timeouts), `runners` (artifacts through mdoc's loader; onnxruntime as
the baseline), `metrics` (Prometheus, access log), `server` (one process), `workers`
(several processes, restarted when they die), `cli` (`mdoc serve`).
"""
