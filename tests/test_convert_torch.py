"""PyTorch front doors end to end: tiny seeded modules as .pt2 and TorchScript files, and mdoc.from_torch.

Each must compute what PyTorch computes, in onnxruntime and (for one) in an
mdoc-compiled artifact, with the dynamic dims named as asked. Skipped where torch
(`pip install torch==2.13.0`) or the `mdoc[torch]` extra is not installed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, image):
        return self.fc(torch.relu(self.bn(self.conv(image))).mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net


def _image(batch):
    return torch.from_numpy(np.random.default_rng(batch).standard_normal((batch, 3, 10, 10)).astype(np.float32))


def _ort(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _dims(path):
    return [d.dim_param or d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]


def _check(net, path, name="image", batches=(1, 3)):
    for b in batches:
        x = _image(b)
        with torch.no_grad():
            expected = net(x).numpy()
        np.testing.assert_allclose(_ort(path, {name: x.numpy()}), expected, rtol=1e-4, atol=1e-5)


def test_exported_program(mdoc_cli, tmp_path, net):
    src, out = tmp_path / "m.pt2", tmp_path / "m.onnx"
    torch.export.save(torch.export.export(net, (_image(2),), dynamic_shapes={"image": {0: torch.export.Dim("b")}}),
                      src)
    r = mdoc_cli("import", src, "-o", out, "--dynamic", "image:0=batch")
    assert r.code == 0, r.err
    assert _dims(out) == ["batch", 3, 10, 10]
    _check(net, out)


def test_exported_program_fixed_axis(mdoc_cli, tmp_path, net):
    """A batch fixed at export stays fixed (the graph bakes it in); --dynamic on it says how to re-export."""
    src, out = tmp_path / "m.pt2", tmp_path / "m.onnx"
    torch.export.save(torch.export.export(net, (_image(2),)), src)
    assert mdoc_cli("import", src, "-o", out).code == 0
    assert _dims(out) == [2, 3, 10, 10]
    _check(net, out, batches=(2,))
    out.unlink()
    r = mdoc_cli("import", src, "-o", out, "--dynamic", "image:0=batch")
    assert r.code == 2 and "axis 0 of 'image' was fixed to 2" in r.err, r.err
    assert "torch.export.Dim('batch')" in r.err and not out.exists()


def test_torchscript(mdoc_cli, tmp_path, net):
    src, out = tmp_path / "m.pt", tmp_path / "m.onnx"
    torch.jit.save(torch.jit.script(net), src)
    r = mdoc_cli("import", src, "-o", out)
    assert r.code == 2 and "give --input NAME=SHAPE/DTYPE for image" in r.err and not out.exists()
    r = mdoc_cli("import", src, "-o", out, "--input", "image=2x3x10x10/float32", "--dynamic", "image:0=batch")
    assert r.code == 0, r.err
    assert _dims(out) == ["batch", 3, 10, 10]
    assert [o.name for o in onnx.load(out).graph.output] == ["output_0"]
    _check(net, out)


def test_from_torch_compiled_by_mdoc(tmp_path, net):
    import mdoc

    model = mdoc.from_torch(net, (_image(2),), dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    assert [str(d) for d in model.graph.inputs[0].type.shape] == ["batch", "3", "10", "10"]
    run = mdoc.load(mdoc.compile(model, "x86", tmp_path / "m.x86", dims={"batch": 3}, show_progress=False))
    with torch.no_grad():
        expected = net(_image(3)).numpy()
    np.testing.assert_allclose(next(iter(run(image=_image(3).numpy()).values())), expected, rtol=1e-4, atol=1e-5)
    path = mdoc.from_torch(net, _image(1), output=tmp_path / "f.onnx")
    _check(net, path, batches=(1,))


def test_export_failure_is_one_line(mdoc_cli, tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x[x > 0].reshape(2, -1)  # a shape decided by the data

    src, out = tmp_path / "m.pt", tmp_path / "m.onnx"
    torch.jit.save(torch.jit.script(DataDependent()), src)
    r = mdoc_cli("import", src, "-o", out, "--input", "x=4x4", "--opset", "7")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "m.pt: torch.onnx could not convert it" in r.err and not out.exists()
