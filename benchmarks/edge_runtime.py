"""The smallest install that runs an mdoc artifact on an edge board, measured in MB, and checked against mdoc.load.

An artifact is a TVM library plus a manifest; running it needs only TVM's runtime, not mdoc,
onnx, onnxruntime or TVM's compiler. This script makes a fresh venv, installs exactly the
pinned apache-tvm, apache-tvm-ffi, numpy and typing_extensions with --no-deps, deletes
libtvm_compiler.so (the compiler: most of the wheel), runs a freshly compiled artifact
there with TVM_USE_RUNTIME_LIB=1 through `tvm.runtime.vm.VirtualMachine`, and checks the
output equals `mdoc.load(artifact)`'s. It prints the size of what was installed, per
package, with and without the compiler library.

    python benchmarks/edge_runtime.py

Exit status 1 when the runtime-only output differs from mdoc's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

PACKAGES = ["apache-tvm", "apache-tvm-ffi", "numpy", "typing_extensions"]

RUNNER = """\
import sys, numpy as np, tvm
from tvm.runtime.vm import VirtualMachine
vm = VirtualMachine(tvm.runtime.load_module(sys.argv[1] + "/model.so"), tvm.cpu())
x = np.load(sys.argv[2])
np.save(sys.argv[3], vm["main"](tvm.runtime.tensor(x))[0].numpy())
"""


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def main() -> int:
    import onnx

    import mdoc
    from mdoc.models.sample import sample

    pins = [f"{p}=={metadata.version(p)}" for p in PACKAGES]
    with tempfile.TemporaryDirectory(prefix="mdoc-edge-") as tmp:
        tmp = Path(tmp)
        onnx.save(sample(batch="N"), tmp / "cnn.onnx")
        art = mdoc.compile(tmp / "cnn.onnx", "x86", tmp / "cnn.x86", show_progress=False)
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        np.save(tmp / "x.npy", x)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
        site = Path(subprocess.run([str(tmp / "venv" / "bin" / "python"), "-c",
                                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), *pins],
                       check=True, stderr=subprocess.DEVNULL)
        full = size_mb(site)
        compiler = next(site.rglob("libtvm_compiler.so"))
        compiler_mb = compiler.stat().st_size / 1e6
        compiler.unlink()
        (tmp / "run.py").write_text(RUNNER)
        done = subprocess.run([str(tmp / "venv" / "bin" / "python"), str(tmp / "run.py"), str(art), str(tmp / "x.npy"),
                               str(tmp / "y.npy")], capture_output=True, text=True,
                              env={"TVM_USE_RUNTIME_LIB": "1", "PATH": "/usr/bin:/bin"})
        if done.returncode:
            print(f"runtime-only run failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        diff = float(np.abs(np.load(tmp / "y.npy") - mdoc.load(art)(image=x)["logits"]).max())
        print(f"installed {', '.join(pins)} (--no-deps) into a venv without pip")
        for dist in sorted(metadata.distributions(path=[str(site)]), key=lambda d: d.metadata["Name"]):
            files = [Path(dist.locate_file(f)) for f in dist.files or []]
            mb = sum(f.stat().st_size for f in files if f.is_file()) / 1e6
            print(f"  {dist.metadata['Name']:<18} {mb:7.1f} MB")
        print(f"  all               {full:7.1f} MB with libtvm_compiler.so ({compiler_mb:.1f} MB), "
              f"{size_mb(site):.1f} MB without")
        print(f"  the artifact      {size_mb(art):7.2f} MB (sample CNN)")
        print(f"runtime-only output vs mdoc.load: max |diff| {diff:.3g}")
        shutil.rmtree(tmp / "venv")
        return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
