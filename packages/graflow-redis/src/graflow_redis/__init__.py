"""Graflow on Redis.

Installing this distribution adds, with no import needed:

* the ``redis`` channel backend (:class:`~graflow_redis.channel.RedisChannel`), shared by every
  process of a run: ``ExecutionContext.create(graph, "start", channel_backend="redis", config={...})``;
* the ``redis`` task queue and coordinator (workers fed through Redis, distributed parallel groups);
* the ``redis://`` / ``rediss://`` checkpoint store (:class:`~graflow_redis.checkpoint_store.RedisCheckpointStore`);
* the ``graflow dlq`` command for the dead-letter queue.

Graflow finds them through the ``redis`` entry point in the ``graflow`` group, which points at
:mod:`graflow_redis.plugin`. The names below are imported on first use, so ``import graflow_redis``
stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from graflow_redis.__about__ import __version__

_EXPORTS = {
    "RedisChannel": "graflow_redis.channel",
    "RedisCheckpointStore": "graflow_redis.checkpoint_store",
    "RedisConnectionError": "graflow_redis.connection",
    "RedisSettings": "graflow_redis.connection",
    "RedisTaskQueue": "graflow_redis.queue",
    "RedisCoordinator": "graflow_redis.coordinator",
}


def __getattr__(attr: str) -> Any:
    module = _EXPORTS.get(attr)
    if module is None:
        raise AttributeError(f"module 'graflow_redis' has no attribute {attr!r}")
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*sorted(_EXPORTS), "__version__"]
