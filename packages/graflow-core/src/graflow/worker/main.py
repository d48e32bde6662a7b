"""``python -m graflow.worker.main``: the worker entry point (same flags as ``graflow worker``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from graflow.worker import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m graflow.worker.main",
        description="Run Graflow workers fed by a distributed queue (graflow-redis).",
    )
    cli.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
