"""Reaching the model hubs: whether a download can start at all (a host or proxy that does not
answer), the Hugging Face hub's offline switch and its cache folder, read at call time."""

from __future__ import annotations

import os
from pathlib import Path

HUB_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT = 5.0  # seconds; a download client retries for about a minute offline


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why a download from ``url`` cannot start (its host, or the HTTPS proxy, refuses or does
    not answer a TCP connection within ``timeout``, or does not resolve); None when it can."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        return f"{host} is unreachable: {reason}"
    return None


def hf_offline() -> bool:
    """The Hugging Face hub's offline mode (``HF_HUB_OFFLINE``) is set."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read now (huggingface_hub fixes its constants at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface" / "hub"
