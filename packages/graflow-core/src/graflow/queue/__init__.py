"""Task queues: where a run's ready tasks wait (in memory by default, Redis with graflow-redis)."""

from graflow.queue.base import QueueBackend, TaskQueue
from graflow.queue.local import LocalTaskQueue

__all__ = ["LocalTaskQueue", "QueueBackend", "TaskQueue"]
