"""CycleController: how many times each task may run in one workflow run (``max_cycles``)."""

from __future__ import annotations

from graflow.exceptions import CycleLimitExceededError


class CycleController:
    """Counts runs per task id; the count is 1 during a task's first run.

    The engine keeps the counts in ``ExecutionContext.cycle_counts`` (so checkpoints carry them);
    this class is the upstream-compatible view over that dictionary.
    """

    def __init__(self, default_max_cycles: int = 10, counts: dict[str, int] | None = None) -> None:
        self.default_max_cycles = default_max_cycles
        self.cycle_counts: dict[str, int] = counts if counts is not None else {}
        self.node_max_cycles: dict[str, int] = {}

    def set_node_max_cycles(self, node_id: str, max_cycles: int) -> None:
        self.node_max_cycles[node_id] = max_cycles

    def get_max_cycles_for_node(self, node_id: str) -> int:
        return self.node_max_cycles.get(node_id, self.default_max_cycles)

    def get_cycle_count(self, node_id: str) -> int:
        return self.cycle_counts.get(node_id, 0)

    def accept_next_cycle(self, node_id: str) -> bool:
        return self.get_cycle_count(node_id) < self.get_max_cycles_for_node(node_id)

    def increment(self, node_id: str) -> int:
        count = self.cycle_counts.get(node_id, 0) + 1
        self.cycle_counts[node_id] = count
        return count

    def check_cycle_limit(self, node_id: str) -> None:
        count = self.get_cycle_count(node_id)
        limit = self.get_max_cycles_for_node(node_id)
        if count >= limit:
            raise CycleLimitExceededError(node_id, count + 1, limit)


__all__ = ["CycleController"]
