"""Load test of `mdoc serve`: concurrent clients over KServe v2 REST, mdoc against onnxruntime served the same way.

One repository holds the same small CNN twice: `cnn_mdoc` (the mdoc artifact, compiled with
a symbolic batch dim) and `cnn_ort` (the .onnx in onnxruntime, `config.json` backend
onnxruntime), so both go through the same server, protocol, queue, batcher and thread
share (`mdoc serve` caps both runtimes at MDOC_MAX_THREADS). The script starts two `mdoc
serve` processes on that repository, one without dynamic batching and one with it, and drives
each of the four (server, model) pairs with CLIENTS concurrent asyncio clients (aiohttp, binary
tensors), the pairs taking turns in chunks in a rotating order so that a change in the load on
the (shared) machine falls on all alike. Every answer is checked against the
output of the version that says it answered (mdoc.load / onnxruntime in this process); a
non-200, a wrong answer or a request never answered counts as a failure. A connection
broken under a request (a killed worker) is retried, up to 3 times, and counted. Beside
throughput and p50/p99 latency, `srv ms` and `cli ms` are the server's processes' and this
client's CPU time per request: where the time goes (`nan` for the server that lost a worker);
`rows` is the mean rows per model call (/metrics' mdoc_batch_size, warm-up included).

The CNN is MobileNetV2 (width 0.5, 32x32 input, 10 classes) by default: a real small CNN
whose ~60 kernels a call make the per-call cost large against the per-row work, which is
what dynamic batching saves on a CPU; `--model sample` is the bundled 4-conv sample, a
call of which (0.1 ms) is small against the HTTP side's cost per request.

`--update-at N` drops a new cnn_mdoc version (other weights: seed 1) into the repository
(both servers take it) once the batching server has answered N cnn_mdoc requests (compiled
beforehand into a dot-folder, renamed into place): its answers must switch to the new
version's outputs without a failed or lost request. `--kill-worker-at N` (with `--workers 2` or more) kills
one of the batching server's workers with SIGKILL after N answers: the supervisor must restart it and
`mdoc_worker_restarts_total` must show it.

    python benchmarks/serve_load.py                                  # 2,000 requests per model and setting
    python benchmarks/serve_load.py --requests 20000 --update-at 3000 --workers 2 --kill-worker-at 11000

(N mid-chunk, as there: at a chunk's end no request is in flight when the worker dies.)

Exit status 1 when any request failed or was lost, or the update or the restart did not show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

MODELS = ("cnn_mdoc", "cnn_ort")


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests per model and server setting")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--chunks", type=int, default=8, help="turns of each (server, model) pair")
    p.add_argument("--max-batch", type=int, default=16, help="dynamic batching's most rows per call")
    p.add_argument("--delay-ms", type=float, default=2.0, help="dynamic batching's longest wait")
    p.add_argument("--model", choices=("mobilenetv2", "sample"), default="mobilenetv2", help="the CNN")
    p.add_argument("--image-size", type=int, default=32, help="the CNN's input size")
    p.add_argument("--workers", type=int, default=1, help="mdoc serve --workers")
    p.add_argument("--threads", type=int, default=0,
                   help="MDOC_MAX_THREADS for both runtimes in the server (default: mdoc serve's share of the cores)")
    p.add_argument("--update-at", type=int, default=0, metavar="N",
                   help="batching server: drop in cnn_mdoc version 2 after N answers (0: no update)")
    p.add_argument("--kill-worker-at", type=int, default=0, metavar="N",
                   help="batching server: SIGKILL one worker after N cnn_mdoc answers (needs --workers 2 or more)")
    args = p.parse_args()
    if args.kill_worker_at and args.workers < 2:
        p.error("--kill-worker-at needs --workers 2 or more (one worker has no supervisor to restart it)")
    return args


def cnn(args, seed: int):
    from mdoc.models.mobilenet import mobilenetv2
    from mdoc.models.sample import sample

    if args.model == "sample":
        return sample(batch="N", image_size=args.image_size, seed=seed)
    return mobilenetv2(batch="N", image_size=args.image_size, width_mult=0.5, num_classes=10, seed=seed)


def build_repository(folder: Path, args) -> tuple[Path, Path | None]:
    """The repository (cnn_mdoc/1, cnn_ort), and with --update-at cnn_mdoc's version 2 staged as a dot-folder."""
    import onnx

    import mdoc

    repo = folder / "repo"
    (repo / "cnn_ort").mkdir(parents=True)
    onnx.save(cnn(args, 0), repo / "cnn_ort" / "model.onnx")
    (repo / "cnn_ort" / "config.json").write_text(json.dumps({"backend": "onnxruntime"}))
    (repo / "cnn_mdoc").mkdir()
    mdoc.compile(repo / "cnn_ort" / "model.onnx", "x86", repo / "cnn_mdoc" / "1", show_progress=False)
    if not args.update_at:
        return repo, None
    onnx.save(cnn(args, 1), folder / "v2.onnx")
    staged = repo / "cnn_mdoc" / ".2"
    mdoc.compile(folder / "v2.onnx", "x86", staged, show_progress=False)
    return repo, staged


def expected_outputs(repo: Path, staged: Path | None, inputs: list[np.ndarray]) -> dict:
    """{(model, version): [output per client input]}."""
    import onnxruntime as ort

    import mdoc

    session = ort.InferenceSession(str(repo / "cnn_ort" / "model.onnx"), providers=["CPUExecutionProvider"])
    out = {("cnn_ort", "1"): [session.run(None, {"image": x})[0] for x in inputs]}
    for version, path in (("1", repo / "cnn_mdoc" / "1"), ("2", staged)):
        if path is not None:
            run = mdoc.load(path)
            out[("cnn_mdoc", version)] = [run(image=x)["logits"] for x in inputs]
    return out


def request_body(x: np.ndarray) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


class Tally:
    """One model's record in one setting: latencies, failures, retries, answering versions in arrival order."""

    def __init__(self):
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.retries = 0
        self.wall = 0.0
        self.sent = 0
        self.server_cpu = self.client_cpu = 0.0  # seconds


async def drive(url: str, model: str, count: int, clients: int, bodies, expected, tally: Tally,
                events: list | None = None) -> None:
    """`count` requests from `clients` concurrent clients into `tally`; `events` are (answers, action) run once
    that many answers of this model are in (in a thread: the clients keep going)."""
    import aiohttp

    sent = [0]
    events = events if events is not None else []

    async def one(session, body, headers) -> tuple[int, bytes, str | None]:
        for attempt in range(4):
            try:
                async with session.post(f"http://{url}/v2/models/{model}/infer", data=body, headers=headers) as r:
                    return r.status, await r.read(), r.headers.get("Inference-Header-Content-Length")
            except (aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError):
                if attempt == 3:
                    raise
                tally.retries += 1
                await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    async def client(session, k: int) -> None:
        body, headers = bodies[k % len(bodies)]
        while sent[0] < count:
            sent[0] += 1
            start = time.perf_counter()
            try:
                status, raw, cut = await one(session, body, headers)
                if status != 200:
                    tally.failures.append(f"{status} {raw[:200]!r}")
                    continue
                version = json.loads(raw[:int(cut)])["model_version"]
                want = expected[(model, version)][k % len(bodies)]
                got = np.frombuffer(raw[int(cut):], np.float32).reshape(want.shape)
                if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                    tally.failures.append(f"wrong answer from version {version}")
                    continue
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, TypeError, ValueError) as e:
                tally.failures.append(f"{type(e).__name__}: {e}")
                continue
            tally.latencies.append(time.perf_counter() - start)
            tally.versions.append(version)
            while events and len(tally.versions) >= events[0][0]:
                threading.Thread(target=events.pop(0)[1], daemon=True).start()

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, k) for k in range(clients)))
        tally.wall += time.perf_counter() - start
    tally.sent += sent[0]


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing spawn children, not its resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(c) for c in children
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) of process `root` and its live descendants: where a server's time goes."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def scraped(url: str) -> dict:
    """From the server's /metrics: worker restarts, and each model's mean rows per model call."""
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()

    def total(prefix: str) -> float:
        return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))

    rows = {m: total(f'mdoc_batch_size_sum{{model="{m}"') / max(1.0, total(f'mdoc_batch_size_count{{model="{m}"'))
            for m in MODELS}
    return {"restarts": total("mdoc_worker_restarts_total"), "rows": rows}


def run_all(repo: Path, args, settings: dict[str, list[str]], bodies, expected, events: list) -> dict[str, dict]:
    """Every (setting, model) under load, each setting in a server of its own, all servers up at once and the
    pairs taking turns in chunks (rotating order), so a change in the machine's load falls on all alike;
    `events` fire on the answers of the last setting's cnn_mdoc."""
    from contextlib import ExitStack

    from mdoc.serving.launch import ServerProcess

    totals = {label: {m: Tally() for m in MODELS} for label in settings}
    with ExitStack() as stack:
        servers = {label: stack.enter_context(ServerProcess(
            repo, "--quiet", "--poll-seconds", "0.5", "--grpc-port", "0", "--workers", str(args.workers), *extra))
            for label, extra in settings.items()}
        pairs = [(label, m) for label in settings for m in MODELS]
        for label, m in pairs:  # warm-up: first calls, connections
            asyncio.run(drive(servers[label].url, m, 4 * args.clients, args.clients, bodies, expected, Tally()))
        watched = list(settings)[-1]
        pending = [(n, action(servers[watched])) for n, action in events]
        per_chunk = args.requests // args.chunks
        for chunk in range(args.chunks):
            n = per_chunk if chunk < args.chunks - 1 else args.requests - per_chunk * (args.chunks - 1)
            turn = pairs[chunk % len(pairs):] + pairs[:chunk % len(pairs)]
            for label, m in turn if chunk % 2 == 0 else turn[::-1]:
                t, server_cpu, client_cpu = totals[label][m], cpu_seconds(servers[label].proc.pid), time.process_time()
                asyncio.run(drive(servers[label].url, m, n, args.clients, bodies, expected, t,
                                  pending if (label, m) == (watched, "cnn_mdoc") else None))
                t.server_cpu += cpu_seconds(servers[label].proc.pid) - server_cpu  # NaN'd below if a worker died
                t.client_cpu += time.process_time() - client_cpu
        for label in settings:
            totals[label].update(scraped(servers[label].url))
        if args.kill_worker_at:  # the killed worker's CPU time left the sum with it
            for m in MODELS:
                totals[watched][m].server_cpu = float("nan")
    for label in settings:
        for m in MODELS:
            t = totals[label][m]
            lat = sorted(t.latencies)
            t.lost = args.requests - len(lat) - len(t.failures)
            t.rps = len(lat) / t.wall or float("nan")
            t.p50 = statistics.median(lat) * 1000 if lat else float("nan")
            t.p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
            by = ", ".join(f"v{v}: {t.versions.count(v)}" for v in sorted(set(t.versions)))
            print(f"{label:<22} {m:<9} {args.requests:>7} {len(t.failures):>8} {t.lost:>5} {t.retries:>7} "
                  f"{t.rps:>8.0f} {t.p50:>8.2f} {t.p99:>8.2f} {t.server_cpu / args.requests * 1e3:>6.2f} "
                  f"{t.client_cpu / args.requests * 1e3:>6.2f} {totals[label]['rows'][m]:>5.1f}  {by}", flush=True)
    return totals


def drop_in(staged: Path):
    """The update: the staged version renamed into place (the repository's poll picks it up)."""
    def act(_server):
        return lambda: os.rename(staged, staged.parent / staged.name.lstrip("."))
    return act


def kill_one(_args):
    def act(server):
        def kill():
            pid = worker_pids(server.proc.pid)[0]
            os.kill(pid, signal.SIGKILL)
            print(f"killed worker {pid}", flush=True)
        return kill
    return act


def main() -> int:
    args = _args()
    if args.threads:
        os.environ["MDOC_MAX_THREADS"] = str(args.threads)  # the server inherits it
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mdoc-serve-load-") as tmp:
        repo, staged = build_repository(Path(tmp), args)
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((1, 3, args.image_size, args.image_size)).astype(np.float32)
                  for _ in range(args.clients)]
        expected = expected_outputs(repo, staged, inputs)
        os.environ.pop("TVM_NUM_THREADS", None)  # mdoc.load set it for this process; the server makes its own choice
        bodies = [request_body(x) for x in inputs]
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores; "
              f"{args.clients} clients; {args.model} {args.image_size}x{args.image_size}; {args.workers} worker(s); "
              f"MDOC_MAX_THREADS={os.environ.get('MDOC_MAX_THREADS', 'as mdoc serve chooses')}")
        print(f"{'server':<22} {'model':<9} {'requests':>7} {'failures':>8} {'lost':>5} {'retried':>7} {'req/s':>8} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'srv ms':>6} {'cli ms':>6} {'rows':>5}  answered by")
        events = []
        if args.update_at:
            events.append((args.update_at, drop_in(staged)))
        if args.kill_worker_at:
            events.append((args.kill_worker_at, kill_one(args)))
        events.sort(key=lambda e: e[0])
        batching = f"batching {args.max_batch}/{args.delay_ms:g}ms"
        totals = run_all(repo, args, {"no batching": ["--max-batch", "1"],
                                      batching: ["--max-batch", str(args.max_batch),
                                                 "--batch-delay-ms", str(args.delay_ms)]},
                         bodies, expected, events)
        plain, batched = totals["no batching"], totals[batching]
    print()
    for label, t in (("no batching", plain), ("batching", batched)):
        print(f"{label}: mdoc / onnxruntime throughput {t['cnn_mdoc'].rps / t['cnn_ort'].rps:.2f}x")
    for m in MODELS:
        print(f"{m}: batching / no batching throughput {batched[m].rps / plain[m].rps:.2f}x")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    bad = sum(len(t[m].failures) + t[m].lost for t in (plain, batched) for m in MODELS)
    versions = batched["cnn_mdoc"].versions
    if args.update_at:
        first = versions.index("2") if "2" in versions else len(versions)
        late_v1 = versions[first:].count("1")
        tail = versions[-min(100, len(versions) // 10):]
        print(f"update after {args.update_at} answers: first v2 answer was answer {first + 1}; "
              f"{late_v1} v1 answers came after it; the last {len(tail)} answers: "
              f"{', '.join(f'v{v}: {tail.count(v)}' for v in sorted(set(tail)))}")
        if "1" in tail or not tail:
            print("the answers did not switch to the new version", file=sys.stderr)
            bad += 1
    if args.kill_worker_at:
        print(f"worker restarts in /metrics: {batched['restarts']:g}; requests retried after the kill: "
              f"{sum(batched[m].retries for m in MODELS)}")
        if batched["restarts"] < 1:
            print("the killed worker's restart is not in /metrics", file=sys.stderr)
            bad += 1
    for t in (plain, batched):
        for m in MODELS:
            for f in t[m].failures[:3]:
                print(f"{m}: {f}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
