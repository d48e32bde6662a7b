"""The plugin module Graflow loads through the ``redis`` entry point of the ``graflow`` group.

Every hook imports its module on first call, so loading the plugin costs nothing and a run that
never touches Redis never imports redis-py.
"""

from __future__ import annotations

import importlib

from graflow.hookspecs import hookimpl


def _classes(module: str, *names: str) -> list[type]:
    """The classes ``names`` of ``graflow_redis.<module>``.

    A module of this package that is not there at all (a partial checkout) registers nothing
    instead of breaking every lookup; any other import error is a real bug and propagates.
    """
    qualified = f"graflow_redis.{module}"
    try:
        loaded = importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return []
        raise
    return [getattr(loaded, name) for name in names]


@hookimpl
def graflow_register_channels() -> list[type]:
    return _classes("channel", "RedisChannel")


@hookimpl
def graflow_register_checkpoint_stores() -> list[type]:
    return _classes("checkpoint_store", "RedisCheckpointStore")


@hookimpl
def graflow_register_task_queues() -> list[type]:
    return _classes("queue", "RedisTaskQueue")


@hookimpl
def graflow_register_coordinators() -> list[type]:
    return _classes("coordinator", "RedisCoordinator")


@hookimpl
def graflow_register_commands() -> list[type]:
    return _classes("dlq_cmd", "DlqCommand")
