"""Per-task cost of a task handler: a chain of no-op tasks run on it (shared by the remote-handler benchmarks)."""

from __future__ import annotations

import time
from typing import Any

from graflow.core.context import ExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.task import chain
from graflow.core.workflow import workflow


def noop() -> None:
    """Every task's function."""
    return None


def seconds_per_task(handler: Any, n: int, name: str) -> float:
    """Seconds per task for a chain of ``n`` no-op tasks on ``handler``, registered as ``name``."""
    with workflow(f"{name}-{n}") as wf:
        tasks = [task(f"t{i}", handler=name)(noop) for i in range(n)]
        chain(*tasks)
    context = ExecutionContext.create(wf.graph, None, max_steps=n + 10)
    engine = WorkflowEngine()
    engine.register_handler(name, handler)
    started = time.perf_counter()
    engine.execute(context)
    elapsed = time.perf_counter() - started
    missing = [t.task_id for t in tasks if t.task_id not in context.completed_tasks]
    if missing:
        raise RuntimeError(f"tasks did not run: {missing}")
    return elapsed / n
