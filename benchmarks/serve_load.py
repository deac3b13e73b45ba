"""Load test of `mdoc serve`: concurrent clients over KServe v2 REST, mdoc against onnxruntime served the same way.

One repository holds the same small CNN twice: `cnn_mdoc` (the mdoc artifact) and
`cnn_ort` (the .onnx in onnxruntime, `config.json` backend onnxruntime), so both go
through the same server, protocol, queue and batcher. The script starts `mdoc serve`
once without dynamic batching and once with it, and in each drives both models with
CLIENTS concurrent asyncio clients (aiohttp, binary tensors), the two models alternating
in chunks so load on the machine falls on both alike. Every answer is checked against
the model's own output for that client's input (mdoc.load / onnxruntime in this
process); a non-200, a wrong answer or a request never answered counts as a failure.

Prints, per server setting and model: requests, failures, throughput, p50 and p99
latency, the versions that answered, the ratio of mdoc's throughput to onnxruntime's, and
batching's speedup. In the batching run, a new version of cnn_mdoc is dropped into the
repository during its first chunk (copied to a dot-folder, renamed into place): it must take
over without a failed or lost request.

    python benchmarks/serve_load.py                       # 2,000 requests per model and setting
    python benchmarks/serve_load.py --requests 20000      # the issue's load test
    python benchmarks/serve_load.py --tvm-threads 1       # mdoc's model on one thread

Exit status 1 when any request failed or was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests per model and server setting")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--chunks", type=int, default=4, help="alternations of the two models per setting")
    p.add_argument("--max-batch", type=int, default=16, help="dynamic batching's most rows per call")
    p.add_argument("--delay-ms", type=float, default=2.0, help="dynamic batching's longest wait")
    p.add_argument("--image-size", type=int, default=32, help="the CNN's input size (models/sample.py)")
    p.add_argument("--width", type=int, default=16, help="the CNN's first conv's channels")
    p.add_argument("--tvm-threads", type=int, default=0,
                   help="TVM_NUM_THREADS for the server (default: the artifact's choice); TVM's pool spins after "
                        "each call, which on few cores takes CPU from the HTTP side")
    return p.parse_args()


def build_repository(folder: Path, image_size: int, width: int) -> Path:
    import onnx

    import mdoc
    from mdoc.models.sample import sample

    model = folder / "cnn.onnx"
    onnx.save(sample(batch="N", image_size=image_size, width=width), model)
    repo = folder / "repo"
    repo.mkdir()
    (repo / "cnn_mdoc").mkdir()
    mdoc.compile(model, "x86", repo / "cnn_mdoc" / "1", show_progress=False)
    (repo / "cnn_ort").mkdir()
    shutil.copy(model, repo / "cnn_ort" / "model.onnx")
    (repo / "cnn_ort" / "config.json").write_text(json.dumps({"backend": "onnxruntime"}))
    return repo


def expected_outputs(repo: Path, inputs: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    import onnxruntime as ort

    import mdoc

    run = mdoc.load(repo / "cnn_mdoc" / "1")
    session = ort.InferenceSession(str(repo / "cnn_ort" / "model.onnx"), providers=["CPUExecutionProvider"])
    return {"cnn_mdoc": [run(image=x)["logits"] for x in inputs],
            "cnn_ort": [session.run(None, {"image": x})[0] for x in inputs]}


def request_body(x: np.ndarray) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


async def drive(url: str, model: str, count: int, clients: int, bodies, expected) -> dict:
    """`count` requests from `clients` concurrent clients; latencies of the good ones, and the failures."""
    import aiohttp

    latencies: list[float] = []
    failures: list[str] = []
    versions: dict[str, int] = {}
    sent = [0]

    async def client(session, k: int) -> None:
        body, headers = bodies[k % len(bodies)]
        want = expected[model][k % len(bodies)]
        while sent[0] < count:
            sent[0] += 1
            start = time.perf_counter()
            try:
                async with session.post(f"http://{url}/v2/models/{model}/infer", data=body, headers=headers) as r:
                    raw = await r.read()
                    if r.status != 200:
                        failures.append(f"{r.status} {raw[:200]!r}")
                        continue
                    cut = int(r.headers["Inference-Header-Content-Length"])
                    version = json.loads(raw[:cut])["model_version"]
                    versions[version] = versions.get(version, 0) + 1
                    got = np.frombuffer(raw[cut:], np.float32).reshape(want.shape)
                    if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                        failures.append("wrong answer")
                        continue
                latencies.append(time.perf_counter() - start)
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as e:
                failures.append(f"{type(e).__name__}: {e}")

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, k) for k in range(clients)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "failures": failures, "wall": wall, "sent": sent[0], "versions": versions}


def drop_in_version(repo: Path, after: float) -> threading.Thread:
    """In `after` seconds, copy cnn_mdoc's highest version in as the next one (a dot-folder renamed into place)."""
    def update():
        time.sleep(after)
        folder = repo / "cnn_mdoc"
        last = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        shutil.copytree(folder / str(last), folder / f".{last + 1}")
        os.rename(folder / f".{last + 1}", folder / str(last + 1))

    thread = threading.Thread(target=update, daemon=True)
    thread.start()
    return thread


def run_setting(repo: Path, args, label: str, serve_args: list[str], bodies, expected,
                update: bool = False) -> dict[str, dict]:
    """Both models under load in one server; with `update`, a new cnn_mdoc version lands during its first chunk."""
    from mdoc.serving.launch import ServerProcess

    totals = {m: {"latencies": [], "failures": [], "wall": 0.0, "sent": 0, "versions": {}}
              for m in ("cnn_mdoc", "cnn_ort")}
    with ServerProcess(repo, "--quiet", "--poll-seconds", "0.5", "--grpc-port", "0", *serve_args) as server:
        for m in totals:  # warm-up: first calls, connections
            asyncio.run(drive(server.url, m, 4 * args.clients, args.clients, bodies, expected))
        per_chunk = args.requests // args.chunks
        for chunk in range(args.chunks):
            order = ("cnn_mdoc", "cnn_ort") if chunk % 2 == 0 else ("cnn_ort", "cnn_mdoc")
            for m in order:
                n = per_chunk if chunk < args.chunks - 1 else args.requests - per_chunk * (args.chunks - 1)
                if update and m == "cnn_mdoc" and chunk == 0:
                    drop_in_version(repo, 0.1)
                r = asyncio.run(drive(server.url, m, n, args.clients, bodies, expected))
                t = totals[m]
                t["latencies"] += r["latencies"]
                t["failures"] += r["failures"]
                t["wall"] += r["wall"]
                t["sent"] += r["sent"]
                for v, k in r["versions"].items():
                    t["versions"][v] = t["versions"].get(v, 0) + k
    for m, t in totals.items():
        lat = sorted(t["latencies"])
        t["answered"] = len(lat)
        t["lost"] = args.requests - t["answered"] - len(t["failures"])
        t["rps"] = len(lat) / t["wall"]
        t["p50"] = statistics.median(lat) * 1000 if lat else float("nan")
        t["p99"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
        answered_by = ", ".join(f"v{v}: {k}" for v, k in sorted(t["versions"].items()))
        print(f"{label:<22} {m:<9} {args.requests:>7} {len(t['failures']):>8} {t['lost']:>5} {t['rps']:>9.0f} "
              f"{t['p50']:>8.2f} {t['p99']:>8.2f}  {answered_by}", flush=True)
    return totals


def main() -> int:
    args = _args()
    if args.tvm_threads:
        os.environ["TVM_NUM_THREADS"] = str(args.tvm_threads)  # the server inherits it
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mdoc-serve-load-") as tmp:
        repo = build_repository(Path(tmp), args.image_size, args.width)
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((1, 3, args.image_size, args.image_size)).astype(np.float32)
                  for _ in range(args.clients)]
        chosen = os.environ.get("TVM_NUM_THREADS")
        expected = expected_outputs(repo, inputs)
        if chosen is None:  # mdoc.load set it for this process; the server must make its own choice
            os.environ.pop("TVM_NUM_THREADS", None)
        bodies = [request_body(x) for x in inputs]
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores; "
              f"{args.clients} clients; CNN {args.image_size}x{args.image_size}, width {args.width}; "
              f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'as the artifact chose')}")
        print(f"{'server':<22} {'model':<9} {'requests':>7} {'failures':>8} {'lost':>5} {'req/s':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8}  answered by")
        plain = run_setting(repo, args, "no batching", ["--max-batch", "1"], bodies, expected)
        batched = run_setting(repo, args, f"batching {args.max_batch}/{args.delay_ms:g}ms",
                              ["--max-batch", str(args.max_batch), "--batch-delay-ms", str(args.delay_ms)],
                              bodies, expected, update=True)
    print()
    for label, t in (("no batching", plain), ("batching", batched)):
        print(f"{label}: mdoc / onnxruntime throughput {t['cnn_mdoc']['rps'] / t['cnn_ort']['rps']:.2f}x")
    for m in ("cnn_mdoc", "cnn_ort"):
        print(f"{m}: batching / no batching throughput {batched[m]['rps'] / plain[m]['rps']:.2f}x")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    bad = sum(len(t[m]["failures"]) + t[m]["lost"] for t in (plain, batched) for m in t)
    if "2" not in batched["cnn_mdoc"]["versions"]:
        print("the new cnn_mdoc version never answered", file=sys.stderr)
        bad += 1
    for t in (plain, batched):
        for m in t:
            for f in t[m]["failures"][:3]:
                print(f"{m}: {f}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
