"""``graflow plugins [--json]``: what is installed, what each plugin registers, and what failed to load."""

from __future__ import annotations

import argparse
import json
import sys

from graflow import plugins
from graflow.plugins import PluginInfo

_HOOK_PREFIXES = ("graflow_register_", "graflow_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list (one object per plugin)")


def run(args: argparse.Namespace) -> int:
    infos = plugins.describe()
    if args.json:
        json.dump([info.as_dict() for info in infos], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(infos))
    sys.stdout.flush()
    return 0


def format_table(infos: list[PluginInfo]) -> str:
    """A table of plugins (name, distribution, version, status), each row followed by its details.

    Hooks and registered names are too long for columns, so they go on indented lines under their
    row; hooks lose their common prefix (``task_handlers`` for ``graflow_register_task_handlers``).
    A plugin that failed to load shows ``FAILED`` and its error instead.
    """
    header = ("NAME", "DISTRIBUTION", "VERSION", "STATUS")
    rows = [(i.name, i.distribution, i.version or "-", "ok" if i.error is None else "FAILED") for i in infos]
    widths = [max(len(r[col]) for r in [header, *rows]) for col in range(len(header))]
    indent = " " * (widths[0] + 2)

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

    lines = [line(header)]
    for info, row in zip(infos, rows):
        lines.append(line(row))
        if info.error is not None:
            lines.append(f"{indent}error:     {info.error}")
            continue
        lines.append(f"{indent}hooks:     {', '.join(_short_hook(h) for h in info.hooks) or '-'}")
        registers = "; ".join(
            f"{kind}: {', '.join(n or repr(n) for n in names)}" for kind, names in info.registers.items()
        )
        lines.append(f"{indent}registers: {registers or '-'}")
    if not rows:
        lines.append("(no plugins)")
    return "\n".join(lines) + "\n"


def _short_hook(hook: str) -> str:
    for prefix in _HOOK_PREFIXES:
        if hook.startswith(prefix):
            return hook[len(prefix) :]
    return hook


__all__ = ["add_arguments", "format_table", "run"]
