#!/usr/bin/env python3
"""Classify images by k-NN against a labeled gallery, with an edgedistill bundle and OpenVINO.

    pip install "edgedistill[openvino]"   # the torch-free runtime and OpenVINO; no torch
    python classify.py --bundle export/my_student --gallery gallery/ --images photo.jpg more/

Prints ``path<TAB>label`` per image (``--json`` for the votes and nearest gallery images).
The app is ``edgedistill.runtime.app``. The variant's IR is compiled with the precision hint
the bundle recorded (``f32``, or ``bf16`` for INT8 exported on a CPU with native bf16):
without it OpenVINO runs an "FP32" model in bf16 on CPUs that have bf16, which is not what
the bundle validated. In your own code::

    from edgedistill.runtime import open_embedder
    model = open_embedder(bundle, "openvino_int8", threads=2)   # the recorded hint applied
    embeddings = model.embed(batch)                             # (B, 3, H, W) float32 -> (B, D)
"""

import sys

from edgedistill.runtime.app import classify_main

if __name__ == "__main__":
    sys.exit(classify_main(sys.argv[1:], runtime="openvino", description=__doc__.splitlines()[0]))
