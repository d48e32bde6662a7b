"""LocalTaskQueue: the in-memory FIFO the engine drives directly."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from graflow.queue.base import TaskQueue


class LocalTaskQueue(TaskQueue):
    """A ``deque`` of task ids. The engine reaches ``items`` directly on its hot path."""

    name = "memory"
    aliases = ("local",)

    def __init__(self, execution_context: Any = None, start: Iterable[str] = ()) -> None:
        self.execution_context = execution_context
        self.items: deque[str] = deque(start)

    def enqueue(self, task_id: Any) -> bool:
        self.items.append(task_id if isinstance(task_id, str) else task_id.task_id)
        return True

    def dequeue(self) -> str | None:
        return self.items.popleft() if self.items else None

    def size(self) -> int:
        return len(self.items)

    def is_empty(self) -> bool:
        return not self.items

    def to_list(self) -> list[str]:
        return list(self.items)

    def clear(self) -> None:
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)


__all__ = ["LocalTaskQueue"]
