"""The ``graflow`` command (also ``python -m graflow``).

Built-in sub-commands: ``run``, ``graph``, ``plugins``. Plugins add more through the
``graflow_register_commands`` hook: each command class has ``name``, ``help``,
``add_arguments(parser)`` and ``run(args) -> int``. A plugin command that fails to load or to set
up its arguments is reported on stderr and skipped; the rest of the CLI keeps working.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from graflow.__about__ import __version__

PROG = "graflow"


def _builtin_commands() -> list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]]:
    from graflow.cli import graph_cmd, plugins_cmd, run_cmd

    return [
        ("run", "run a workflow from a Python file", run_cmd.add_arguments, run_cmd.run),
        ("graph", "print a workflow's graph (ASCII or Mermaid)", graph_cmd.add_arguments, graph_cmd.run),
        ("plugins", "list installed plugins and what they register", plugins_cmd.add_arguments, plugins_cmd.run),
    ]


def build_parser(warn: Callable[[str], None] | None = None) -> argparse.ArgumentParser:
    """The full parser, plugin commands included; ``warn`` receives one line per skipped plugin command."""
    warn = warn or _warn
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Graflow: run, inspect and operate Python workflows.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_arguments, run in _builtin_commands():
        command_parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        add_arguments(command_parser)
        command_parser.set_defaults(_run=run)
    _add_plugin_commands(sub, {name for name, *_ in _builtin_commands()}, warn)
    return parser


def _add_plugin_commands(sub: Any, taken: set[str], warn: Callable[[str], None]) -> None:
    from graflow import plugins

    try:
        names = plugins.names("command")
    except Exception as exc:  # noqa: BLE001 - a broken plugin set must not take the built-in commands down
        warn(f"plugin commands unavailable: {type(exc).__name__}: {exc}")
        return
    for name in names:
        if name in taken:
            warn(f"skipping plugin command '{name}': it clashes with a built-in command")
            continue
        try:
            command = plugins.lookup("command", name)()
            help_text = str(getattr(command, "help", "") or "")
            # Arguments go onto a scratch parser first, so a plugin that fails half-way leaves no
            # half-built sub-command behind; the real sub-parser then copies them (parents=).
            scratch = argparse.ArgumentParser(prog=f"{PROG} {name}", add_help=False)
            add_arguments = getattr(command, "add_arguments", None)
            if add_arguments is not None:
                add_arguments(scratch)
            if not callable(getattr(command, "run", None)):
                raise TypeError("the command class has no run(args) method")
        except Exception as exc:  # noqa: BLE001 - report and skip: one bad plugin command must not break the CLI
            warn(f"skipping plugin command '{name}': {type(exc).__name__}: {exc}")
            continue
        command_parser = sub.add_parser(
            name, help=help_text, description=scratch.description or help_text or None, parents=[scratch]
        )
        command_parser.set_defaults(_run=command.run)
        taken.add(name)


def _warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the chosen command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = run(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:  # last resort: a command bug still ends with one clear line, not a traceback
        if getattr(args, "traceback", False):
            raise
        sys.stderr.write(f"{PROG}: error: {type(exc).__name__}: {exc}\n")
        return 1
    return int(code or 0)


__all__ = ["build_parser", "main"]
