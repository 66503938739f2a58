#!/usr/bin/env python3
"""Serve the browser example on http://127.0.0.1 (standard library only).

    python deploy_examples/web/serve.py --bundle export/my_student [--gallery-json gallery.json] [--port 8000]
    python deploy_examples/web/serve.py --bundle export/my_student --bench --port 0   # for bench --device browser

URL layout the page expects:

    /                 index.html, app.js, preprocess.mjs, style.css (this folder)
    /ort/...          onnxruntime-web's dist/ (node_modules/onnxruntime-web/dist, from `npm ci`)
    /bundle/...       the bundle directory (manifest.json and the model files)
    /gallery.json     the gallery embeddings (classify.py --gallery-json)

The page must come over http(s), not file://: browsers refuse to fetch the .wasm and the model
from file URLs. ``--port 0`` takes a free port; the first line printed is the URL.

``--bench`` serves for ``edgedistill bench --device browser`` (bench.html, no gallery needed)
and makes every page cross-origin isolated (``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp``): SharedArrayBuffer, and with it
onnxruntime-web's WebAssembly threads, exist only on such pages. ``--isolate`` adds those
headers alone.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".onnx": "application/octet-stream", ".css": "text/css",
         ".html": "text/html; charset=utf-8"}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from a few roots; nothing outside them is reachable."""

    mounts: dict[str, Path] = {}
    files: dict[str, Path] = {}

    def translate_path(self, path: str) -> str:
        rel = unquote(urlsplit(path).path)
        if rel in self.files:
            return str(self.files[rel])
        for prefix, root in self.mounts.items():
            if rel.startswith(prefix):
                target = (root / rel[len(prefix):]).resolve()
                if target == root or root in target.parents:
                    return str(target)
                return str(root / "__outside__")  # 404
        return str(HERE / "__missing__")

    def guess_type(self, path):  # type: ignore[override]
        return TYPES.get(Path(str(path)).suffix.lower()) or super().guess_type(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # a re-exported bundle shows at once
        if self.server.isolate:  # type: ignore[attr-defined]
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the edgedistill browser example.")
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (with manifest.json)")
    parser.add_argument("--gallery-json", type=Path, default=HERE / "gallery.json",
                        help="gallery embeddings written by classify.py --gallery-json (default: web/gallery.json)")
    parser.add_argument("--ort", type=Path, default=HERE / "node_modules" / "onnxruntime-web" / "dist",
                        help="onnxruntime-web's dist folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--isolate", action="store_true",
                        help="send COOP/COEP headers (cross-origin isolation: multi-threaded WebAssembly)")
    parser.add_argument("--bench", action="store_true",
                        help="serve for `edgedistill bench --device browser`: no gallery needed, isolated")
    args = parser.parse_args(argv)

    problems = []
    if not (args.bundle / "manifest.json").is_file():
        problems.append(f"{args.bundle} is not a bundle (no manifest.json)")
    if not args.bench and not args.gallery_json.is_file():
        problems.append(f"no gallery at {args.gallery_json}: run classify.py --gallery-json {args.gallery_json} first")
    if not (args.ort / "ort.wasm.min.mjs").is_file():
        problems.append(f"onnxruntime-web not found in {args.ort}: run `npm ci` in {HERE}")
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 2

    Handler.mounts = {"/ort/": args.ort.resolve(), "/bundle/": args.bundle.resolve(), "/": HERE}
    Handler.files = {"/gallery.json": args.gallery_json.resolve()}
    handler = functools.partial(Handler, directory=str(HERE))
    server = http.server.ThreadingHTTPServer((args.host, args.port), handler)
    server.verbose = args.verbose  # type: ignore[attr-defined]
    server.isolate = args.isolate or args.bench  # type: ignore[attr-defined]
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
