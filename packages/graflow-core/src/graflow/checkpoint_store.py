"""Checkpoint stores: where the three parts of a checkpoint live, chosen by the path's scheme.

A checkpoint is three parts under one base address: ``<base>.pkl`` (the pickled execution
context), ``<base>.state.json`` (what the run had done) and ``<base>.meta.json`` (id, time, user
metadata, checksum). The meta part is written last and is the commit mark: a store never lists
or loads a base whose meta part is missing. Stores register through
``graflow_register_checkpoint_stores`` with the ``schemes`` they serve (``""`` = plain paths).

Writing a store for another backend (Redis, S3, a database) means implementing the four abstract
methods below; :class:`~graflow.core.checkpoint.CheckpointManager` does everything else (naming,
serialisation, checksums, schema checks, retention), so every store gets the same guarantees.
Stores are built with no arguments, once per class, and must be safe to call from several threads:
everything they need (host, bucket, folder) is in the addresses they are given.
The ``graflow-testkit`` package has a conformance suite (``CheckpointStoreConformance``) for them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from abc import ABC, abstractmethod
from typing import ClassVar
from urllib.parse import unquote, urlsplit

PARTS = (".pkl", ".state.json", ".meta.json")
#: The part whose presence marks a checkpoint as complete.
COMMIT_PART = ".meta.json"
_TMP_MARK = ".tmp-"


class CheckpointStore(ABC):
    """Reads and writes the parts of checkpoints for one family of addresses.

    ``base`` arguments are full addresses as users write them (``/tmp/run1/ckpt-3``,
    ``s3://bucket/prefix/ckpt-3``); ``location`` is the folder-like address holding several.
    """

    schemes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def write_part(self, base: str, suffix: str, data: bytes) -> None:
        """Store one part atomically: readers see the old content or the new, never a mix."""

    @abstractmethod
    def read_part(self, base: str, suffix: str) -> bytes:
        """Return one part's bytes; raise FileNotFoundError when it does not exist."""

    @abstractmethod
    def list_bases(self, location: str) -> list[str]:
        """Every committed base (meta part present) directly under ``location``."""

    @abstractmethod
    def delete(self, base: str) -> None:
        """Remove every part of one checkpoint (meta first, so it stops being visible at once)."""

    def join(self, location: str, name: str) -> str:
        return location.rstrip("/") + "/" + name

    def part_address(self, base: str, suffix: str) -> str:
        """Where one part lives, as shown in error messages (so users can go and look at it)."""
        return base + suffix


class LocalFileCheckpointStore(CheckpointStore):
    """Plain paths and ``file://`` URLs on the local file system.

    Every part is written to a temporary file in the target folder, flushed and fsynced, then
    renamed over the final name, so a reader (or a crash) sees either the old file or the new one.
    Writing the meta part also fsyncs the folder, which makes the renames of all three parts
    durable: after ``create_checkpoint`` returns, a power cut cannot lose the checkpoint.
    """

    schemes: ClassVar[tuple[str, ...]] = ("", "file")

    def __init__(self, durable: bool = True) -> None:
        # durable=False skips fsync (tests, scratch runs on tmpfs); atomicity is kept either way.
        self.durable = durable

    # -- addressing ---------------------------------------------------------------------------------
    @staticmethod
    def fs_path(address: str) -> str:
        """The file-system path of a plain path or ``file://`` URL."""
        if address[:7].lower() == "file://":
            parts = urlsplit(address)
            path = unquote(parts.path)
            if parts.netloc and parts.netloc != "localhost":
                path = "//" + parts.netloc + path
            return path
        return address

    def part_address(self, base: str, suffix: str) -> str:
        return self.fs_path(base) + suffix

    # -- the contract -------------------------------------------------------------------------------
    def write_part(self, base: str, suffix: str, data: bytes) -> None:
        target = self.fs_path(base) + suffix
        folder = os.path.dirname(target) or "."
        os.makedirs(folder, exist_ok=True)
        # A unique temp name per writer, so two processes writing the same checkpoint never share one.
        tmp = f"{target}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.durable and suffix == COMMIT_PART:
            _fsync_dir(folder)

    def read_part(self, base: str, suffix: str) -> bytes:
        with open(self.fs_path(base) + suffix, "rb") as fh:
            return fh.read()

    def list_bases(self, location: str) -> list[str]:
        folder = self.fs_path(location) or "."
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        bases = []
        for name in names:
            if name.endswith(COMMIT_PART) and _TMP_MARK not in name:
                bases.append(self.join(location, name[: -len(COMMIT_PART)]))
        bases.sort()
        return bases

    def delete(self, base: str) -> None:
        path = self.fs_path(base)
        for suffix in (COMMIT_PART, *[p for p in PARTS if p != COMMIT_PART]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        if self.durable:
            with contextlib.suppress(OSError):
                _fsync_dir(os.path.dirname(path) or ".")

    def join(self, location: str, name: str) -> str:
        if location.endswith(("/", os.sep)):
            return location + name
        if not location:
            return name
        return location + "/" + name if location[:7].lower() == "file://" else os.path.join(location, name)


def _fsync_dir(folder: str) -> None:
    """Persist the folder's entries (the renames); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["COMMIT_PART", "PARTS", "CheckpointStore", "LocalFileCheckpointStore"]
