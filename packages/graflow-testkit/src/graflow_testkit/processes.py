"""The process table (Linux ``/proc``): which processes a test started, so it can check or end them."""

from __future__ import annotations

import os


def _table() -> list[tuple[int, int, str]]:
    """``(pid, parent pid, state)`` of every process; ones that vanish while being read are left out."""
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        rows.append((int(entry), int(fields[1]), fields[0]))
    return rows


def children(pid: int) -> list[int]:
    """Live (not zombie) child pids of ``pid``."""
    return [child for child, parent, state in _table() if parent == pid and state != "Z"]


def descendants(*pids: int) -> list[int]:
    """Live (not zombie) descendants of ``pids``, at any depth."""
    table = _table()
    found: list[int] = []
    frontier = set(pids)
    seen = set(pids)
    while frontier:
        level = [(child, state) for child, parent, state in table if parent in frontier and child not in seen]
        seen.update(child for child, _ in level)
        found.extend(child for child, state in level if state != "Z")
        frontier = {child for child, _ in level}
    return found


__all__ = ["children", "descendants"]
