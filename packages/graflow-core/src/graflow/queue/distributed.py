"""``DistributedTaskQueue`` lives in the graflow-redis package; this path keeps upstream imports working."""

from typing import Any

from graflow._lazy import plugin_attribute


def __getattr__(attr: str) -> Any:
    return plugin_attribute(attr, "DistributedTaskQueue", "graflow_redis.queue", "task_queue", "distributed")
