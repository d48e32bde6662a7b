"""Coordinators: who runs the members of a parallel group (one by one, a thread pool, Redis workers)."""

from graflow.coordination.coordinator import CoordinationBackend, Coordinator
from graflow.coordination.executor import GroupExecutor

__all__ = ["CoordinationBackend", "Coordinator", "GroupExecutor"]
