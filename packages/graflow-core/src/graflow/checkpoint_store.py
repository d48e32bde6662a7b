"""Checkpoint stores: where the three parts of a checkpoint live, chosen by the path's scheme.

A checkpoint is three parts under one base address: ``<base>.pkl`` (the pickled execution
context), ``<base>.state.json`` (what the run had done) and ``<base>.meta.json`` (id, time, user
metadata, checksum). The meta part is written last and is the commit mark: a store never lists
or loads a base whose meta part is missing. Stores register through
``graflow_register_checkpoint_stores`` with the ``schemes`` they serve (``""`` = plain paths).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

PARTS = (".pkl", ".state.json", ".meta.json")


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
