"""The ``direct`` handler: run the task's function in this process, in the calling thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graflow.core.handler import TaskHandler

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import Executable


class DirectTaskHandler(TaskHandler):
    """Runs tasks in-process. The engine short-cuts this handler on its hot path."""

    name = "direct"

    def execute_task(self, task: Executable, context: ExecutionContext) -> Any:
        return task.run_in(context, context.current_task_context)


__all__ = ["DirectTaskHandler"]
