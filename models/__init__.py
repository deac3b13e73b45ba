"""Reference models built in plain ONNX with seeded random weights: no downloads, no torch.

``build("resnet18")`` or the builder itself (``resnet18(image_size=64)``)
returns a checked ``onnx.ModelProto``; ``ZOO`` lists them with the sizes of a
small variant for tests, and ``example_inputs(model)`` makes valid seeded
inputs for any of them.
"""

from mdoc.models.bert import bert_encoder
from mdoc.models.detector import detector_head
from mdoc.models.mobilenet import mobilenetv2
from mdoc.models.ppocr import ppocr_rec
from mdoc.models.recurrent import lstm_seq
from mdoc.models.resnet import resnet18, resnet50
from mdoc.models.sample import sample
from mdoc.models.silero_vad import silero_vad
from mdoc.models.vit import vit_tiny
from mdoc.models.yolo import yolo_detector
from mdoc.models.zoo import ZOO, ZooEntry, build, example_inputs, list_models

__all__ = [
    "ZOO",
    "ZooEntry",
    "bert_encoder",
    "build",
    "detector_head",
    "example_inputs",
    "list_models",
    "lstm_seq",
    "mobilenetv2",
    "ppocr_rec",
    "resnet18",
    "resnet50",
    "sample",
    "silero_vad",
    "vit_tiny",
    "yolo_detector",
]
