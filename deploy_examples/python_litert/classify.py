#!/usr/bin/env python3
"""Classify images by k-NN against a labeled gallery, with an edgedistill bundle's LiteRT model.

    pip install edgedistill ai-edge-litert   # the LiteRT interpreter; no torch needed
    python classify.py --bundle export/my_student --gallery gallery/ --images photo.jpg more/

Runs the bundle's ``litert_int8`` (or ``litert_fp32``) ``.tflite`` in the LiteRT interpreter
with the XNNPACK delegate: the file and the interpreter an Android app loads. Prints
``path<TAB>label`` per image (``--json`` for the votes and nearest gallery images). The app is
``edgedistill.runtime.app``; in your own code the same steps are::

    from edgedistill.runtime import open_embedder, read_manifest
    from edgedistill.runtime.gallery import Gallery, embed_paths

    manifest = read_manifest(bundle)                            # the contract, checked
    model = open_embedder(bundle, "litert_int8", threads=2)     # a LiteRT interpreter
    gallery = Gallery.embed(model, "gallery/", manifest.preprocessing.spec)
    queries = embed_paths(model, ["photo.jpg"], manifest.preprocessing.spec, batch_size=8)
    print(gallery.classify(queries, ["photo.jpg"])[0]["label"])
"""

import sys

from edgedistill.runtime.app import classify_main

if __name__ == "__main__":
    sys.exit(classify_main(sys.argv[1:], runtime="litert", description=__doc__.splitlines()[0]))
