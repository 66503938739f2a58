#!/usr/bin/env python3
"""Classify images by k-NN against a labeled gallery, with an edgedistill bundle's ExecuTorch program.

    pip install "edgedistill[executorch]"   # ExecuTorch's Python runtime (it loads libtorch)
    python classify.py --bundle export/my_student --gallery gallery/ --images photo.jpg more/

Runs the bundle's ``executorch_int8`` (or ``executorch_fp32``) ``.pte`` with the XNNPACK
delegate, the kernels ExecuTorch runs on Android, iOS and Arm Linux. Prints ``path<TAB>label``
per image (``--json`` for the votes and nearest gallery images). The app is
``edgedistill.runtime.app``; in your own code the same steps are::

    from edgedistill.runtime import open_embedder, read_manifest
    from edgedistill.runtime.gallery import Gallery, embed_paths

    manifest = read_manifest(bundle)                               # the contract, checked
    model = open_embedder(bundle, "executorch_int8", threads=2)    # an ExecuTorch program
    gallery = Gallery.embed(model, "gallery/", manifest.preprocessing.spec)
    queries = embed_paths(model, ["photo.jpg"], manifest.preprocessing.spec, batch_size=8)
    print(gallery.classify(queries, ["photo.jpg"])[0]["label"])
"""

import sys

from edgedistill.runtime.app import classify_main

if __name__ == "__main__":
    sys.exit(classify_main(sys.argv[1:], runtime="executorch", description=__doc__.splitlines()[0]))
