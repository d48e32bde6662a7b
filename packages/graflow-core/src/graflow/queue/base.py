"""TaskQueue: the interface every queue backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any, ClassVar


class QueueBackend(str, Enum):
    """Names of the queue backends users know; any plugin-registered name works too."""

    IN_MEMORY = "memory"
    REDIS = "redis"


class TaskQueue(ABC):
    """A FIFO of task ids ready to run.

    The engine pops ids and runs them; a distributed queue (graflow-redis) instead hands them to
    workers. Subclasses set ``name`` for the plugin registry.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def enqueue(self, task_id: str) -> bool:
        """Add a task id at the back; return True when it was accepted."""

    @abstractmethod
    def dequeue(self) -> str | None:
        """Take the id at the front, or None when empty."""

    @abstractmethod
    def size(self) -> int: ...

    def is_empty(self) -> bool:
        return self.size() == 0

    def get_next_task(self) -> str | None:
        return self.dequeue()

    @abstractmethod
    def to_list(self) -> list[str]:
        """Every queued id, front first (checkpoints store this)."""

    @abstractmethod
    def clear(self) -> None: ...

    def cleanup(self) -> None:
        self.clear()

    def get_metrics(self) -> dict[str, Any]:
        return {"size": self.size()}
