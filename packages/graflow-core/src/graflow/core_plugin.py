"""Core's built-ins, registered through the same hooks as any third-party plugin.

Imports happen inside the hooks so that ``import graflow`` stays cheap.
"""

from __future__ import annotations

from graflow.hookspecs import hookimpl


@hookimpl
def graflow_register_task_handlers() -> list[type]:
    from graflow.core.handlers.direct import DirectTaskHandler
    from graflow.core.handlers.subprocess import SubprocessTaskHandler

    return [DirectTaskHandler, SubprocessTaskHandler]


@hookimpl
def graflow_register_channels() -> list[type]:
    from graflow.channels.memory_channel import MemoryChannel

    return [MemoryChannel]


@hookimpl
def graflow_register_task_queues() -> list[type]:
    from graflow.queue.local import LocalTaskQueue

    return [LocalTaskQueue]


@hookimpl
def graflow_register_coordinators() -> list[type]:
    from graflow.coordination.direct import DirectCoordinator
    from graflow.coordination.threading_coordinator import ThreadingCoordinator

    return [DirectCoordinator, ThreadingCoordinator]


@hookimpl
def graflow_register_group_policies() -> list[type]:
    from graflow.core.handlers.group_policy import (
        AtLeastNGroupPolicy,
        BestEffortGroupPolicy,
        CriticalGroupPolicy,
        StrictGroupPolicy,
    )

    return [StrictGroupPolicy, BestEffortGroupPolicy, AtLeastNGroupPolicy, CriticalGroupPolicy]


@hookimpl
def graflow_register_checkpoint_stores() -> list[type]:
    from graflow import checkpoint_store

    local = getattr(checkpoint_store, "LocalFileCheckpointStore", None)
    return [local] if local is not None else []


@hookimpl
def graflow_register_commands() -> list[type]:
    from graflow.cli.checkpoints_cmd import CheckpointsCommand
    from graflow.worker.cli import WorkerCommand

    return [CheckpointsCommand, WorkerCommand]
