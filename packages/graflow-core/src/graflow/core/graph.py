"""TaskGraph: the nodes and edges a workflow's DSL built.

Plain dictionaries, no graph library: the engine walks successors on every task, so lookups must
be O(1) and the graph must pickle cheaply into checkpoints. A parallel group is a node of its own;
its members are nodes too, owned by the group (``owner_of``), and are never sources of the
enclosing graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from graflow.exceptions import DuplicateTaskError, GraphCompilationError

if TYPE_CHECKING:
    from graflow.core.task import Executable


class TaskGraph:
    """Directed graph of executables keyed by task id. Loops are allowed."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._nodes: dict[str, Executable] = {}
        self._succ: dict[str, list[str]] = {}
        self._pred: dict[str, list[str]] = {}
        self.owner_of: dict[str, str] = {}  # member task id -> id of the group that runs it
        self.version = 0  # bumped on every structural change; the engine caches on it

    # -- building ---------------------------------------------------------------------------------
    def add_node(self, task: Executable, task_id: str | None = None, skip_if_exists: bool = False) -> None:
        """Add ``task``; a *different* task with the same id is a :class:`DuplicateTaskError`."""
        tid = task_id or task.task_id
        existing = self._nodes.get(tid)
        if existing is not None:
            if existing is task or skip_if_exists:
                return
            raise DuplicateTaskError(tid)
        self._nodes[tid] = task
        self._succ[tid] = []
        self._pred[tid] = []
        self.version += 1

    def add_edge(self, from_node: str, to_node: str) -> None:
        for node in (from_node, to_node):
            if node not in self._nodes:
                raise GraphCompilationError(f"Cannot add edge {from_node} -> {to_node}: unknown task '{node}'")
        succ = self._succ[from_node]
        if to_node not in succ:
            succ.append(to_node)
            self._pred[to_node].append(from_node)
            self.version += 1

    def remove_edge(self, from_node: str, to_node: str) -> None:
        if to_node in self._succ.get(from_node, ()):
            self._succ[from_node].remove(to_node)
            self._pred[to_node].remove(from_node)
            self.version += 1

    def set_owner(self, member_id: str, group_id: str) -> None:
        self.owner_of[member_id] = group_id
        self.version += 1

    def rename_node(self, old_task_id: str, new_task_id: str) -> None:
        if new_task_id in self._nodes:
            raise DuplicateTaskError(new_task_id)
        task = self._nodes.pop(old_task_id)
        self._nodes[new_task_id] = task
        self._succ[new_task_id] = self._succ.pop(old_task_id)
        self._pred[new_task_id] = self._pred.pop(old_task_id)
        for lists in (self._succ, self._pred):
            for ids in lists.values():
                for i, tid in enumerate(ids):
                    if tid == old_task_id:
                        ids[i] = new_task_id
        if old_task_id in self.owner_of:
            self.owner_of[new_task_id] = self.owner_of.pop(old_task_id)
        for member, owner in list(self.owner_of.items()):
            if owner == old_task_id:
                self.owner_of[member] = new_task_id
        self.version += 1

    def copy(self) -> TaskGraph:
        """A graph with the same nodes and edges that can change without touching this one."""
        other = TaskGraph(self.name)
        other._nodes = dict(self._nodes)
        other._succ = {k: list(v) for k, v in self._succ.items()}
        other._pred = {k: list(v) for k, v in self._pred.items()}
        other.owner_of = dict(self.owner_of)
        other.version = self.version
        return other

    def clear(self) -> None:
        self._nodes.clear()
        self._succ.clear()
        self._pred.clear()
        self.owner_of.clear()
        self.version += 1

    # -- reading ----------------------------------------------------------------------------------
    def get_node(self, task_id: str) -> Executable:
        try:
            return self._nodes[task_id]
        except KeyError:
            raise GraphCompilationError(
                f"No task '{task_id}' in the graph. Known tasks: {', '.join(sorted(self._nodes)) or 'none'}"
            ) from None

    def has_node(self, task_id: str) -> bool:
        return task_id in self._nodes

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def items(self) -> Iterator[tuple[str, Executable]]:
        return iter(self._nodes.items())

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(u, v) for u, vs in self._succ.items() for v in vs]

    def get_edges(self) -> list[tuple[str, str]]:
        return self.edges

    def successors(self, node: str) -> list[str]:
        return self._succ[node]

    def predecessors(self, node: str) -> list[str]:
        return self._pred[node]

    def get_start_nodes(self) -> list[str]:
        """Nodes with no predecessors that no group owns, in insertion order."""
        owner_of = self.owner_of
        return [tid for tid, preds in self._pred.items() if not preds and tid not in owner_of]

    def get_parallel_group_members(self, group_id: str) -> list[str]:
        return [m for m, g in self.owner_of.items() if g == group_id]

    def detect_cycles(self) -> list[list[str]]:
        """Each elementary loop found by a depth-first walk, as a list of task ids."""
        cycles: list[list[str]] = []
        state: dict[str, int] = {}
        stack: list[str] = []
        for root in self._nodes:
            if root in state:
                continue
            work: list[tuple[str, Iterator[str]]] = [(root, iter(self._succ[root]))]
            state[root] = 1
            stack.append(root)
            while work:
                node, it = work[-1]
                nxt = next(it, None)
                if nxt is None:
                    work.pop()
                    stack.pop()
                    state[node] = 2
                    continue
                mark = state.get(nxt)
                if mark == 1:
                    cycles.append([*stack[stack.index(nxt) :], nxt])
                elif mark is None:
                    state[nxt] = 1
                    stack.append(nxt)
                    work.append((nxt, iter(self._succ[nxt])))
        return cycles

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._nodes

    def __str__(self) -> str:
        lines = [f"TaskGraph({self.name or 'unnamed'}): {len(self._nodes)} nodes"]
        lines += [f"  {u} -> {v}" for u, v in self.edges]
        return "\n".join(lines)

    # -- rendering ----------------------------------------------------------------------------------
    def to_mermaid(self) -> str:
        from graflow.core.render import to_mermaid

        return to_mermaid(self)

    def to_ascii(self) -> str:
        from graflow.core.render import to_ascii

        return to_ascii(self)
