"""`mdoc serve SOURCE`: serve artifacts over the Open Inference Protocol (KServe v2, REST and gRPC).

Added to the `mdoc` group through the `mdoc.commands` entry point, so the core never
imports the server (or FastAPI, uvicorn, grpcio) and `mdoc --help` stays fast. Needs
`pip install 'mdoc[serve]'`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mdoc.errors import MdocError


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="REST port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="gRPC port (0: no gRPC).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Server processes on the same ports; one that dies is restarted (mdoc_worker_restarts_total).")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run --workers replicas as a Ray Serve deployment (REST only); needs mdoc[ray].")
@click.option("--ray-address", help="Join this Ray cluster instead of starting a local one (with --ray).")
@click.option("-t", "--target", default="x86", show_default=True, help="Target for .onnx entries compiled on load.")
@click.option("--max-batch", type=click.IntRange(1), default=1, show_default=True,
              help="Dynamic batching: most rows per model call (models with a batch dim).")
@click.option("--batch-delay-ms", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Dynamic batching: longest wait for more requests after the first.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Requests waiting per model before the server answers 503.")
@click.option("--timeout-ms", type=click.FloatRange(1), default=30000, show_default=True,
              help="A request not answered in this time gets 504.")
@click.option("--read-timeout-ms", type=click.FloatRange(1), default=30000, show_default=True,
              help="A connection whose request head has not come in this time is closed; a body not all there "
                   "this long after the head gets 408 (slow clients).")
@click.option("--max-body-mb", type=click.FloatRange(0.001), default=64, show_default=True,
              help="Largest request body (413 above it).")
@click.option("--poll-seconds", type=click.FloatRange(0), default=2.0, show_default=True,
              help="How often to look for new model versions (0: only through the repository API).")
@click.option("--access-log", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the access log (JSON lines) here instead of stderr.")
@click.option("--quiet", is_flag=True, help="No access log.")
def serve_cmd(source, host, port, grpc_port, workers, use_ray, ray_address, target, max_batch, batch_delay_ms,
              max_queue, timeout_ms, read_timeout_ms, max_body_mb, poll_seconds, access_log, quiet) -> None:
    """Serve SOURCE over KServe v2 REST (/v2/...) and gRPC, with Prometheus metrics on /metrics.

    SOURCE is an artifact folder, an .onnx file (compiled when loaded) or a model
    repository folder of NAME/ entries (an artifact, NAME.onnx, or numbered version
    folders NAME/1, NAME/2, ...). A higher version dropped in takes over without
    dropping requests; the old one is unloaded once drained.
    """
    if ray_address and not use_ray:
        raise MdocError("--ray-address goes with --ray")
    share_cores(workers)
    metrics_dir = None
    if workers > 1 and not use_ray:  # before anything imports prometheus_client: its mode is chosen then
        from .workers import multiprocess_metrics_dir

        metrics_dir = multiprocess_metrics_dir()
    from .repository import Policy, model_sources
    from .server import ServeConfig

    if not model_sources(source):
        raise MdocError(f"{source}: holds no models (artifact folders, .onnx files or NAME/VERSION folders)")
    from .metrics import configure_logging

    configure_logging(access_log, quiet)
    policy = Policy(max_batch_size=max_batch, max_queue_delay_ms=batch_delay_ms, max_queue_size=max_queue,
                    timeout_ms=timeout_ms)
    config = ServeConfig(source.resolve(), host, port, grpc_port or None, target, policy, int(max_body_mb * (1 << 20)),
                         poll_seconds, reuse_port=workers > 1 and not use_ray, read_timeout_s=read_timeout_ms / 1000)
    if use_ray:
        try:
            from .ray_serve import run_on_ray
        except ImportError as e:
            raise MdocError(f"--ray needs Ray Serve: pip install 'mdoc[serve,ray]' ({e})") from None
        run_on_ray(config, workers, ray_address, (access_log, quiet))
        return
    if workers > 1:
        from .workers import supervise

        sys.exit(supervise(config, workers, (access_log, quiet), metrics_dir))
    from .server import run

    run(config)


def share_cores(workers: int) -> None:
    """Cap each worker's TVM pool (MDOC_MAX_THREADS, inherited by the workers) at its share of the cores less
    one for its event loop, unless TVM_NUM_THREADS or MDOC_MAX_THREADS says otherwise: an artifact's own thread
    choice assumes it has the machine, and TVM's pool spins after each call, taking the core that the HTTP
    and gRPC side needs (on 2 cores, one thread took unbatched mdoc from 151 to 265 requests a second)."""
    from mdoc.backends import THREAD_CAP

    if "TVM_NUM_THREADS" not in os.environ and THREAD_CAP not in os.environ:
        os.environ[THREAD_CAP] = str(max(1, len(os.sched_getaffinity(0)) // workers - 1))


@click.command("package", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("--docker", "docker_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to write the Docker build context into (must not exist, or be empty).")
@click.option("--name", help="Model name in the image's repository  [default: the artifact folder's name]")
@click.option("--wheel", type=click.Path(dir_okay=False, path_type=Path),
              help="mdoc's wheel to install in the image  [default: built from the checkout mdoc runs from]")
def package_cmd(artifact, docker_dir, name, wheel) -> None:
    """Write a Docker build context for ARTIFACT: its image runs `mdoc serve` on ports 8000 (REST) and 8001 (gRPC).

    Build and run it with `docker build -t NAME DIR && docker run -p 8000:8000 -p 8001:8001 NAME`.
    """
    from .package import write_context

    out = write_context(artifact, docker_dir, name, wheel)
    click.echo(f"wrote {out} (Dockerfile, requirements.txt, wheels/, models/); "
               f"docker build -t {(name or artifact.name.split('.')[0]).lower()} {out}")
