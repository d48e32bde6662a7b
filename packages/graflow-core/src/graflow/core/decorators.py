"""``@task``: turn a plain function into a :class:`~graflow.core.task.TaskWrapper`.

Forms: ``@task``, ``@task()``, ``@task("id")``, ``@task(id="id", **options)`` and ``task(fn)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from graflow.core.task import TaskWrapper
from graflow.exceptions import ConfigError

if TYPE_CHECKING:
    from graflow.core.retry import RetryPolicy

F = TypeVar("F", bound=Callable[..., Any])


@overload
def task(id_or_func: F) -> TaskWrapper: ...


@overload
def task(
    id_or_func: str | None = None,
    *,
    id: str | None = None,
    inject_context: bool = False,
    handler: str | None = None,
    handler_kwargs: dict[str, Any] | None = None,
    resolve_keyword_args: bool = True,
    max_cycles: int | None = None,
    max_retries: int | None = None,
    retry_policy: RetryPolicy | None = None,
    timeout: float | None = None,
    queue: str | None = None,
) -> Callable[[F], TaskWrapper]: ...


def task(
    id_or_func: Any = None,
    *,
    id: str | None = None,  # noqa: A002 - upstream's keyword
    inject_context: bool = False,
    handler: str | None = None,
    handler_kwargs: dict[str, Any] | None = None,
    resolve_keyword_args: bool = True,
    max_cycles: int | None = None,
    max_retries: int | None = None,
    retry_policy: RetryPolicy | None = None,
    timeout: float | None = None,
    queue: str | None = None,
) -> Any:
    """Make a task of a function.

    Options: ``inject_context`` (pass a :class:`TaskExecutionContext` as first argument),
    ``handler`` / ``handler_kwargs`` (where it runs: ``"direct"``, ``"docker"``, ``"ssh"``, any plugin),
    ``resolve_keyword_args`` (fill parameters from results and the channel; default True),
    ``max_cycles``, ``max_retries``, ``retry_policy``, ``timeout`` (seconds) and ``queue`` (the
    worker queue a distributed run sends it to). ``async def`` functions are awaited.
    """
    options = {
        "inject_context": inject_context,
        "handler_type": handler,
        "handler_kwargs": handler_kwargs,
        "resolve_keyword_args": resolve_keyword_args,
        "max_cycles": max_cycles,
        "max_retries": max_retries,
        "retry_policy": retry_policy,
        "timeout": timeout,
        "queue": queue,
    }
    if callable(id_or_func) and not isinstance(id_or_func, str):
        return _make(id_or_func, id, options)
    if id_or_func is not None and not isinstance(id_or_func, str):
        raise ConfigError(f"@task takes a function or a task id string, got {type(id_or_func).__name__}")
    if id_or_func is not None and id is not None and id_or_func != id:
        raise ConfigError(f"@task got two ids: {id_or_func!r} and id={id!r}")
    task_id = id_or_func or id

    def decorator(func: F) -> TaskWrapper:
        return _make(func, task_id, options)

    return decorator


def _make(func: Callable[..., Any], task_id: str | None, options: dict[str, Any]) -> TaskWrapper:
    if isinstance(func, TaskWrapper):
        raise ConfigError(f"'{func.task_id}' is already a task; apply @task once")
    wrapper = TaskWrapper(task_id or getattr(func, "__name__", "task"), func, **options)
    wrapper.__module__ = getattr(func, "__module__", __name__)
    return wrapper


__all__ = ["task"]
