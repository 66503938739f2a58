#!/usr/bin/env python3
"""Classify images by k-NN against a labeled gallery, with an edgedistill bundle and OpenVINO.

    python classify.py --bundle export/my_student --gallery gallery/ --images photo.jpg more/

Prints ``path<TAB>label`` per image (``--json`` for the votes and nearest gallery images).
Imports numpy, Pillow, openvino and ``edgebundle.py`` (beside this file) only: no torch,
no edgedistill. Copy both files into your app.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

import edgebundle


class OpenVinoModel:
    """The variant's IR (.xml + .bin) compiled for ``device``: (B, 3, H, W) float32 -> (B, D).

    The precision hint is the one the bundle recorded (``f32``, or ``bf16`` for INT8 exported
    on a CPU with native bf16): without it OpenVINO runs an "FP32" model in bf16 on CPUs that
    have bf16, which is not what the bundle validated."""

    def __init__(self, bundle: Path, manifest: dict[str, Any], variant: str, threads: int | None,
                 device: str = "CPU") -> None:
        var = manifest["variants"][variant]
        xml, weights = edgebundle.variant_files(manifest, bundle, variant)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": var.get("inference_precision_hint", "f32")}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(str(xml), str(weights)), device, config)
        except Exception as exc:  # RuntimeError with a long message
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise edgebundle.BundleError(f"OpenVINO cannot compile {xml} for {device}: {first}") from None
        self.output = compiled.output(manifest["outputs"][0]["name"])  # "embedding"
        self.request = compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: batch})[self.output], copy=True)  # the request reuses its buffer


if __name__ == "__main__":
    sys.exit(edgebundle.main(sys.argv[1:], "openvino", OpenVinoModel, __doc__))
