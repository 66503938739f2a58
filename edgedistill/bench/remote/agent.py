"""The device's side of ``bench --device ssh://...``: run there by the device's Python, sent over
SSH as source (``python3 -c``), never installed. Self-contained on purpose: the standard
library only, no edgedistill, and Python 3.8's grammar (what a Raspberry Pi OS or Ubuntu 20.04
ships), so it runs before anything is copied. Each call reads one JSON request line from stdin
(byte by byte: what follows on stdin belongs to the next reader) and answers one JSON line:

    {"cmd": "probe", "modules": [...], "packages": [...]}
        -> the interpreter, machine, CPU, memory, temporary directory and its free space,
           which runtime modules are importable (looked up, not imported) and package versions
    {"cmd": "receive", "prefix": "edgedistill-bench-", "bytes": N, "files": {relpath: sha256}}
        then a tar stream -> {"dir": ...}: a fresh temporary directory holding exactly those
           files, each checked against its sha256; on any failure the directory is removed
           again and the answer says why ({"error": ..., "space": bool})
    {"cmd": "worker", "dir": ..., "env": {...}}
        -> becomes the bench worker (``dir/worker.py``, which reads its spec from stdin next)
    {"cmd": "cleanup", "dir": ..., "prefix": ...}
        -> {"removed": bool}: the temporary directory and everything in it

Nothing is written outside the temporary directory: workers get ``TMPDIR`` and
``XDG_CACHE_HOME`` inside it and write no bytecode.
"""

import errno
import hashlib
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile

# write errors that mean "no room" rather than "not allowed"
SPACE_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
MARGIN = 1 << 20  # free space kept beyond the files: the workers' own small writes


def _request():
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    return json.loads(line.decode("utf-8") or "{}")


def _answer(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _cpuinfo(limit=200):
    """The first processor's block of /proc/cpuinfo (model name, flags or Features) and the
    global lines after the last block (ARM boards: Hardware, Model); never a serial number."""
    try:
        with open("/proc/cpuinfo") as handle:
            blocks = handle.read().split("\n\n")
    except OSError:
        return None
    blocks = [b for b in blocks if b.strip()]
    if not blocks:
        return None
    chosen = blocks[:1] + ([blocks[-1]] if len(blocks) > 1 and "processor" not in blocks[-1] else [])
    lines = [ln for b in chosen for ln in b.splitlines() if not ln.lower().startswith("serial")]
    return "\n".join(lines[:limit])


def _meminfo():
    out = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _os_name():
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def probe(request):
    import importlib.util

    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8 never gets here (the bootstrap refuses it)
        metadata = None
    versions = {}
    for package in request.get("packages", []):
        try:
            versions[package] = metadata.version(package) if metadata else None
        except Exception:
            versions[package] = None
    modules = {}
    for module in request.get("modules", []):
        try:
            modules[module] = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            modules[module] = False
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    tmp = tempfile.gettempdir()
    try:
        free = shutil.disk_usage(tmp).free
    except OSError:
        free = None
    memory = _meminfo()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {"python": platform.python_version(), "executable": sys.executable, "arch": platform.machine(),
            "system": platform.system(), "release": platform.release(), "os_name": _os_name(),
            "processor": platform.processor(), "cpuinfo": _cpuinfo(), "logical_cpus": os.cpu_count(),
            "usable_cpus": usable, "memory_bytes": memory.get("MemTotal"),
            "available_bytes": memory.get("MemAvailable"), "load_average": load, "tmp": tmp, "tmp_free": free,
            "modules": modules, "versions": versions}


def _safe_name(name, expected):
    parts = name.split("/")
    return name in expected and not name.startswith("/") and ".." not in parts


def _extract(folder, expected):
    """The tar stream on stdin into ``folder``: only the expected names, hashed as written."""
    seen = {}
    with os.fdopen(0, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if not member.isfile() or not _safe_name(member.name, expected):
                raise ValueError("unexpected entry in the stream: %s" % member.name)
            target = os.path.join(folder, *member.name.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            digest = hashlib.sha256()
            source = archive.extractfile(member)
            with open(target, "wb") as out:
                while True:
                    chunk = source.read(1 << 20)
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
            seen[member.name] = digest.hexdigest()
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise ValueError("the stream ended before %s arrived" % ", ".join(missing))
    wrong = sorted(n for n, sha in expected.items() if sha and seen[n] != sha)
    if wrong:
        raise ValueError("sha256 mismatch after copying %s" % ", ".join(wrong))


def receive(request):
    needed = int(request.get("bytes", 0))
    tmp = tempfile.gettempdir()
    try:
        free = shutil.disk_usage(tmp).free
    except OSError:
        free = None
    if free is not None and free < needed + MARGIN:
        return {"error": "%s has %d bytes free, the files need %d" % (tmp, free, needed + MARGIN), "space": True,
                "free": free, "needed": needed + MARGIN, "tmp": tmp}
    try:
        folder = tempfile.mkdtemp(prefix=request["prefix"])
    except OSError as exc:
        return {"error": "cannot create a folder in %s: %s" % (tmp, exc.strerror or exc),
                "space": exc.errno in SPACE_ERRNOS, "tmp": tmp}
    try:
        _extract(folder, request["files"])
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return {"error": "writing into %s failed: %s" % (tmp, exc.strerror or exc), "space": exc.errno in SPACE_ERRNOS,
                "tmp": tmp, "free": free, "needed": needed}
    except (ValueError, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return {"error": str(exc) or type(exc).__name__, "space": False, "tmp": tmp}
    return {"dir": folder}


def _ours(folder, prefix):
    """Only a folder this agent made: directly in the temporary directory, with our prefix."""
    parent = os.path.realpath(os.path.dirname(folder))
    return os.path.basename(folder).startswith(prefix) and parent == os.path.realpath(tempfile.gettempdir())


def cleanup(request):
    folder = request["dir"]
    if not _ours(folder, request["prefix"]):
        return {"removed": False, "error": "not a folder of this tool: %s" % folder}
    shutil.rmtree(folder, ignore_errors=True)
    return {"removed": not os.path.exists(folder)}


def worker(request):
    """Become the bench worker in ``dir`` (stdin, with its spec as the next line, is handed on)."""
    os.environ.update(request.get("env", {}))
    os.chdir(request["dir"])
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, os.path.join(request["dir"], "worker.py")])


def main():
    request = _request()
    command = request.get("cmd")
    if command == "worker":
        return worker(request)
    handlers = {"probe": probe, "receive": receive, "cleanup": cleanup}
    if command not in handlers:
        _answer({"error": "unknown request %r" % command})
        return 2
    _answer(handlers[command](request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
