#!/usr/bin/env python3
"""Classify images by k-NN against a labeled gallery, with an edgedistill bundle and ONNX Runtime.

    pip install edgedistill        # the torch-free runtime: numpy, Pillow, onnxruntime; no torch
    python classify.py --bundle export/my_student --gallery gallery/ --images photo.jpg more/

Prints ``path<TAB>label`` per image (``--json`` for the votes and nearest gallery images).
The app is ``edgedistill.runtime.app``; in your own code the same steps are::

    from edgedistill.runtime import open_embedder, read_manifest
    from edgedistill.runtime.gallery import Gallery, embed_paths

    manifest = read_manifest(bundle)                         # the contract, checked
    model = open_embedder(bundle, "onnx_int8", threads=2)    # an ONNX Runtime session
    gallery = Gallery.embed(model, "gallery/", manifest.preprocessing.spec)
    queries = embed_paths(model, ["photo.jpg"], manifest.preprocessing.spec, batch_size=8)
    print(gallery.classify(queries, ["photo.jpg"])[0]["label"])
"""

import sys

from edgedistill.runtime.app import classify_main

if __name__ == "__main__":
    sys.exit(classify_main(sys.argv[1:], runtime="onnxruntime", description=__doc__.splitlines()[0]))
