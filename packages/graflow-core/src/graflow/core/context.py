"""Run state: :class:`ExecutionContext` (one per run) and :class:`TaskExecutionContext` (one per task run).

The execution context holds everything a checkpoint must capture: the graph, the channel, the
pending queue, completed tasks, cycle and retry counters, join progress and group progress. The
task context is what a task with ``inject_context=True`` receives; its control calls
(``next_task``, ``next_iteration``, ``terminate_workflow``, ``cancel_workflow``, ``checkpoint``)
are recorded on it and carried out by the engine when the task returns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from graflow.core.cycle import CycleController
from graflow.core.graph import TaskGraph
from graflow.core.task import NO_DATA, Executable, SequentialTask
from graflow.exceptions import ConfigError, CycleLimitExceededError, GraflowWorkflowCanceledError

if TYPE_CHECKING:
    from graflow.channels.base import Channel
    from graflow.channels.typed import TypedChannel
    from graflow.queue.base import TaskQueue

T = TypeVar("T")

logger = logging.getLogger(__name__)

_local = threading.local()


class TaskExecutionContext:
    """What a running task sees of its run, and how it steers the run."""

    def __init__(self, task_id: str, execution_context: ExecutionContext) -> None:
        self.task_id = task_id
        self.execution_context = execution_context
        self.start_time = time.time()
        self.local_data: dict[str, Any] = {}
        # control requests, applied by the engine after the task returns
        self.spawned: list[str] = []
        self.skip_successors = False
        self.iterate_data: Any = NO_DATA
        self.terminate_message: str | None = None
        self.cancel_message: str | None = None
        self.checkpoint_request: dict[str, Any] | None = None
        self.input_data: Any = NO_DATA

    # -- information -----------------------------------------------------------------------------------
    @property
    def session_id(self) -> str:
        return self.execution_context.session_id

    @property
    def graph(self) -> TaskGraph:
        return self.execution_context.graph

    @property
    def cycle_count(self) -> int:
        """How many times this task has started in this run, this run included (1 the first time)."""
        return self.execution_context.cycle_counts.get(self.task_id, 0)

    @property
    def max_cycles(self) -> int:
        return self.execution_context.max_cycles_for(self.task_id)

    @property
    def retry_count(self) -> int:
        """Retries already made for this visit (0 on the first attempt)."""
        return self.execution_context.retry_counts.get(self.task_id, 0)

    @property
    def max_retries(self) -> int:
        return self.execution_context.retry_policy_for(self.task_id).max_retries

    def can_iterate(self) -> bool:
        return self.cycle_count < self.max_cycles

    def elapsed_time(self) -> float:
        return time.time() - self.start_time

    def get_channel(self) -> Channel:
        return self.execution_context.channel

    def get_typed_channel(self, message_type: type[T]) -> TypedChannel[T]:
        from graflow.channels.typed import TypedChannel

        return TypedChannel(self.execution_context.channel, message_type)

    def get_result(self, node: str, default: Any = None) -> Any:
        return self.execution_context.get_result(node, default)

    def set_local_data(self, key: str, value: Any) -> None:
        self.local_data[key] = value

    def get_local_data(self, key: str, default: Any = None) -> Any:
        return self.local_data.get(key, default)

    # -- control ---------------------------------------------------------------------------------------
    def next_task(self, executable: Executable, goto: bool = False) -> str:
        """Queue ``executable``.

        A new task is added to the graph (with the edges wired from it) and this task's successors
        still run; an existing task is a jump and this task's successors are skipped;
        ``goto=True`` skips them in both cases.
        """
        if not isinstance(executable, Executable):
            raise ConfigError(f"next_task() takes a task, got {type(executable).__name__}")
        ctx = self.execution_context
        if isinstance(executable, SequentialTask):
            entry = executable.leftmost
            for node in executable._nodes():
                ctx.adopt(node)
        else:
            entry = executable
        graph = ctx.graph
        node = graph.get_node(entry.task_id) if graph.has_node(entry.task_id) else None
        existed = node is entry
        if node is not None and not existed and _respawn_of(node, entry, ctx):
            # The same dynamic task spawned again: a member restarted after a resume re-runs its
            # next_task() calls. Queue the task already in the graph, as the first spawn did.
            self.spawned.append(node.task_id)
            if goto:
                self.skip_successors = True
            return node.task_id
        if not existed:
            ctx.adopt(entry)
        self.spawned.append(entry.task_id)
        if goto or existed:
            self.skip_successors = True
        return entry.task_id

    def next_iteration(self, data: Any = None) -> str:
        """Run this task again with ``data`` (passed after the context argument when not None).

        Its successors run once, after the final iteration (the run that does not call this).
        """
        count = self.cycle_count
        limit = self.max_cycles
        if count >= limit:
            raise CycleLimitExceededError(self.task_id, count + 1, limit)
        self.iterate_data = data
        return self.task_id

    def terminate_workflow(self, message: str = "") -> None:
        """Finish this task, then end the run normally; queued tasks are dropped."""
        self.terminate_message = message or "terminated"

    def cancel_workflow(self, message: str = "") -> None:
        """End the run with :class:`GraflowWorkflowCanceledError` once this task returns."""
        self.cancel_message = message or "canceled"

    def checkpoint(
        self,
        metadata: dict[str, Any] | None = None,
        *,
        path: str | None = None,
        deferred: bool = True,
    ) -> tuple[str, Any] | None:
        """Save a checkpoint of the whole run.

        Deferred (the default): written by the engine right after this task completes, with its
        successors already queued. ``deferred=False``: written now, returning ``(path, metadata)``;
        resuming from it runs this task again.
        """
        if deferred:
            self.checkpoint_request = {"metadata": dict(metadata or {}), "path": path}
            return None
        from graflow.core.checkpoint import CheckpointManager

        return CheckpointManager.create_checkpoint(
            self.execution_context, path=path, metadata=metadata, _current_task=self.task_id, _mode="immediate"
        )

    def __repr__(self) -> str:
        return f"TaskExecutionContext(task_id={self.task_id!r}, session_id={self.session_id!r})"


def _respawn_of(node: Executable, entry: Executable, ctx: ExecutionContext) -> bool:
    """Whether ``entry`` is ``node`` made again: a task added at run time, with the same function."""
    if node.task_id not in ctx.extra_roots or type(node) is not type(entry):
        return False
    old, new = getattr(node, "func", None), getattr(entry, "func", None)
    if old is None or new is None:
        return False
    return old is new or (
        getattr(old, "__module__", None) == getattr(new, "__module__", None)
        and getattr(old, "__qualname__", None) == getattr(new, "__qualname__", None)
    )


class ExecutionContext:
    """State of one workflow run. Build it with :meth:`create`; run it with ``WorkflowEngine().execute(ctx)``."""

    def __init__(
        self,
        graph: TaskGraph,
        start_node: str | list[str] | None = None,
        max_steps: int = 10000,
        default_max_cycles: int = 10,
        default_max_retries: int = 0,
        channel_backend: str = "memory",
        config: dict[str, Any] | None = None,
        session_id: str | None = None,
        coordinator: Any = None,
        coordinator_config: dict[str, Any] | None = None,
        channel: Channel | None = None,
    ) -> None:
        if not isinstance(graph, TaskGraph):
            raise ConfigError(f"ExecutionContext needs a TaskGraph, got {type(graph).__name__}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError(f"max_steps must be a whole number >= 1, got {max_steps!r}")
        self.graph = graph
        self.session_id = session_id or uuid.uuid4().hex
        self.max_steps = max_steps
        self.default_max_cycles = default_max_cycles
        self.default_max_retries = default_max_retries
        self.channel_backend = channel_backend
        self.config = dict(config or {})
        if channel is None:
            from graflow.channels.factory import ChannelFactory

            channel = ChannelFactory.create_channel(channel_backend, self.session_id, **self.config)
        self.channel = channel
        if coordinator is not None:
            from graflow.coordination.coordinator import backend_name
            from graflow.plugins import get_coordinator_class

            coordinator = backend_name(coordinator)
            get_coordinator_class(coordinator)
        self.default_coordinator: str | None = coordinator
        self.default_coordinator_config = dict(coordinator_config or {})

        if start_node is None:
            starts = graph.get_start_nodes()
        elif isinstance(start_node, str):
            starts = [start_node]
        else:
            starts = list(start_node)
        for s in starts:
            if not graph.has_node(s):
                raise ConfigError(
                    f"Start task '{s}' is not in the workflow. Tasks: {', '.join(sorted(graph.nodes)) or 'none'}"
                )
        if not starts and len(graph):
            raise ConfigError(
                "The workflow has no source task (every task has a predecessor, e.g. a loop). "
                "Say where to begin: wf.execute(start='task_id')."
            )
        self.start_nodes: list[str] = starts
        from graflow.queue.local import LocalTaskQueue

        self.task_queue: TaskQueue = LocalTaskQueue(self, starts)
        self.steps = 0
        self.completed_tasks: set[str] = set()
        self.cycle_counts: dict[str, int] = {}
        self.retry_counts: dict[str, int] = {}
        self.iteration_data: dict[str, Any] = {}
        self.join_arrivals: dict[str, set[str]] = {}
        self.group_progress: dict[str, dict[str, Any]] = {}
        # group id -> member id -> {task id of the member's branch: its cycle count when the group started}
        self.group_cycle_base: dict[str, dict[str, dict[str, int]]] = {}
        self.active_groups: list[str] = []
        self.extra_roots: list[str] = []
        self.last_checkpoint_path: str | None = None
        self.checkpoint_metadata: Any = None
        self.terminated: str | None = None
        self.terminate_result: Any = None
        self._owns_graph = False
        self.canceled: tuple[str, str | None] | None = None
        self.last_result: Any = None
        self.state_lock = threading.RLock()
        self._cancel_listeners: list[Callable[[], None]] = []

    @classmethod
    def create(
        cls,
        graph: TaskGraph,
        start_node: str | list[str] | None = None,
        max_steps: int = 10000,
        default_max_cycles: int = 10,
        default_max_retries: int = 0,
        channel_backend: str = "memory",
        config: dict[str, Any] | None = None,
        **options: Any,
    ) -> ExecutionContext:
        """Upstream's constructor. ``options``: ``session_id``, ``coordinator`` (a context-wide
        default coordinator for every parallel group), ``coordinator_config``, ``channel``."""
        return cls(
            graph,
            start_node,
            max_steps=max_steps,
            default_max_cycles=default_max_cycles,
            default_max_retries=default_max_retries,
            channel_backend=channel_backend,
            config=config,
            **options,
        )

    # -- queue -----------------------------------------------------------------------------------------
    @property
    def queue(self) -> TaskQueue:
        return self.task_queue

    def add_to_queue(self, executable: Executable | str) -> None:
        task_id = executable if isinstance(executable, str) else executable.task_id
        self.task_queue.enqueue(task_id)

    def is_completed(self) -> bool:
        return self.task_queue.is_empty()

    def get_next_task(self) -> str | None:
        return self.task_queue.dequeue()

    def increment_step(self) -> None:
        self.steps += 1

    def mark_task_completed(self, task_id: str) -> None:
        self.completed_tasks.add(task_id)

    def adopt(self, executable: Executable) -> None:
        """Add a task created at run time to the graph, with the edges wired from it meanwhile."""
        from graflow.core.task import ParallelGroup, collect_nodes

        with self.state_lock:
            if not self._owns_graph:
                # The workflow's graph stays as the user built it; this run gets its own copy.
                self.graph = self.graph.copy()
                self._owns_graph = True
            graph = self.graph
            order = collect_nodes(executable)
            for node in order:
                if not (graph.has_node(node.task_id) and graph.get_node(node.task_id) is node):
                    graph.add_node(node)
                    node._graph = graph
            for node in order:
                if isinstance(node, ParallelGroup):
                    node._claim_members()
                for succ in node._pending_edges:
                    graph.add_edge(node.task_id, succ.task_id)
                node._pending_edges = []
            self.extra_roots.append(executable.task_id)

    # -- results and channel ---------------------------------------------------------------------------
    def set_result(self, task_id: str, result: Any) -> None:
        self.channel.set(task_id + ".__result__", result)

    def get_result(self, task_id: str, default: Any = None) -> Any:
        return self.channel.get(task_id + ".__result__", default)

    def get_channel(self) -> Channel:
        return self.channel

    # -- limits ----------------------------------------------------------------------------------------
    def max_cycles_for(self, task_id: str) -> int:
        node = self.graph._nodes.get(task_id)
        limit = getattr(node, "max_cycles", None)
        return limit if limit is not None else self.default_max_cycles

    def retry_policy_for(self, task_id: str) -> Any:
        from graflow.core.retry import RetryPolicy

        node = self.graph._nodes.get(task_id)
        policy = getattr(node, "retry_policy", None)
        if policy is not None:
            return policy
        retries = getattr(node, "max_retries", None)
        retries = retries if retries is not None else self.default_max_retries
        return RetryPolicy(max_retries=retries, initial_interval=0.0)

    @property
    def cycle_controller(self) -> CycleController:
        return CycleController(self.default_max_cycles, self.cycle_counts)

    # -- the task running in this thread -----------------------------------------------------------------
    @property
    def current_task_id(self) -> str | None:
        return getattr(_local, "task_id", None)

    @property
    def current_task_context(self) -> TaskExecutionContext | None:
        """The running task's context in this thread (made on first use for tasks without injection)."""
        tid = getattr(_local, "task_id", None)
        if tid is None:
            return None
        tctx = getattr(_local, "task_ctx", None)
        if tctx is None or tctx.task_id != tid:
            tctx = TaskExecutionContext(tid, self)
            _local.task_ctx = tctx
        return tctx

    def create_task_context(self, task_id: str) -> TaskExecutionContext:
        return TaskExecutionContext(task_id, self)

    def next_task(self, executable: Executable, goto: bool = False) -> str:
        return self._require_task_context("next_task").next_task(executable, goto=goto)

    def next_iteration(self, data: Any = None) -> str:
        return self._require_task_context("next_iteration").next_iteration(data)

    def terminate_workflow(self, message: str = "") -> None:
        self._require_task_context("terminate_workflow").terminate_workflow(message)

    def cancel_workflow(self, message: str = "") -> None:
        self._require_task_context("cancel_workflow").cancel_workflow(message)

    def _require_task_context(self, what: str) -> TaskExecutionContext:
        tctx = self.current_task_context
        if tctx is None:
            raise ConfigError(f"{what}() can only be called from inside a running task")
        return tctx

    def mark_canceled(self, message: str, task_id: str | None) -> None:
        """Record that the workflow was canceled and tell whoever is still running work for it (the
        remote handlers stop their runners: a sibling member in a container or on an SSH host)."""
        with self.state_lock:
            if self.canceled is None:
                self.canceled = (message, task_id)
            listeners = list(self._cancel_listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:  # one listener failing must not keep the others from running
                logger.exception("a cancellation listener failed")

    def on_cancel(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (once) when the workflow is canceled; returns a function that unregisters it.

        Registered after the cancellation, the listener runs at once.
        """
        with self.state_lock:
            canceled = self.canceled is not None
            if not canceled:
                self._cancel_listeners.append(listener)
        if canceled:
            listener()
            return lambda: None

        def remove() -> None:
            with self.state_lock, contextlib.suppress(ValueError):
                self._cancel_listeners.remove(listener)

        return remove

    def raise_if_canceled(self) -> None:
        if self.canceled is not None:
            message, task_id = self.canceled
            raise GraflowWorkflowCanceledError(message, task_id)

    # -- pickling (checkpoints, remote handlers) -----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("state_lock", None)
        state.pop("_cancel_listeners", None)
        state.pop("_join_cache", None)
        state.pop("task_dispatcher", None)  # a distributed queue's hook; re-attach it after resuming
        state["channel_snapshot"] = self.channel.snapshot()
        state["channel_class"] = type(self.channel)
        state["channel_name"] = getattr(self.channel, "name", self.session_id)
        portable_config = getattr(self.channel, "portable_config", None)
        if portable_config is not None:
            # Backends built from live objects (graflow-redis's redis_client=) say how to rebuild
            # them elsewhere, so the config pickles without connections or passwords.
            state["config"] = portable_config(self.config)
        state.pop("channel", None)
        queue = state.pop("task_queue")
        state["pending_tasks"] = queue.to_list()
        state["queue_class"] = type(queue)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        snapshot = state.pop("channel_snapshot")
        channel_class = state.pop("channel_class")
        channel_name = state.pop("channel_name")
        pending = state.pop("pending_tasks")
        state.pop("queue_class", None)
        self.__dict__.update(state)
        self.__dict__.setdefault("group_cycle_base", {})  # absent from schema 2.0 checkpoints
        self.state_lock = threading.RLock()
        self._cancel_listeners = []
        self._owns_graph = True
        self.channel = channel_class(channel_name, **self.config)
        self.channel.restore(snapshot)
        from graflow.queue.local import LocalTaskQueue

        self.task_queue = LocalTaskQueue(self, pending)

    def __repr__(self) -> str:
        return f"ExecutionContext(session_id={self.session_id!r}, steps={self.steps})"


def create_execution_context(
    graph: TaskGraph,
    start_node: str | list[str] | None = None,
    max_steps: int = 10000,
    **options: Any,
) -> ExecutionContext:
    """Shortcut for :meth:`ExecutionContext.create`."""
    return ExecutionContext.create(graph, start_node, max_steps=max_steps, **options)


__all__ = ["ExecutionContext", "TaskExecutionContext", "create_execution_context"]
