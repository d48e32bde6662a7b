"""Every hook a Graflow plugin can implement.

A plugin is any object (usually a module) whose functions are marked with :data:`hookimpl` and that
is either declared as an entry point in the ``graflow`` group of its distribution or registered
in-process with :func:`graflow.plugins.register`. Core's own built-ins are a plugin too
(:mod:`graflow.core_plugin`), registered through these very hooks.

Registration hooks return a list of classes. Each class carries a ``name`` attribute (optionally
``aliases``); checkpoint stores carry ``schemes`` instead. Every plugin's answer is collected (no
"first result wins"); two plugins that register one name are an error naming both.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "graflow"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def graflow_register_task_handlers() -> list[type]:
    """Return :class:`graflow.core.handler.TaskHandler` subclasses, each with a ``name``.

    ``@task(handler=name, handler_kwargs={...})`` instantiates the class with ``handler_kwargs``.
    """


@hookspec
def graflow_register_channels() -> list[type]:
    """Return :class:`graflow.channels.base.Channel` subclasses, each with a ``name``.

    ``ExecutionContext.create(..., channel_backend=name, config={...})`` instantiates the class as
    ``cls(session_id, **config)``.
    """


@hookspec
def graflow_register_task_queues() -> list[type]:
    """Return :class:`graflow.queue.base.TaskQueue` subclasses, each with a ``name``."""


@hookspec
def graflow_register_coordinators() -> list[type]:
    """Return :class:`graflow.coordination.coordinator.Coordinator` subclasses, each with a ``name``.

    ``group.with_execution(backend=name, backend_config={...})`` instantiates the class as
    ``cls(**backend_config)``; the instance runs the members of parallel groups.
    """


@hookspec
def graflow_register_group_policies() -> list[type]:
    """Return :class:`graflow.core.handlers.group_policy.GroupExecutionPolicy` subclasses.

    Each carries a ``name`` (and optionally ``aliases``); ``group.with_policy(name, **kwargs)``
    instantiates the class with ``kwargs``.
    """


@hookspec
def graflow_register_checkpoint_stores() -> list[type]:
    """Return :class:`graflow.checkpoint_store.CheckpointStore` subclasses.

    Each carries ``schemes`` (a tuple such as ``("s3",)``); the empty scheme ``""`` means plain paths.
    """


@hookspec
def graflow_register_commands() -> list[type]:
    """Return CLI command classes, each with ``name``, ``help``, ``add_arguments(parser)`` and
    ``run(args) -> int``; they become ``graflow <name>`` sub-commands."""


@hookspec
def graflow_on_event(event: str, payload: dict[str, Any]) -> None:
    """Observe an engine event; the return value is ignored.

    Events: ``workflow.started``, ``workflow.finished``, ``task.started``, ``task.succeeded``,
    ``task.failed``, ``task.retrying``, ``group.finished``, ``checkpoint.written``,
    ``worker.started``, ``worker.stopped``. ``payload`` always has ``session_id``; task events
    have ``task_id`` (and ``duration``, ``error`` where they apply). Observers must be quick and
    must not raise: an observer's exception is logged and swallowed so it never fails a run.
    """
