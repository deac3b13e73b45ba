"""`mdoc package ARTIFACT --docker DIR`: a Docker build context whose image serves the artifact with `mdoc serve`.

The context holds the Dockerfile, `requirements.txt` (every package `mdoc[serve]` needs,
pinned to the version installed here, so the image runs what was tested, and installed
with `--no-deps` so nothing unpinned slips in), mdoc's own wheel (built from the source
checkout this mdoc is installed from, or given with `--wheel`) and the artifact as
version 1 of a model repository (`models/NAME/1/`, its hashes checked after the copy).
The base image is the official Python image of this Python's minor version, for the
artifact's architecture (`--platform`), since a library compiled for x86_64 cannot run
in an arm64 container. Written into a temporary folder beside DIR and renamed into
place, so a failure leaves no half-written context.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mdoc.errors import MdocError
from mdoc.version import __version__

PLATFORMS = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}
HTTP_PORT, GRPC_PORT = 8000, 8001


def pinned_requirements(root: str = "mdoc", extras: tuple[str, ...] = ("serve",)) -> list[str]:
    """`name==version` for every installed distribution `root[extras]` needs, transitively, sorted."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (canonicalize_name(name), wanted) in seen:
            continue
        seen.add((canonicalize_name(name), wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise MdocError(f"package '{name}' that mdoc[{','.join(extras)}] needs is not installed; "
                            f"pip install 'mdoc[{','.join(extras)}]' first") from None
        if canonicalize_name(name) != canonicalize_name(root):
            pins[canonicalize_name(name)] = f"{dist.metadata['Name']}=={dist.version}"
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            if canonicalize_name(req.name) == canonicalize_name(root):  # mdoc[test] naming mdoc[serve]
                todo.append((root, frozenset(req.extras)))
            else:
                todo.append((req.name, frozenset(req.extras)))
    return sorted(pins.values(), key=str.lower)


def mdoc_wheel(into: Path, wheel: Path | None) -> Path:
    """mdoc's wheel in `into`: the one given, or one built from the checkout mdoc is installed from."""
    into.mkdir()
    if wheel is not None:
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise MdocError(f"{wheel}: not a wheel file")
        return Path(shutil.copy(wheel, into))
    urls = [json.loads(d.read_text("direct_url.json")).get("url", "") for d in metadata.distributions(name="mdoc")
            if d.read_text("direct_url.json")]  # an egg-info in the checkout has none; the install's has
    sources = [u.removeprefix("file://") for u in urls if u.startswith("file://")]
    if not sources:
        raise MdocError("mdoc is not installed from a source checkout; give its wheel with --wheel FILE")
    source = sources[0]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), source],
                          capture_output=True, text=True)
    built = sorted(into.glob("mdoc-*.whl"))
    if done.returncode or not built:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise MdocError(f"building mdoc's wheel from {source} failed: {last}")
    return built[0]


def dockerfile(name: str, platform: str, wheel: str) -> str:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"""\
# Written by `mdoc package --docker` (mdoc {__version__}): serves model '{name}' with `mdoc serve`
# over KServe v2 REST on {HTTP_PORT} and gRPC on {GRPC_PORT}; Prometheus metrics on :{HTTP_PORT}/metrics.
FROM --platform={platform} python:{py}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
COPY requirements.txt wheels/ /srv/
RUN pip install --no-deps -r /srv/requirements.txt && pip install --no-deps /srv/{wheel} && rm /srv/{wheel} \\
    && useradd --system --no-create-home mdoc
COPY models/ /srv/models/
USER mdoc
EXPOSE {HTTP_PORT} {GRPC_PORT}
HEALTHCHECK CMD python -c \\
    "import urllib.request as u; u.urlopen('http://127.0.0.1:{HTTP_PORT}/v2/health/ready', timeout=2)"
CMD ["mdoc", "serve", "/srv/models", "--host", "0.0.0.0", "--port", "{HTTP_PORT}", "--grpc-port", "{GRPC_PORT}"]
"""


def write_context(artifact: Path, out: Path, name: str | None = None, wheel: Path | None = None) -> Path:
    from mdoc.targets.artifact import read_manifest

    manifest = read_manifest(artifact)
    arch = manifest["target"]["arch"]
    if arch not in PLATFORMS:
        raise MdocError(f"{artifact}: no container platform for an artifact built for {arch}")
    if manifest["target"].get("device") == "cuda":
        raise MdocError(f"{artifact}: a CUDA artifact needs a CUDA base image; mdoc package writes CPU images only")
    name = name or artifact.name.split(".")[0]
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MdocError(f"{out}: exists and is not empty; refusing to overwrite it")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise MdocError(f"{out}: folder '{parent}' does not exist")
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=".mdoc-package-"))
    try:
        built = mdoc_wheel(staging / "wheels", wheel)
        (staging / "requirements.txt").write_text(
            f"# mdoc[serve] {__version__}'s runtime closure, pinned to the versions it was tested with\n"
            + "\n".join(pinned_requirements()) + "\n")
        version = staging / "models" / name / "1"
        shutil.copytree(artifact, version, ignore=shutil.ignore_patterns(".*"))
        read_manifest(version)  # the copy still matches its hashes
        (staging / "Dockerfile").write_text(dockerfile(name, PLATFORMS[arch], built.name))
        if out.exists():
            out.rmdir()
        staging.chmod(0o755)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
