"""TensorFlow front doors end to end: tiny seeded Keras models as .keras, .h5, SavedModel and .tflite.

Each is converted by `mdoc import` and must compute what TensorFlow computes, in
onnxruntime and (for one) in an mdoc-compiled artifact. Skipped where the
`mdoc[tensorflow]` extra is not installed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.slow
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")


def _keras_model():
    keras.utils.set_random_seed(0)
    image = keras.Input((12, 12, 3), name="image")
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(y)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(image, keras.layers.Dense(5, name="logits")(y))


def _ort(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def model():
    return _keras_model()


@pytest.fixture
def image():
    return np.random.default_rng(1).standard_normal((3, 12, 12, 3)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file(mdoc_cli, tmp_path, model, image, suffix):
    src, out = tmp_path / f"m{suffix}", tmp_path / "m.onnx"
    model.save(src)
    r = mdoc_cli("import", src, "-o", out, "--dynamic", "image:0=N")
    assert r.code == 0, r.err
    assert "image: float32[N,12,12,3]" in r.out
    np.testing.assert_allclose(_ort(out, {"image": image}), model(image).numpy(), rtol=1e-4, atol=1e-5)


def test_keras_input_override(mdoc_cli, tmp_path, model):
    src, out = tmp_path / "m.keras", tmp_path / "m.onnx"
    model.save(src)
    assert mdoc_cli("import", src, "-o", out, "--input", "image=1x12x12x3/float32").code == 0
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 12, 12, 3]
    r = mdoc_cli("import", src, "-o", out, "--input", "pixels=1x12x12x3")
    assert r.code == 2 and "the model's inputs are image" in r.err


def test_keras_compiled_by_mdoc(tmp_path, model, image):
    import mdoc

    src = tmp_path / "m.keras"
    model.save(src)
    run = mdoc.load(mdoc.compile(src, "x86", tmp_path / "m.x86", dims={}, show_progress=False))
    got = run(image=image[:1])
    np.testing.assert_allclose(next(iter(got.values())), model(image[:1]).numpy(), rtol=1e-4, atol=1e-5)


def test_saved_model(mdoc_cli, tmp_path, model, image):
    src, out = tmp_path / "saved", tmp_path / "m.onnx"
    model.export(str(src), verbose=False)
    r = mdoc_cli("import", src, "-o", out, "--dynamic", "image:0=batch")
    assert r.code == 0, r.err
    np.testing.assert_allclose(_ort(out, {"image": image}), model(image).numpy(), rtol=1e-4, atol=1e-5)
    r = mdoc_cli("import", src, "-o", out, "--signature", "nope")
    assert r.code == 2 and "has no signature 'nope'" in r.err


def test_tflite(mdoc_cli, tmp_path, model, image):
    src, out = tmp_path / "m.tflite", tmp_path / "m.onnx"
    src.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    r = mdoc_cli("import", src, "-o", out)
    assert r.code == 0, r.err
    name = onnx.load(out).graph.input[0].name
    interpreter = tf.lite.Interpreter(model_path=str(src))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], image.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(_ort(out, {name: image}), expected, rtol=1e-4, atol=1e-5)
    r = mdoc_cli("import", src, "-o", out, "--input", "x=1x2")
    assert r.code == 2 and "fixes its input shapes" in r.err


def test_corrupt_tflite_body(mdoc_cli, tmp_path):
    src, out = tmp_path / "m.tflite", tmp_path / "m.onnx"
    src.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4)
    r = mdoc_cli("import", src, "-o", out)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "m.tflite: tf2onnx could not convert it" in r.err and not out.exists()


def test_bench_and_compare_take_a_keras_file(mdoc_cli, tmp_path, model):
    src, out = tmp_path / "m.keras", tmp_path / "m.onnx"
    model.save(src)
    assert mdoc_cli("import", src, "-o", out).code == 0
    assert mdoc_cli("compare", src, out).code == 0
    r = mdoc_cli("bench", src, "--rounds", "1", "--calls", "1", "--json")
    assert r.code == 0 and '"agrees": true' in r.out, r.err
