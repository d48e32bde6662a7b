"""``graflow graph FILE[:WORKFLOW] --format mermaid|ascii``: print a workflow's graph without running it."""

from __future__ import annotations

import argparse
import sys

from graflow.cli.run_cmd import CLIError, _fail, load_workflow
from graflow.core.render import to_ascii, to_mermaid

FORMATS = {"ascii": to_ascii, "mermaid": to_mermaid}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILE[:WORKFLOW]", help="Python file defining the workflow, optionally :name")
    parser.add_argument(
        "-f", "--format", choices=sorted(FORMATS), default="ascii", help="output format (default: ascii)"
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback when loading fails")


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_workflow(args.target)
    except CLIError as exc:
        return _fail(exc, args)
    sys.stdout.write(FORMATS[args.format](loaded.workflow.graph))
    sys.stdout.flush()
    return 0


__all__ = ["FORMATS", "add_arguments", "run"]
