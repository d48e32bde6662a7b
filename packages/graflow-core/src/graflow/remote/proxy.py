"""What a task sees inside a runner: a task context and a channel that call back to the host.

Every channel operation and every control call (``next_task``, ``next_iteration``,
``terminate_workflow``, ``cancel_workflow``, ``checkpoint``, ``get_result``) is sent to the host,
carried out there on the real objects, and answered; so channel reads are current and control
calls take effect exactly as in-process. Facts about the run that cannot change while the task
runs (ids, counters) come with the task and are answered locally.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from graflow.channels.base import Channel

Call = Callable[[str, str, tuple, dict], Any]


class RemoteChannel(Channel):
    """A channel whose every operation runs on the host's channel."""

    name = "remote"

    def __init__(self, call: Call, name: str = "remote") -> None:
        self._call = call
        self.name = name

    def _host(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("channel", method, args, kwargs)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._host("set", key, value, ttl)

    def get(self, key: str, default: Any = None) -> Any:
        return self._host("get", key, default)

    def delete(self, key: str) -> bool:
        return self._host("delete", key)

    def exists(self, key: str) -> bool:
        return self._host("exists", key)

    def keys(self) -> list[str]:
        return self._host("keys")

    def clear(self) -> None:
        self._host("clear")

    def append(self, key: str, value: Any, ttl: float | None = None) -> int:
        return self._host("append", key, value, ttl)

    def prepend(self, key: str, value: Any, ttl: float | None = None) -> int:
        return self._host("prepend", key, value, ttl)

    def atomic_add(self, key: str, amount: int | float = 1) -> int | float:
        return self._host("atomic_add", key, amount)

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float | None = 10.0) -> Iterator[None]:
        # The host only ever *tries* the lock, so it keeps serving other calls of this task (the
        # holder's release among them) while this one waits; the waiting happens here.
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            token = self._call("lock", "try_acquire", (key,), {})
            if token is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"Could not take the channel lock {key!r} within {timeout} s")
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            self._call("lock", "release", (token,), {})

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self._host("snapshot")

    def restore(self, snapshot: Any) -> None:
        self._host("restore", snapshot)

    def get_many(self, keys: Any, default: Any = None) -> dict[str, Any]:
        return self._host("get_many", list(keys), default)

    def set_many(self, items: Any, ttl: float | None = None) -> None:
        self._host("set_many", dict(items), ttl)

    def __reduce__(self) -> Any:
        raise TypeError("A remote task's channel cannot be pickled; read the values you need from it instead")


class RemoteTaskContext:
    """The ``context`` argument of a task running in a runner (same API as TaskExecutionContext)."""

    def __init__(self, call: Call, info: dict[str, Any]) -> None:
        self._call = call
        self.task_id: str = info["task_id"]
        self.session_id: str = info["session_id"]
        self.cycle_count: int = info["cycle_count"]
        self.max_cycles: int = info["max_cycles"]
        self.retry_count: int = info["retry_count"]
        self.max_retries: int = info["max_retries"]
        self.start_time = time.time()
        self.local_data: dict[str, Any] = {}
        self._channel = RemoteChannel(call, info.get("channel_name", "remote"))

    # -- information -----------------------------------------------------------------------------------
    def can_iterate(self) -> bool:
        return self.cycle_count < self.max_cycles

    def elapsed_time(self) -> float:
        return time.time() - self.start_time

    def get_channel(self) -> Channel:
        return self._channel

    def get_typed_channel(self, message_type: Any) -> Any:
        from graflow.channels.typed import TypedChannel

        return TypedChannel(self._channel, message_type)

    def get_result(self, node: str, default: Any = None) -> Any:
        return self._call("context", "get_result", (node, default), {})

    def set_local_data(self, key: str, value: Any) -> None:
        self.local_data[key] = value

    def get_local_data(self, key: str, default: Any = None) -> Any:
        return self.local_data.get(key, default)

    @property
    def execution_context(self) -> Any:
        raise AttributeError(
            f"Task '{self.task_id}' runs in a remote runner, where the run's ExecutionContext does not exist; "
            f"use the context's own methods (get_channel(), get_result(), next_task(), ...) instead"
        )

    @property
    def graph(self) -> Any:
        raise AttributeError(f"Task '{self.task_id}' runs in a remote runner; the run's graph stays on the host")

    # -- control ---------------------------------------------------------------------------------------
    def next_task(self, executable: Any, goto: bool = False) -> str:
        nodes, edges, entry = _spawn_parts(executable)
        return self._call("context", "next_task", (nodes, edges, entry, goto), {})

    def next_iteration(self, data: Any = None) -> str:
        return self._call("context", "next_iteration", (data,), {})

    def terminate_workflow(self, message: str = "") -> None:
        self._call("context", "terminate_workflow", (message,), {})

    def cancel_workflow(self, message: str = "") -> None:
        self._call("context", "cancel_workflow", (message,), {})

    def checkpoint(
        self, metadata: dict[str, Any] | None = None, *, path: str | None = None, deferred: bool = True
    ) -> Any:
        return self._call("context", "checkpoint", (metadata,), {"path": path, "deferred": deferred})

    def __repr__(self) -> str:
        return f"RemoteTaskContext(task_id={self.task_id!r}, session_id={self.session_id!r})"


def _spawn_parts(executable: Any) -> tuple[list[Any], list[tuple[str, str]], str]:
    """Split a task made in the runner into nodes and edges (pickling a task keeps no edges)."""
    from graflow.core.task import Executable, SequentialTask, collect_nodes

    if not isinstance(executable, Executable):
        raise TypeError(f"next_task() takes a task, got {type(executable).__name__}")
    entry = executable.leftmost if isinstance(executable, SequentialTask) else executable
    nodes = collect_nodes(executable)
    edges = [(node.task_id, succ.task_id) for node in nodes for succ in node._pending_edges]
    return nodes, edges, entry.task_id
