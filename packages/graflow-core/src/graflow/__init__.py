"""Graflow: a Pythonic workflow engine.

Write plain functions, mark them with ``@task``, wire them with ``>>`` (then) and ``|`` (in
parallel), and run them in-process, on threads, or (with plugins) on Redis workers, in Docker
containers or on SSH hosts::

    from graflow import task, workflow

    @task
    def extract():
        return [1, 2, 3]

    @task
    def load(extract):
        return sum(extract)

    with workflow("etl") as wf:
        extract >> load
        print(wf.execute())  # 6
"""

from __future__ import annotations

from typing import Any

from graflow.__about__ import __version__
from graflow.coordination.coordinator import CoordinationBackend
from graflow.core.context import ExecutionContext, TaskExecutionContext, create_execution_context
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.handlers.group_policy import ErrorHandlingPolicy, GroupExecutionPolicy
from graflow.core.retry import RetryPolicy
from graflow.core.task import ParallelGroup, TaskWrapper, chain, parallel
from graflow.core.workflow import workflow
from graflow.hookspecs import hookimpl


def __getattr__(name: str) -> Any:
    # CheckpointManager pulls in cloudpickle; load it only when asked for.
    if name == "CheckpointManager":
        from graflow.core.checkpoint import CheckpointManager

        return CheckpointManager
    raise AttributeError(f"module 'graflow' has no attribute {name!r}")


__all__ = [
    "CheckpointManager",
    "CoordinationBackend",
    "ErrorHandlingPolicy",
    "ExecutionContext",
    "GroupExecutionPolicy",
    "ParallelGroup",
    "RetryPolicy",
    "TaskExecutionContext",
    "TaskWrapper",
    "WorkflowEngine",
    "__version__",
    "chain",
    "create_execution_context",
    "hookimpl",
    "parallel",
    "task",
    "workflow",
]
