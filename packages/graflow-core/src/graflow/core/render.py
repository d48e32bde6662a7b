"""Text renderings of a :class:`~graflow.core.graph.TaskGraph`: Mermaid and plain ASCII.

Both work from the graph alone (no optional dependency): ``graflow graph``, ``wf.show_info()`` and
notebooks use them. A parallel group is a node of the graph whose members are nodes owned by it
(``graph.owner_of``); members are drawn *inside* their group, never as free-standing nodes, so the
picture matches how the engine runs them.

The ASCII form is layered: every top-level node sits in the layer after its deepest predecessor,
ignoring the edges that close loops (found by a depth-first walk from the sources). Those edges are
still listed, marked ``(loop)``, so ``agent >> tool >> agent`` reads ``tool --> agent (loop)``.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graflow.core.graph import TaskGraph

# Words Mermaid's flowchart grammar treats as keywords; a node id spelt like one breaks the diagram.
_MERMAID_KEYWORDS = frozenset(
    {
        "end",
        "graph",
        "subgraph",
        "flowchart",
        "style",
        "class",
        "classdef",
        "click",
        "linkstyle",
        "default",
        "direction",
    }
)
_UNSAFE_ID = re.compile(r"[^0-9A-Za-z_]")


# -- shared structure ------------------------------------------------------------------------------------
class _Layout:
    """What both renderers need: group membership in a stable order and each node's outermost owner."""

    def __init__(self, graph: TaskGraph) -> None:
        self.graph = graph
        self.nodes = graph.nodes
        owner_of = graph.owner_of
        # A member whose owner is no longer in the graph is treated as top level rather than hidden.
        self.owner = {m: g for m, g in owner_of.items() if g in graph and m in graph}
        self.members: dict[str, list[str]] = {}
        for member, group in self.owner.items():
            self.members.setdefault(group, []).append(member)
        for group, found in self.members.items():
            self.members[group] = self._ordered_members(group, found)
        self.top_level = [n for n in self.nodes if n not in self.owner]

    def _ordered_members(self, group: str, found: list[str]) -> list[str]:
        """Members in the order the DSL listed them (``b | c``), not the order they entered the graph."""
        declared: list[str] = []
        node = self.graph.get_node(group)
        for member in getattr(node, "tasks", ()):
            parts = getattr(member, "tasks", None) if not _is_group(member) else None
            for part in parts if parts is not None else [member]:
                tid = getattr(part, "task_id", None)
                if tid in found and tid not in declared:
                    declared.append(tid)
        return declared + [m for m in found if m not in declared]

    def outermost(self, node: str) -> str:
        seen = {node}
        while node in self.owner:
            node = self.owner[node]
            if node in seen:  # a corrupt ownership loop must not hang a renderer
                break
            seen.add(node)
        return node

    def is_group(self, node: str) -> bool:
        return node in self.members or _is_group(self.graph.get_node(node))


def _is_group(executable: object) -> bool:
    from graflow.core.task import ParallelGroup

    return isinstance(executable, ParallelGroup)


def _back_edges(nodes: list[str], succ: dict[str, list[str]]) -> set[tuple[str, str]]:
    """Edges that close a loop, found by an iterative depth-first walk started at the sources.

    Starting at the sources (then at whatever is left, for graphs that are one big loop) makes the
    edge reported as the loop the one the user wrote last, e.g. ``tool -> agent`` in
    ``start >> agent >> tool >> agent``.
    """
    has_pred = {v for vs in succ.values() for v in vs}
    roots = [n for n in nodes if n not in has_pred] + [n for n in nodes if n in has_pred]
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    back: set[tuple[str, str]] = set()
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        work = [(root, iter(succ.get(root, ())))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                state[node] = 2
                continue
            mark = state.get(child)
            if mark == 1:
                back.add((node, child))
            elif mark is None:
                state[child] = 1
                work.append((child, iter(succ.get(child, ()))))
    return back


def _layers(layout: _Layout) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Layer of every top-level node (longest path from a source) and the loop-closing edges.

    Layering works on top-level nodes; an edge touching a member counts for its outermost group.
    """
    graph = layout.graph
    top = layout.top_level
    top_succ: dict[str, list[str]] = {node: [] for node in top}
    for u, v in graph.edges:
        tu, tv = layout.outermost(u), layout.outermost(v)
        if tu != tv and tv not in top_succ[tu]:
            top_succ[tu].append(tv)
    back = _back_edges(top, top_succ)
    indegree = {node: 0 for node in top}
    for u, vs in top_succ.items():
        for v in vs:
            if (u, v) not in back:
                indegree[v] += 1
    layer = {node: 0 for node in top}
    ready = deque(node for node in top if indegree[node] == 0)
    while ready:
        u = ready.popleft()
        for v in top_succ[u]:
            if (u, v) in back:
                continue
            layer[v] = max(layer[v], layer[u] + 1)
            indegree[v] -= 1
            if indegree[v] == 0:
                ready.append(v)
    return layer, back


# -- Mermaid ----------------------------------------------------------------------------------------------
def _mermaid_ids(nodes: list[str]) -> dict[str, str]:
    """A distinct, Mermaid-safe id per node; the real id stays visible as the quoted label."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for node in nodes:
        base = _UNSAFE_ID.sub("_", node) or "_"
        if base.lower() in _MERMAID_KEYWORDS:
            base += "_"
        candidate, n = base, 1
        while candidate in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate)
        ids[node] = candidate
    return ids


def _mermaid_label(text: str) -> str:
    # Inside a quoted label only the quote itself (and line breaks) can end it early.
    return '"' + text.replace('"', "#quot;").replace("\r", " ").replace("\n", " ") + '"'


def to_mermaid(graph: TaskGraph) -> str:
    """The graph as a Mermaid ``flowchart TD``; parallel groups become (nested) ``subgraph`` blocks."""
    layout = _Layout(graph)
    ids = _mermaid_ids(layout.nodes)
    lines = ["flowchart TD"]

    def declare(node: str, depth: int) -> None:
        pad = "    " * depth
        if layout.is_group(node):
            lines.append(f"{pad}subgraph {ids[node]}[{_mermaid_label(node)}]")
            for member in layout.members.get(node, ()):
                declare(member, depth + 1)
            lines.append(f"{pad}end")
        else:
            lines.append(f"{pad}{ids[node]}[{_mermaid_label(node)}]")

    # Declaring nodes and edges in layer order keeps Mermaid's layout close to the run order.
    layer, _ = _layers(layout)
    for node in sorted(layout.top_level, key=layer.__getitem__):
        declare(node, 1)
    edges = sorted(graph.edges, key=lambda edge: layer[layout.outermost(edge[0])])
    lines.extend(f"    {ids[u]} --> {ids[v]}" for u, v in edges)
    return "\n".join(lines) + "\n"


# -- ASCII ------------------------------------------------------------------------------------------------
def to_ascii(graph: TaskGraph) -> str:
    """A layered plain-text picture of the graph.

    Example for ``start >> agent >> tool >> agent`` and ``a >> (b | c) >> d``::

        [1] start
              start --> agent
        [2] agent
              agent --> tool
        [3] tool
              tool --> agent (loop)

        [1] a
              a --> ParallelGroup_1
        [2] ParallelGroup_1 [b | c]
              ParallelGroup_1 --> d
        [3] d
    """
    layout = _Layout(graph)
    header = f"graph {graph.name}" if graph.name else "graph"
    if not layout.nodes:
        return f"{header}: (empty)\n"

    # Edges drawn inside a group's brackets (``b >> c`` chains of one member) are not listed again.
    drawn_inside: set[tuple[str, str]] = set()

    def group_text(group: str, trail: frozenset[str]) -> str:
        members = layout.members.get(group, [])
        inside = set(members)
        internal_succ = {m: [v for v in graph.successors(m) if v in inside] for m in members}
        internal_pred = {m: [u for u in graph.predecessors(m) if u in inside] for m in members}
        visited: set[str] = set()
        chains: list[str] = []
        starts = [m for m in members if not internal_pred[m]] + [m for m in members if internal_pred[m]]
        for start in starts:
            if start in visited:
                continue
            parts = [node_text(start, trail | {group})]
            visited.add(start)
            current = start
            while len(internal_succ[current]) == 1:
                nxt = internal_succ[current][0]
                if nxt in visited or len(internal_pred[nxt]) != 1:
                    break
                drawn_inside.add((current, nxt))
                parts.append(node_text(nxt, trail | {group}))
                visited.add(nxt)
                current = nxt
            chains.append(" >> ".join(parts))
        return " | ".join(chains)

    def node_text(node: str, trail: frozenset[str] = frozenset()) -> str:
        if node in trail or not layout.is_group(node):
            return node
        return f"{node} [{group_text(node, trail)}]"

    top = layout.top_level
    texts = {node: node_text(node) for node in top}

    layer, back = _layers(layout)

    edges_by_owner: dict[str, list[str]] = {node: [] for node in top}
    for u, v in graph.edges:
        if (u, v) in drawn_inside:
            continue
        tu, tv = layout.outermost(u), layout.outermost(v)
        loop = u == v or (tu != tv and (tu, tv) in back) or (tu == tv and _is_back_inside(graph, layout, u, v))
        edges_by_owner[tu].append(f"{u} --> {v}" + (" (loop)" if loop else ""))

    lines = [header]
    for depth in range(max(layer.values()) + 1):
        row = [node for node in top if layer[node] == depth]
        if not row:
            continue
        lines.append(f"[{depth + 1}] " + ", ".join(texts[node] for node in row))
        pad = " " * (len(str(depth + 1)) + 5)
        for node in row:
            lines.extend(pad + edge for edge in edges_by_owner[node])
    return "\n".join(lines) + "\n"


def _is_back_inside(graph: TaskGraph, layout: _Layout, u: str, v: str) -> bool:
    """Whether ``u -> v`` (both inside one group) closes a loop among that group's members."""
    group = layout.owner.get(u)
    if group is None or layout.owner.get(v) != group:
        return False
    members = layout.members[group]
    inside = set(members)
    succ = {m: [w for w in graph.successors(m) if w in inside] for m in members}
    return (u, v) in _back_edges(members, succ)


__all__ = ["to_ascii", "to_mermaid"]
