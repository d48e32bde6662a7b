"""The ``shout`` task handler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graflow.core.handler import TaskHandler

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import Executable


class ShoutTaskHandler(TaskHandler):
    """Runs the task in-process; a string result comes back upper-cased, with ``suffix`` appended.

    Other results pass through unchanged. Use it with ``@task(handler="shout")`` or, to add a
    suffix, ``@task(handler="shout", handler_kwargs={"suffix": "!"})``. The suffix is appended as
    given (it is not upper-cased).
    """

    name = "shout"

    def __init__(self, *, suffix: str = "") -> None:
        if not isinstance(suffix, str):
            raise TypeError(f"ShoutTaskHandler suffix must be a string, got {type(suffix).__name__}")
        self.suffix = suffix

    def execute_task(self, task: Executable, context: ExecutionContext) -> Any:
        result = task.run_in(context)
        if isinstance(result, str):
            return result.upper() + self.suffix
        return result

    def __repr__(self) -> str:
        return f"ShoutTaskHandler(suffix={self.suffix!r})"
