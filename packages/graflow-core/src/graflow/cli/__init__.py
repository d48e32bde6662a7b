"""The ``graflow`` command line (``graflow run``, ``graph``, ``plugins`` and plugin-provided commands)."""

from __future__ import annotations

from graflow.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
