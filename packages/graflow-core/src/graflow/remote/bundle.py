"""The runner bundle: everything a remote Python needs to run a task, in one zip file.

The bundle holds a small bootstrap (``__main__.py``), the pure-Python ``graflow`` package and the
``cloudpickle`` and ``pluggy`` packages this host uses, so the remote side needs nothing but a
``python3``: no network, no pip. ``python3 <bundle>`` runs it (Python executes zip files with a
``__main__.py``), with bytecode for this interpreter next to the sources so a cold start does not
compile anything. ``digest`` is the sha256 of the archive's bytes: a remote host or container that
already has a file of that name has this exact runner.
"""

from __future__ import annotations

import hashlib
import importlib._bootstrap_external
import importlib.util
import io
import os
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# The bootstrap is deliberately written for any Python 3 (no f-strings, no annotations): it must be
# able to report the remote interpreter's version even when that version is too old to import
# graflow, so the host can refuse with a clear message instead of a SyntaxError.
_BOOTSTRAP = """\
import json
import os
import struct
import sys


def _main():
    proto_out = os.fdopen(os.dup(1), "wb", 0)
    proto_in = os.fdopen(os.dup(0), "rb", 0)
    # The task's own prints go to stderr, which the host streams to its log; stdin is closed to it.
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:
        pass
    try:
        import cloudpickle
        cloudpickle_version = cloudpickle.__version__
    except Exception as exc:
        cloudpickle_version = "unavailable (%s)" % (exc,)
    hello = {
        "python": list(sys.version_info[:3]),
        "implementation": sys.implementation.name,
        "cloudpickle": cloudpickle_version,
        "pid": os.getpid(),
        "executable": sys.executable,
    }
    override = os.environ.get("GRAFLOW_RUNNER_HELLO_OVERRIDE")
    if override:
        hello.update(json.loads(override))
    body = json.dumps(hello).encode("utf-8")
    proto_out.write(struct.pack(">Ic", len(body), b"H") + body)
    if tuple(sys.version_info[:2]) < (3, 10):
        proto_in.read(1)
        return 3
    from graflow.remote.runner import serve
    return serve(proto_in, proto_out)


sys.exit(_main())
"""

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class RunnerBundle:
    """The runner archive: ``data`` to deliver, ``digest`` naming it, ``filename`` to store it under."""

    data: bytes
    digest: str

    @property
    def filename(self) -> str:
        return f"graflow-runner-{self.digest[:16]}.pyz"

    def command(self, python: str, path: str) -> list[str]:
        """The argv that starts the runner stored at ``path`` with the interpreter ``python``."""
        return [python, "-u", path]


def _package_files(module: ModuleType) -> list[tuple[str, Path]]:
    """(archive name, file) for every source file of a package, relative to its parent folder."""
    root = Path(module.__file__ or "").resolve().parent
    base = root.parent
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed", ".json", ".lua"):
            files.append((path.relative_to(base).as_posix(), path))
    return files


def _compiled(name: str, source: bytes) -> bytes:
    """``source`` compiled for this interpreter as an unchecked hash-based .pyc.

    A runner starts in a fresh interpreter every time (one per cold task); without bytecode in the
    archive it would compile graflow from source at every start. The runner must have this
    host's Python minor version anyway (the handshake checks it); another interpreter ignores the
    .pyc files (wrong magic number) and reads the sources next to them.
    """
    code = compile(source, name, "exec", dont_inherit=True)
    source_hash = importlib.util.source_hash(source)
    return importlib._bootstrap_external._code_to_hash_pyc(code, source_hash, False)


def _sources() -> tuple[list[tuple[str, bytes]], str]:
    """The archive's source entries and their digest (with this interpreter's bytecode tag)."""
    import cloudpickle
    import pluggy

    import graflow

    sources: list[tuple[str, bytes]] = [("__main__.py", _BOOTSTRAP.encode())]
    for module in (graflow, cloudpickle, pluggy):
        sources.extend((name, path.read_bytes()) for name, path in _package_files(module))
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    for name, data in sources:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return sources, digest.hexdigest()


def _archive(sources: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sources:
            entries = [(name, data)]
            if name.endswith(".py") and name != "__main__.py":
                entries.append((name + "c", _compiled(name, data)))
            for entry_name, entry_data in entries:
                info = zipfile.ZipInfo(entry_name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, entry_data)
    return buffer.getvalue()


def build_bundle() -> RunnerBundle:
    """Build the archive from the packages this process has imported (not cached)."""
    sources, _ = _sources()
    data = _archive(sources)
    return RunnerBundle(data=data, digest=hashlib.sha256(data).hexdigest())


def cache_dir() -> Path:
    """Where runner files are kept on this machine (``GRAFLOW_CACHE_DIR``, else ``~/.cache/graflow``)."""
    configured = os.environ.get("GRAFLOW_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graflow"


def store_once(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name`` unless that file exists; never replace an existing file.

    Files are named by their content, so an existing file is the right one; replacing it would
    pull it from under runners that read it lazily (zip imports reopen the archive). The data is
    written to a temporary file and hard-linked into place, so readers never see a partial file.
    """
    path = folder / name
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process stored it first
    finally:
        os.unlink(tmp)
    return path


def _load_or_build() -> RunnerBundle:
    """The bundle, with the same bytes for every process of this machine and graflow version.

    Bytecode of equal sources can differ byte for byte between processes, so the first process
    to build the archive stores it under the digest of its sources and later ones reuse those
    bytes: every host process ships the identical runner, under the same content address.
    """
    sources, source_digest = _sources()
    stored = cache_dir() / "bundles" / f"{source_digest}.pyz"
    try:
        data = stored.read_bytes()
    except OSError:
        data = _archive(sources)
        try:
            store_once(stored.parent, stored.name, data)
            data = stored.read_bytes()  # the winner's bytes, if another process stored first
        except OSError:
            pass  # a read-only home: this process keeps its own bytes
    return RunnerBundle(data=data, digest=hashlib.sha256(data).hexdigest())


_cached: RunnerBundle | None = None
_cache_lock = threading.Lock()


def runner_bundle() -> RunnerBundle:
    """The bundle for this process (built or loaded once, then cached)."""
    global _cached
    if _cached is None:
        with _cache_lock:
            if _cached is None:
                _cached = _load_or_build()
    return _cached
