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
import logging
import os
import re
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

logger = logging.getLogger("graflow.remote")

# The bootstrap is deliberately written for any Python 3 (no f-strings, no annotations): it must be
# able to report the remote interpreter's version even when that version is too old to import
# graflow, so the host can refuse with a clear message instead of a SyntaxError.
_BOOTSTRAP = """\
import json
import os
import struct
import sys
import time


def _main():
    try:
        # this archive is in use: say so in its access time (pruning old runners spares used ones)
        here = os.path.abspath(sys.argv[0])
        os.utime(here, (time.time(), os.stat(here).st_mtime))
    except Exception:
        pass
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
    written to a temporary file (``.<name>.<random>.tmp``) and hard-linked into place, so readers
    never see a partial file. After this process wrote a new file, the folder's stale runner
    bundles and leftover temporaries are deleted (:func:`prune_folder`; other files are left alone).
    """
    path = folder / name
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    written = False
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            os.link(tmp, path)
            written = True
        except FileExistsError:
            pass  # another process stored it first
    finally:
        os.unlink(tmp)
    if written:
        prune_folder(folder, current=name)
    return path


# -- pruning old bundles -------------------------------------------------------------------------
#
# Every graflow version (and, in the local build cache, every change to graflow's sources) stores a
# new bundle under a new name, and nothing ever replaces it, so cache folders only grow. Pruning is
# age-based on purpose: a runner that is still running does not hold its zip file open (zipimport
# reopens the archive whenever it loads another module), so there is no reliable "in use" signal to
# check. A bundle is deleted only once it is both older than ``max_age`` (a week by default: far
# longer than any runner lives on an old version after a newer one has been shipped next to it) and
# not among the ``keep`` newest, and the bundle being stored right now is never deleted.

#: Bundles kept in each folder whatever their age (the newest by modification time).
PRUNE_KEEP = 3
#: Seconds after which a bundle that is not among the newest ``PRUNE_KEEP`` may be deleted.
PRUNE_MAX_AGE = 7 * 86400
#: Seconds after which a leftover temporary file (from an interrupted write or upload) is deleted.
PRUNE_TMP_AGE = 86400

# Only names graflow itself writes: shipped runners ``graflow-runner-<16 hex>.pyz``, the local build
# cache's ``<64 hex>.pyz`` (sha256 of the sources), and the temporaries both are written under first,
# ``.<bundle name>.<random letters, digits or _>.tmp``. Any other file is never a candidate.
_BUNDLE_NAME = r"(?:graflow-runner-[0-9a-f]{16}|[0-9a-f]{64})\.pyz"
_BUNDLE_RE = re.compile(_BUNDLE_NAME)
_TEMPORARY_RE = re.compile(rf"\.{_BUNDLE_NAME}\.[A-Za-z0-9_]+\.tmp")


def last_used(mtime: float | None, atime: float | None) -> float | None:
    """When a bundle file was last written or used: a runner refreshes its archive's access time when
    it starts (and reading it may too), so a bundle uploaded long ago but still in use is not stale."""
    if mtime is None:
        return atime
    return mtime if atime is None else max(mtime, atime)


def is_bundle_name(name: str) -> bool:
    """True for the file names graflow stores runner bundles under (see :func:`stale_bundles`)."""
    return _BUNDLE_RE.fullmatch(name) is not None


def is_bundle_temporary(name: str) -> bool:
    """True for the temporary names a bundle is written under before it is renamed into place."""
    return _TEMPORARY_RE.fullmatch(name) is not None


def stale_bundles(
    entries: Iterable[tuple[str, float | None]],
    *,
    now: float,
    current: str | None = None,
    keep: int = PRUNE_KEEP,
    max_age: float = PRUNE_MAX_AGE,
    tmp_age: float = PRUNE_TMP_AGE,
) -> list[str]:
    """The names among ``entries`` (``(name, mtime)`` of the files in one cache folder) to delete.

    Callers pass :func:`last_used` as the time, so a bundle's age counts from its last use.

    * A bundle (``graflow-runner-<16 hex>.pyz`` or ``<64 hex>.pyz``) is stale when it is older than
      ``max_age`` seconds *and* not among the ``keep`` newest bundles of the folder (the current one
      counts among them when it is one of the newest).
    * A temporary (``.<bundle name>.<random>.tmp``) is stale when it is older than ``tmp_age``.
    * ``current`` (the bundle just stored) is never stale, nor is anything else: foreign files,
      entries whose mtime is unknown (``None``), or with an mtime after ``now`` (clock skew).

    Ages are ``now - mtime``; pass ``now`` from the same clock as the mtimes (on a remote host, the
    mtime of a file just written there). The result is sorted by name.
    """
    if keep < 0 or max_age < 0 or tmp_age < 0:
        raise ValueError(
            f"stale_bundles needs keep >= 0, max_age >= 0 and tmp_age >= 0 (got keep={keep}, "
            f"max_age={max_age}, tmp_age={tmp_age}); pass 0 to turn a limit off, not a negative number"
        )
    bundles: list[tuple[float, str]] = []
    stale: list[str] = []
    for name, mtime in entries:
        if mtime is None:
            continue
        if is_bundle_name(name):
            bundles.append((mtime, name))
        elif is_bundle_temporary(name) and now - mtime > tmp_age:
            stale.append(name)
    bundles.sort(key=lambda entry: (-entry[0], entry[1]))  # newest first
    stale.extend(name for mtime, name in bundles[keep:] if name != current and now - mtime > max_age)
    return sorted(stale)


def prune_folder(folder: Path, *, current: str | None = None, now: float | None = None) -> list[str]:
    """Delete the stale bundles and temporaries of a local cache ``folder``; return the names deleted.

    Best effort: storing a bundle must never fail because of pruning, so every error (an unreadable
    folder, a file another process deleted first) is logged at debug level and skipped.
    """
    entries: list[tuple[str, float | None]] = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                try:
                    if entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        entries.append((entry.name, last_used(info.st_mtime, info.st_atime)))
                except OSError:
                    continue  # gone meanwhile (another process pruned it): nothing to judge
    except OSError as exc:
        logger.debug("bundle cache: cannot list %s to prune it: %s", folder, exc)
        return []
    deleted = []
    for name in stale_bundles(entries, now=time.time() if now is None else now, current=current):
        try:
            os.unlink(folder / name)
        except OSError as exc:
            logger.debug("bundle cache: cannot delete stale %s: %s", folder / name, exc)
            continue
        deleted.append(name)
        logger.debug("bundle cache: deleted stale %s", folder / name)
    return deleted


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
