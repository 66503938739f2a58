#!/usr/bin/env python3
"""Classify images by k-NN against a labeled gallery, with an edgedistill bundle and ONNX Runtime.

    python classify.py --bundle export/my_student --gallery gallery/ --images photo.jpg more/

Prints ``path<TAB>label`` per image (``--json`` for the votes and nearest gallery images).
Imports numpy, Pillow, onnxruntime and ``edgebundle.py`` (beside this file) only: no torch,
no edgedistill. Copy both files into your app.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import edgebundle


class OnnxModel:
    """The variant's .onnx in an InferenceSession: (B, 3, H, W) float32 -> (B, D) float32."""

    def __init__(self, bundle: Path, manifest: dict[str, Any], variant: str, threads: int | None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        path = bundle / manifest["variants"][variant]["file"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise edgebundle.BundleError(f"ONNX Runtime cannot load {path}: {exc}") from None
        self.input = manifest["input"]["name"]
        self.output = manifest["outputs"][0]["name"]  # "embedding"
        self.dtype = np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output], {self.input: batch.astype(self.dtype, copy=False)})
        return out


if __name__ == "__main__":
    sys.exit(edgebundle.main(sys.argv[1:], "onnx", OnnxModel, __doc__))
