"""`mdoc serve --ray`: two Ray Serve replicas on a local cluster answer the same KServe v2 REST protocol.

Slow (a local Ray cluster and two replicas take 10-30 s to start on two cores) and needs
`mdoc[ray]`; skipped without Ray. tritonclient's HTTP client must get `mdoc run`'s outputs
through Ray's proxy, bad requests must keep their 4xx, and Ray must be running two replicas.
"""

from __future__ import annotations

import numpy as np
import onnx
import psutil
import pytest

pytest.importorskip("tvm")
pytest.importorskip("ray.serve")
http = pytest.importorskip("tritonclient.http")

from conftest import tiny_model  # noqa: E402

from mdoc.serving.launch import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow


def test_two_ray_replicas_serve_the_v2_protocol(tmp_path):
    import mdoc

    onnx.save(tiny_model(), tmp_path / "tiny.onnx")
    art = mdoc.compile(tmp_path / "tiny.onnx", "x86", tmp_path / "tiny.x86", show_progress=False)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    expected = mdoc.load(art)(x=x)["y"]
    with ServerProcess(art, "--ray", "--workers", "2", "--quiet", log=tmp_path / "serve.log",
                       ready_timeout=180) as server:
        client = http.InferenceServerClient(server.url)
        assert client.is_server_ready() and client.is_model_ready("tiny")
        assert client.get_model_metadata("tiny")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        for _ in range(10):
            inp = http.InferInput("x", [3, 4], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("tiny", [inp]).as_numpy("y"), expected)
        with pytest.raises(Exception, match=r"\[400\] tensor 'x': datatype FP64, but model 'tiny' takes FP32"):
            bad = http.InferInput("x", [3, 4], "FP64")
            bad.set_data_from_numpy(x.astype(np.float64))
            client.infer("tiny", [bad])
        replicas = [p for p in psutil.process_iter(["cmdline"]) if "ray::ServeReplica:mdoc:mdoc" in
                    " ".join(p.info["cmdline"] or [])]
        assert len(replicas) == 2
