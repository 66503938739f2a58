"""The bench page: the bundle's ONNX variants in onnxruntime-web, in headless Chromium.

What it reuses from the web deploy example (``deploy_examples/web``), so there is one server
and one way of starting the browser: ``serve.py --bench`` serves the bench page, onnxruntime-web's
``dist/`` and the bundle on 127.0.0.1, cross-origin isolated (COOP/COEP headers, so WebAssembly
threads exist); ``bench.mjs`` starts a fresh Chromium through ``browser.mjs`` (the launcher the
example's ``e2e.mjs`` uses) and speaks the bench worker's JSON-lines protocol, so browser rows
are loaded and measured in interleaved rounds exactly like the native ones
(``bench.process``). Timing happens inside the page (``performance.now()`` around each
``session.run``).

Needs node, the system Chromium (``$CHROMIUM``, else ``/usr/bin/chromium``) and the example's npm
packages (``npm ci`` in the web folder; ``$EDGEDISTILL_WEB_DIR`` points elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from edgedistill.errors import EdgeDistillError

__all__ = ["ENGINES", "web_dir", "browser_problem", "serve", "worker_command"]

ENGINES = ("wasm", "webgpu")
_PACKAGES = ("onnxruntime-web/dist/ort.wasm.min.mjs", "playwright-core/package.json")


def web_dir() -> Path:
    """The web example's folder: ``$EDGEDISTILL_WEB_DIR``, else the checkout's ``deploy_examples/web``."""
    configured = os.environ.get("EDGEDISTILL_WEB_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[3] / "deploy_examples" / "web"


def chromium_path() -> str:
    return os.environ.get("CHROMIUM", "/usr/bin/chromium")


def browser_problem() -> str | None:
    """Why the browser cannot be benchmarked here, naming what to install; None when it can."""
    web = web_dir()
    if not (web / "bench.mjs").is_file():
        return f"the web example is not at {web} (set EDGEDISTILL_WEB_DIR to deploy_examples/web of a checkout)"
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not Path(chromium_path()).exists():
        return f"no Chromium at {chromium_path()} (apt-get install chromium, or set CHROMIUM)"
    missing = [p.split("/")[0] for p in _PACKAGES if not (web / "node_modules" / p).exists()]
    if missing:
        return f"the npm packages {', '.join(missing)} are missing: run `npm ci` in {web}"
    return None


@contextlib.contextmanager
def serve(bundle_dir: Path) -> Iterator[str]:
    """The web example's server for ``bundle_dir`` (bench mode, cross-origin isolated) on a free
    port; yields its URL and stops it on exit."""
    from edgedistill.cleanup import start_child

    proc = start_child([sys.executable, str(web_dir() / "serve.py"), "--bundle", str(bundle_dir), "--bench",
                        "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("serving http://"):
            proc.wait(timeout=10)
            raise EdgeDistillError(f"the bench page server did not start: {(proc.stderr.read() or line).strip()}")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def worker_command(spec: dict[str, Any]) -> list[str]:
    """The command of a browser row's worker: ``node bench.mjs SPEC``."""
    import json

    return [shutil.which("node") or "node", str(web_dir() / "bench.mjs"), json.dumps(spec)]
