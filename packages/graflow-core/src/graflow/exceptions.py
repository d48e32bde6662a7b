"""Every exception Graflow raises on purpose.

The tree mirrors upstream Graflow so ``except GraflowRuntimeError`` keeps working:

    GraflowError
    ├── GraflowRuntimeError
    │   ├── CycleLimitExceededError
    │   ├── RetryLimitExceededError
    │   ├── ParallelGroupError
    │   ├── GraflowWorkflowCanceledError
    │   └── TaskError
    ├── GraphCompilationError
    │   └── DuplicateTaskError
    └── ConfigError
        └── PluginNotFoundError

Wrapped errors keep the original exception as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class GraflowError(Exception):
    """Base class of every Graflow error."""


class GraflowRuntimeError(GraflowError):
    """Something went wrong while a workflow was running."""


class TaskError(GraflowRuntimeError):
    """A task could not be run (bad arguments, missing parameters, handler failure)."""

    def __init__(self, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskTimeoutError(TaskError):
    """A task ran longer than its ``timeout``.

    In-process the work cannot be stopped, so the overrun is reported as a failure when the task
    returns; workers and remote handlers stop the work itself.
    """

    def __init__(self, task_id: str, timeout: float, elapsed: float | None = None) -> None:
        took = f" (took {elapsed:.3f}s)" if elapsed is not None else ""
        super().__init__(f"Task '{task_id}' exceeded its timeout of {timeout}s{took}", task_id)
        self.timeout = timeout
        self.elapsed = elapsed


class CycleLimitExceededError(GraflowRuntimeError):
    """A task ran more often than its ``max_cycles`` allows."""

    def __init__(self, task_id: str, cycle_count: int, max_cycles: int) -> None:
        super().__init__(
            f"Task '{task_id}' exceeded its cycle limit: it would run for the "
            f"{cycle_count}th time but max_cycles is {max_cycles}. Raise the limit with "
            f"@task(max_cycles=...) or make the loop stop earlier (check context.can_iterate())."
        )
        self.task_id = task_id
        self.cycle_count = cycle_count
        self.max_cycles = max_cycles


class RetryLimitExceededError(GraflowRuntimeError):
    """A task kept failing after every retry its policy allowed; ``__cause__`` is the last error."""

    def __init__(self, task_id: str, attempts: int, last_error: BaseException | None = None) -> None:
        detail = f": {type(last_error).__name__}: {last_error}" if last_error is not None else ""
        super().__init__(f"Task '{task_id}' failed after {attempts} attempt(s){detail}")
        self.task_id = task_id
        self.attempts = attempts
        self.last_error = last_error


class ParallelGroupError(GraflowRuntimeError):
    """A parallel group's policy rejected the outcome of its members.

    ``failed_tasks`` is a list of ``(task_id, message)`` pairs, ``successful_tasks`` a list of ids.
    """

    def __init__(
        self,
        message: str | None = None,
        group_id: str = "",
        failed_tasks: Sequence[tuple[str, str]] = (),
        successful_tasks: Iterable[str] = (),
    ) -> None:
        failed = list(failed_tasks)
        if message is None:
            names = ", ".join(f"{tid} ({msg})" for tid, msg in failed) or "none"
            message = f"Parallel group '{group_id}' failed; failed members: {names}"
        super().__init__(message)
        self.group_id = group_id
        self.failed_tasks = failed
        self.successful_tasks = list(successful_tasks)


class GraflowWorkflowCanceledError(GraflowRuntimeError):
    """A task called ``context.cancel_workflow(message)``."""

    def __init__(self, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class GraphCompilationError(GraflowError):
    """The graph the DSL built is not valid."""


class DuplicateTaskError(GraphCompilationError):
    """Two different tasks share one id in one workflow."""

    def __init__(self, task_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or (
                f"Duplicate task id '{task_id}': another task with this id is already in the workflow. "
                f"Give one of them another id (@task('other_id')) or bind an instance with "
                f"{task_id}(task_id='{task_id}_2', ...)."
            )
        )
        self.task_id = task_id


class ConfigError(GraflowError):
    """A setting, option or argument is wrong."""


class PluginNotFoundError(ConfigError):
    """No installed plugin provides the requested name.

    ``kind`` is the registry (``task handler``, ``channel``, ...), ``name`` the requested name and
    ``installed`` the names that are available.
    """

    def __init__(self, kind: str, name: str, installed: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.installed = sorted(installed)
        listing = ", ".join(self.installed) or "none"
        message = f"No {kind} named '{name}'. Installed: {listing}."
        if hint:
            message += f" {hint}"
        super().__init__(message)


class CheckpointError(GraflowError):
    """A checkpoint could not be written or read (missing part, bad checksum, unknown schema)."""

    def __init__(self, message: str, path: Any = None) -> None:
        super().__init__(message)
        self.path = path


__all__ = [
    "CheckpointError",
    "ConfigError",
    "CycleLimitExceededError",
    "DuplicateTaskError",
    "GraflowError",
    "GraflowRuntimeError",
    "GraflowWorkflowCanceledError",
    "GraphCompilationError",
    "ParallelGroupError",
    "PluginNotFoundError",
    "RetryLimitExceededError",
    "TaskError",
    "TaskTimeoutError",
]
