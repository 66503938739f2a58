"""``classify``: images -> labels by k-NN against a labeled gallery, with a bundle. The app the
Python deploy examples run (``deploy_examples/python_*/classify.py``), on the torch-free
runtime: manifest (sha256 verified), preprocessing, the runtime's embedder (its package in the
registry), the gallery and its k-NN (``runtime.gallery``).

    python classify.py --bundle export/my_student --gallery gallery/ --images photo.jpg more/

Prints ``path<TAB>label`` per image (``--json``: the votes and nearest gallery images).
Errors print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgedistill.errors import EdgeDistillError

__all__ = ["classify_main"]


def _arguments(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (with manifest.json)")
    parser.add_argument("--gallery", required=True, type=Path, help="labeled folder: <class>/<image>")
    parser.add_argument("--images", nargs="*", default=[], help="image files or folders to classify")
    parser.add_argument("--variant", default=None, help="bundle variant (default: the one the manifest recommends for this runtime)")
    parser.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    parser.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T) (default 0.07)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of path<TAB>label lines")
    parser.add_argument("--cache", action="store_true",
                        help="keep the gallery embeddings in <gallery>/.embeddings-<key>.npz (key: model sha256, "
                             "preprocessing, image list)")
    parser.add_argument("--gallery-json", type=Path, default=None,
                        help="also write the gallery embeddings as JSON (for the C++ and web examples)")
    args = parser.parse_args(argv)
    if args.k < 1 or args.temperature <= 0 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--k, --batch-size and --threads must be >= 1 and --temperature > 0")
    if not args.images and args.gallery_json is None:
        parser.error("nothing to do: pass --images and/or --gallery-json")
    return args


def _classify(args: argparse.Namespace, runtime: str) -> dict[str, Any] | None:
    from edgedistill.runtime import registry
    from edgedistill.runtime.embedders import open_embedder
    from edgedistill.runtime.gallery import Gallery, embed_paths, expand_images
    from edgedistill.runtime.manifest import pick_variant, read_manifest, verify_variant

    manifest = read_manifest(args.bundle)
    variant = pick_variant(manifest, str(registry.get(runtime).format), args.variant)
    hashes = verify_variant(manifest, args.bundle, variant)  # checked against the manifest
    spec = manifest.preprocessing.spec
    shape = manifest.input.shape
    batch_size = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else args.batch_size  # a static batch
    model = open_embedder(args.bundle, variant, threads=args.threads, verify=False)  # verified above
    queries = expand_images(args.images)
    started = time.perf_counter()
    gallery = Gallery.embed(model, args.gallery, spec, batch_size=batch_size,
                            cache_key=":".join(hashes) if args.cache else None)
    gallery_seconds = time.perf_counter() - started
    if args.gallery_json is not None:
        gallery.write_json(args.gallery_json, manifest, variant, hashes[0])
    if not queries:
        print(f"wrote {args.gallery_json} ({len(gallery.paths)} images, {len(gallery.classes)} classes)",
              file=sys.stderr)
        return None
    started = time.perf_counter()
    feats = embed_paths(model, queries, spec, batch_size)
    return {"bundle": str(args.bundle), "variant": variant, "k": min(args.k, len(gallery.paths)),
            "temperature": args.temperature,
            "gallery": {"path": str(args.gallery), "images": len(gallery.paths), "classes": gallery.classes,
                        "seconds": gallery_seconds},
            "seconds": time.perf_counter() - started,
            "predictions": gallery.classify(feats, queries, k=args.k, temperature=args.temperature)}


def classify_main(argv: list[str] | None, runtime: str, description: str | None = None) -> int:
    """The whole of a ``classify.py``; ``runtime`` names a runtime of the registry that builds a format."""
    args = _arguments(argv, description or f"Classify images by k-NN with an edgedistill bundle on {runtime}.")
    try:
        result = _classify(args, runtime)
    except EdgeDistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result is None:
        return 0
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for prediction in result["predictions"]:
            print(f"{prediction['path']}\t{prediction['label']}")
    return 0
