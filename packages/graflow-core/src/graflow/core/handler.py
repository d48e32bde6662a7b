"""TaskHandler: how one task's code gets run (in-process, in a container, on a remote host)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import Executable


@dataclass
class TaskResult:
    """Outcome of one task run, as group policies see it.

    ``result`` is the member's return value (``None`` when it failed); ``error`` the exception
    object; ``error_message`` its text.
    """

    task_id: str
    success: bool
    error: BaseException | None = None
    error_message: str | None = None
    duration: float = 0.0
    timestamp: float = 0.0
    result: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


class TaskHandler(ABC):
    """Runs a task and returns its result.

    Subclasses set ``name`` (the string users pass to ``@task(handler=...)``) and implement
    :meth:`execute_task`. The engine stores the returned value as the task's result; an exception
    raised here is the task's failure (and is retried per the task's policy).

    ``execute_task`` gets the task and the run's :class:`ExecutionContext`; call
    ``task.run_in(context)`` to run the task's function in-process with its parameters filled.
    """

    name: ClassVar[str] = ""

    def get_name(self) -> str:
        return self.name or type(self).__name__

    @abstractmethod
    def execute_task(self, task: Executable, context: ExecutionContext) -> Any:
        """Run ``task`` and return its result (or raise its error)."""

    def close(self) -> None:
        """Release resources (containers, connections); called when the handler is discarded."""
