"""edgedistill: self-supervised ViT teacher -> ViT-Tiny student -> ONNX/OpenVINO on the edge."""

__version__ = "0.1.0"
