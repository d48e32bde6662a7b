"""Jobs: what a producer sends to a worker, how the worker runs it, and how the reply is applied.

The producer's engine stays the only scheduler. A distributed queue ships one of two jobs:

* :class:`TaskJob` — one task of a run whose every task goes to workers (graflow-redis's
  ``RedisTaskQueue(context)``). The worker runs the task with a task context that *records* the
  control calls (``next_task``, ``next_iteration``, ``terminate_workflow``, ``cancel_workflow``,
  deferred ``checkpoint``); :func:`apply_task_reply` replays them on the producer's
  :class:`~graflow.core.context.TaskExecutionContext`, so the engine carries them out exactly as
  for a local task (retries, joins and dynamic tasks included).
* :class:`MemberJob` — one member of a parallel group plus its chained tail, run on the worker the
  way the engine's ``_run_member`` runs it locally; :func:`apply_member_reply` folds the member's
  counters, dynamic tasks, terminate / cancel and checkpoint requests back into the producer's
  context and returns the member's :class:`~graflow.core.handler.TaskResult`.

Both read and write the run's channel through a channel shared across processes (the job carries
it pickled; a Redis channel reconnects on the worker). Exceptions travel with their type and the
worker's traceback; a value or error that cannot be pickled becomes a clear error instead.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import traceback
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from graflow.core.context import ExecutionContext, TaskExecutionContext, _local
from graflow.core.graph import TaskGraph
from graflow.core.handler import TaskResult
from graflow.core.task import NO_DATA, Executable, ParallelGroup, SequentialTask, collect_nodes
from graflow.exceptions import ConfigError, GraflowRuntimeError, TaskError, TaskTimeoutError

if TYPE_CHECKING:
    from graflow.channels.base import Channel
    from graflow.worker.broker import Broker

logger = logging.getLogger(__name__)

_CACHE_SIZE = 3
K = TypeVar("K")
V = TypeVar("V")


class _Recent(Generic[K, V]):
    """The ``_CACHE_SIZE`` most recently used entries, thread-safe."""

    def __init__(self) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > _CACHE_SIZE:
                self._items.popitem(last=False)


class JobError(GraflowRuntimeError):
    """A job could not even start on the worker (its graph is gone, its channel cannot be rebuilt)."""


class WorkerTaskTimeout(TaskTimeoutError):
    """Raised inside a task's thread by the worker's watchdog when the task overruns its timeout.

    The watchdog cannot pass arguments through ``PyThreadState_SetAsyncExc``, so the task id and
    timeout are looked up for the thread being interrupted.
    """

    def __init__(self, *args: Any) -> None:
        if args:
            super().__init__(*args)
            return
        task_id, timeout, elapsed = _pending_timeouts.pop(threading.get_ident(), ("?", 0.0, None))
        super().__init__(task_id, timeout, elapsed)


_pending_timeouts: dict[int, tuple[str, float, float | None]] = {}


# -- what a running job tells the worker -------------------------------------------------------------------
class RunState:
    """One job being run by one worker thread: which task runs now and until when.

    The worker's watchdog reads ``deadline``; jobs (and the engine-event observer for member
    chains) move it from task to task.
    """

    __slots__ = (
        "abandoned",
        "cancel_key",
        "context",
        "deadline",
        "graph",
        "started",
        "task_id",
        "thread_ident",
        "timed_out",
        "timeout",
    )

    def __init__(self) -> None:
        self.thread_ident = threading.get_ident()
        self.started = time.monotonic()
        self.task_id: str | None = None
        self.timeout: float | None = None
        self.deadline: float | None = None
        self.graph: TaskGraph | None = None
        self.timed_out: tuple[str, float] | None = None
        self.abandoned = False
        # a group member's run on this worker, and the key its producer sets to cancel it
        self.context: ExecutionContext | None = None
        self.cancel_key: str | None = None

    def begin_task(self, task_id: str, timeout: float | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout else None

    def end_task(self) -> None:
        self.deadline = None

    def begin_graph_task(self, task_id: str) -> None:
        """A task of the member chain started (engine event): its timeout comes from the graph."""
        node = self.graph._nodes.get(task_id) if self.graph is not None else None
        self.begin_task(task_id, getattr(node, "timeout", None))


# -- per-worker caches -------------------------------------------------------------------------------------
class WorkerRuntime:
    """Caches jobs share inside one worker process: channels (by their pickled form) and graphs."""

    def __init__(self, broker: Broker | None = None) -> None:
        from graflow.core.engine import WorkflowEngine

        self.broker = broker
        self.engine = WorkflowEngine()
        self._channels: _Recent[bytes, Channel] = _Recent()
        self._graphs: _Recent[str, TaskGraph] = _Recent()
        # per shipped group (by identity): {member id: its tail tasks that name another queue}
        self._foreign_tails: _Recent[int, tuple[ParallelGroup, dict[str, list[str]]]] = _Recent()

    def channel(self, blob: bytes) -> Channel:
        channel = self._channels.get(blob)
        if channel is not None:
            return channel
        try:
            channel = _loads(blob)
        except Exception as exc:
            raise JobError(f"The run's channel cannot be rebuilt on this worker: {type(exc).__name__}: {exc}") from exc
        self._channels.put(blob, channel)
        return channel

    def graph(self, key: str) -> TaskGraph:
        graph = self._graphs.get(key)
        if graph is not None:
            return graph
        blob = self.broker.load_blob(key) if self.broker is not None else None
        if blob is None:
            raise JobError(
                f"The workflow graph {key!r} is gone (the run finished, or its keys expired); the job cannot run."
            )
        try:
            graph = _loads(blob)
        except Exception as exc:
            raise JobError(f"The workflow graph {key!r} cannot be unpickled here: {type(exc).__name__}: {exc}") from exc
        self._graphs.put(key, graph)
        return graph


# -- tasks by reference ------------------------------------------------------------------------------------
def module_task_ref(task: Executable) -> tuple[str, str, str, dict[str, Any]] | None:
    """``(module, qualname, task id, options)`` when ``task`` is (a bound instance of) a module-level
    ``@task`` a worker can import by name; None when it must be shipped by value."""
    from graflow.core.task import TaskWrapper

    if type(task) is not TaskWrapper:
        return None
    func = task.func
    module_name = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<" in qualname:
        return None
    try:
        from cloudpickle import cloudpickle as _cp

        by_value = getattr(_cp, "_is_registered_pickle_by_value", None)
    except ImportError:  # pragma: no cover - cloudpickle is a core dependency
        by_value = None
    module = __import__("sys").modules.get(module_name)
    if module is None or (by_value is not None and by_value(module)):
        return None
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if not isinstance(target, TaskWrapper) or target.func is not func:
        return None
    for name in _OPTIONS:  # rebuilt from the module's task, so every option must be that task's
        mine, theirs = getattr(task, name, None), getattr(target, name, None)
        if mine is not theirs and mine != theirs:
            return None
    return (module_name, qualname, task.task_id, dict(task.bound_kwargs))


_bases: dict[tuple[str, str], Any] = {}


def task_by_name(module_name: str, qualname: str, task_id: str, bound: dict[str, Any]) -> Executable:
    """Unpickling side of :func:`module_task_ref`: import the module's task (once) and bind id and values."""
    key = (module_name, qualname)
    base = _bases.get(key)
    if base is None:
        import importlib

        try:
            target: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ImportError(
                f"task '{task_id}' is {module_name}.{qualname}, which this worker cannot import "
                f"({type(exc).__name__}: {exc}); install the workflow's code where the workers run, or ship it "
                f"with the tasks: pickle_by_value=['{module_name}'] on the queue or coordinator"
            ) from exc
        base = _bases[key] = target
    if task_id == base.task_id and bound == base.bound_kwargs:
        return base
    return base._bind(task_id, bound)


_OPTIONS = (
    "inject_context",
    "handler_type",
    "handler_kwargs",
    "resolve_keyword_args",
    "max_cycles",
    "max_retries",
    "retry_policy",
    "timeout",
    "queue",
)


# -- the worker-side task context -----------------------------------------------------------------------------
class WorkerTaskContext(TaskExecutionContext):
    """A task context that records ``next_task`` calls (with the edges wired from new tasks) for the producer."""

    def __init__(self, task_id: str, execution_context: ExecutionContext) -> None:
        super().__init__(task_id, execution_context)
        self.spawn_calls: list[bytes] = []

    def next_task(self, executable: Executable, goto: bool = False) -> str:
        if not isinstance(executable, Executable):
            raise ConfigError(f"next_task() takes a task, got {type(executable).__name__}")
        nodes = collect_nodes(executable)
        edges = [(node.task_id, succ.task_id) for node in nodes for succ in node._pending_edges]
        entry = executable.leftmost if isinstance(executable, SequentialTask) else executable
        try:
            call = _dumps((nodes, edges, entry.task_id, goto))
        except Exception as exc:
            raise TaskError(
                f"Task '{self.task_id}' called next_task({entry.task_id!r}) on a worker, but that task cannot be "
                f"pickled to send it to the producer: {type(exc).__name__}: {exc}",
                self.task_id,
            ) from exc
        self.spawn_calls.append(call)
        # The producer replays the call on the real graph (adding the task, or jumping to the one
        # already there); this worker only records it.
        self.spawned.append(entry.task_id)
        if goto:
            self.skip_successors = True
        return entry.task_id

    def checkpoint(
        self, metadata: dict[str, Any] | None = None, *, path: str | None = None, deferred: bool = True
    ) -> tuple[str, Any] | None:
        if not deferred:
            raise ConfigError(
                f"Task '{self.task_id}' asked for checkpoint(deferred=False) on a worker. The run's state lives on "
                f"the producer, so a worker can only request a deferred checkpoint: call checkpoint() without "
                f"deferred=False (it is written right after the task completes)."
            )
        return super().checkpoint(metadata, path=path, deferred=True)


# -- jobs --------------------------------------------------------------------------------------------------------
class Job:
    """Base of the jobs a worker runs. ``execute`` never raises: failures are part of the reply."""

    session_id: str = ""

    def describe(self) -> str:
        return type(self).__name__

    def execute(self, runtime: WorkerRuntime, state: RunState) -> JobReply:
        raise NotImplementedError


class TaskJob(Job):
    """Run one task of a run (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        task: Executable,
        channel_blob: bytes,
        *,
        data: Any = NO_DATA,
        cycle_count: int = 1,
        retry_count: int = 0,
        default_max_cycles: int = 10,
        default_max_retries: int = 0,
    ) -> None:
        self.session_id = session_id
        self.task = task
        self.task_id = task.task_id
        self.channel_blob = channel_blob
        self.has_data = data is not NO_DATA
        self.data = data if self.has_data else None
        self.cycle_count = cycle_count
        self.retry_count = retry_count
        self.default_max_cycles = default_max_cycles
        self.default_max_retries = default_max_retries

    def describe(self) -> str:
        return f"task '{self.task_id}' of session {self.session_id}"

    def execute(self, runtime: WorkerRuntime, state: RunState) -> JobReply:
        started = time.time()
        task = self.task
        tid = self.task_id
        reply = JobReply(tid)
        try:
            channel = runtime.channel(self.channel_blob)
            graph = TaskGraph(f"worker:{self.session_id}")
            graph.add_node(task)
            ctx = ExecutionContext(
                graph,
                [tid],
                default_max_cycles=self.default_max_cycles,
                default_max_retries=self.default_max_retries,
                channel=channel,
                session_id=self.session_id,
            )
            ctx.cycle_counts[tid] = self.cycle_count
            if self.retry_count:
                ctx.retry_counts[tid] = self.retry_count
            tctx = WorkerTaskContext(tid, ctx)
            data = self.data if self.has_data else NO_DATA
            tctx.input_data = data
            saved = (getattr(_local, "task_id", None), getattr(_local, "task_ctx", None))
            _local.task_id, _local.task_ctx = tid, tctx
            state.begin_task(tid, task.timeout)
            try:
                if task.handler_type in (None, "direct"):
                    reply.result = task.run_in(ctx, tctx, data)
                else:
                    reply.result = runtime.engine.get_handler(task).execute_task(task, ctx)
            finally:
                state.end_task()
                _local.task_id, _local.task_ctx = saved
            reply.spawn_calls = tctx.spawn_calls
            reply.skip_successors = tctx.skip_successors
            reply.iterate = tctx.iterate_data is not NO_DATA
            reply.iterate_data = tctx.iterate_data if reply.iterate else None
            reply.terminate_message = tctx.terminate_message
            reply.cancel_message = tctx.cancel_message
            reply.checkpoint_request = tctx.checkpoint_request
        except BaseException as exc:
            reply.fail(_timeout_error(exc, state))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        reply.duration = time.time() - started
        reply.started_at = started
        return reply


class MemberJob(Job):
    """Run one member of a parallel group and its chained tail (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        graph_key: str,
        group_id: str,
        member_id: str,
        channel_blob: bytes,
        *,
        cycle_counts: dict[str, int] | None = None,
        retry_counts: dict[str, int] | None = None,
        iteration_data: dict[str, Any] | None = None,
        default_max_cycles: int = 10,
        default_max_retries: int = 0,
        max_steps: int = 10000,
        cancel_key: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.graph_key = graph_key
        self.group_id = group_id
        self.member_id = member_id
        self.channel_blob = channel_blob
        self.cycle_counts = cycle_counts or {}
        self.retry_counts = retry_counts or {}
        self.iteration_data = iteration_data or {}
        self.default_max_cycles = default_max_cycles
        self.default_max_retries = default_max_retries
        self.max_steps = max_steps
        self.cancel_key = cancel_key

    def describe(self) -> str:
        return f"member '{self.member_id}' of group '{self.group_id}' (session {self.session_id})"

    def execute(self, runtime: WorkerRuntime, state: RunState) -> JobReply:
        started = time.time()
        reply = JobReply(self.member_id)
        try:
            graph = runtime.graph(self.graph_key)
            group = graph._nodes.get(self.group_id)
            if not isinstance(group, ParallelGroup):
                raise JobError(f"Group '{self.group_id}' is not in the shipped workflow graph")
            channel = runtime.channel(self.channel_blob)
            ctx = ExecutionContext(
                graph,
                [self.member_id],
                max_steps=max(1, self.max_steps),
                default_max_cycles=self.default_max_cycles,
                default_max_retries=self.default_max_retries,
                channel=channel,
                session_id=self.session_id,
            )
            ctx.cycle_counts.update(self.cycle_counts)
            ctx.retry_counts.update(self.retry_counts)
            ctx.iteration_data.update(self.iteration_data)
            router = _TailRouter.for_member(runtime, graph, group, self.member_id)
            if router is not None:
                ctx.task_dispatcher = router  # type: ignore[attr-defined]
            state.graph = graph
            state.context = ctx
            state.cancel_key = getattr(self, "cancel_key", None)  # absent from jobs of older producers
            try:
                outcome = runtime.engine._run_member(ctx, group, self.member_id)
            finally:
                state.end_task()
            if outcome.success:
                reply.result = outcome.result
            else:
                error = outcome.error or TaskError(outcome.error_message or "member failed", self.member_id)
                reply.fail(_timeout_error(error, state))
                reply.failed_task = outcome.metadata.get("failed_task", self.member_id)
            reply.checkpoint_requests = list(outcome.metadata.get("checkpoint_requests", ()))
            reply.cycle_counts = dict(ctx.cycle_counts)
            reply.retry_counts = dict(ctx.retry_counts)
            reply.iteration_data = dict(ctx.iteration_data)
            reply.completed = list(ctx.completed_tasks)
            reply.steps = ctx.steps
            reply.terminate_message = ctx.terminated
            reply.terminate_result = ctx.terminate_result
            reply.canceled = ctx.canceled
            if ctx.extra_roots:
                reply.graph_delta = _graph_delta(graph, ctx.graph, ctx.extra_roots)
        except BaseException as exc:
            reply.fail(_timeout_error(exc, state))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        reply.duration = time.time() - started
        reply.started_at = started
        return reply


def _timeout_error(exc: BaseException, state: RunState) -> BaseException:
    if isinstance(exc, WorkerTaskTimeout) or (state.timed_out is not None and isinstance(exc, TaskTimeoutError)):
        task_id, timeout = state.timed_out or (getattr(exc, "task_id", None) or "?", getattr(exc, "timeout", 0.0))
        return TaskTimeoutError(task_id, timeout, time.monotonic() - state.started)
    return exc


def _graph_delta(original: TaskGraph, graph: TaskGraph, roots: list[str]) -> bytes | None:
    """The nodes, edges and group ownership a member's dynamic tasks added, pickled for the producer."""
    new_nodes = [node for tid, node in graph._nodes.items() if tid not in original._nodes]
    edges = [(src, dst) for src, dsts in graph._succ.items() for dst in dsts if dst not in original._succ.get(src, ())]
    owners = {m: g for m, g in graph.owner_of.items() if original.owner_of.get(m) != g}
    try:
        return _dumps((new_nodes, edges, owners, list(roots)))
    except Exception as exc:  # noqa: BLE001 - the run still completes; only the producer's graph view is partial
        logger.warning("dynamic tasks of a member cannot be sent to the producer: %s", exc)
        return None


# -- replies ---------------------------------------------------------------------------------------------------
class JobReply:
    """What a worker sends back. Plain attributes; :func:`encode_reply` makes it safe to pickle."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.ok = True
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_type = ""
        self.error_message = ""
        self.traceback = ""
        self.failed_task: str | None = None
        self.duration = 0.0
        self.started_at = 0.0
        self.worker_id = ""
        # task-level control
        self.spawn_calls: list[bytes] = []
        self.skip_successors = False
        self.iterate = False
        self.iterate_data: Any = None
        self.terminate_message: str | None = None
        self.cancel_message: str | None = None
        self.checkpoint_request: dict[str, Any] | None = None
        # member-level state
        self.checkpoint_requests: list[tuple[str, dict[str, Any]]] = []
        self.cycle_counts: dict[str, int] = {}
        self.retry_counts: dict[str, int] = {}
        self.iteration_data: dict[str, Any] = {}
        self.completed: list[str] = []
        self.steps = 0
        self.terminate_result: Any = None
        self.canceled: tuple[str, str | None] | None = None
        self.graph_delta: bytes | None = None

    def fail(self, exc: BaseException) -> None:
        self.ok = False
        self.result = None
        self.error = exc
        self.error_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self.error_message = str(exc)
        self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def __reduce__(self) -> Any:
        state = dict(self.__dict__)
        state["error"] = _ExceptionBox.wrap(self.error) if self.error is not None else None
        return (_rebuild_reply, (state,))


def _rebuild_reply(state: dict[str, Any]) -> JobReply:
    reply = JobReply.__new__(JobReply)
    box = state.get("error")
    if isinstance(box, _ExceptionBox):
        state["error"] = box.unwrap(state.get("task_id", "?"), state.get("traceback", ""))
    reply.__dict__.update(state)
    return reply


class _ExceptionBox:
    """An exception in a form that unpickles without calling its ``__init__`` (which may need arguments)."""

    def __init__(self, cls: type, args: tuple, attrs: dict[str, Any], type_name: str, message: str) -> None:
        self.cls = cls
        self.args = args
        self.attrs = attrs
        self.type_name = type_name
        self.message = message

    @classmethod
    def wrap(cls, exc: BaseException) -> _ExceptionBox:
        klass = TaskTimeoutError if isinstance(exc, WorkerTaskTimeout) else type(exc)
        attrs = {k: v for k, v in getattr(exc, "__dict__", {}).items() if k != "execution_context"}
        return cls(klass, exc.args, attrs, f"{klass.__module__}.{klass.__qualname__}", str(exc))

    def unwrap(self, task_id: str, remote_traceback: str) -> BaseException:
        try:
            exc = self.cls.__new__(self.cls)
            exc.args = self.args
            exc.__dict__.update(self.attrs)
        except Exception:  # noqa: BLE001 - an exception type that refuses this: fall back to its text
            exc = _remote_error(task_id, self.type_name, self.message, remote_traceback)
        if remote_traceback and exc.__cause__ is None:
            exc.__cause__ = _remote_traceback(remote_traceback)
        return exc


def _remote_error(task_id: str, type_name: str, message: str, text: str) -> BaseException:
    try:
        from graflow.remote.handler import RemoteTaskError

        return RemoteTaskError(task_id, type_name, message, text)
    except ImportError:  # pragma: no cover - graflow.remote ships with core
        return TaskError(f"Task '{task_id}' raised {type_name}: {message}", task_id)


def _remote_traceback(text: str) -> BaseException:
    try:
        from graflow.remote.handler import RemoteTraceback

        return RemoteTraceback(text)
    except ImportError:  # pragma: no cover
        return RuntimeError("Worker traceback:\n" + text)


def encode_reply(reply: JobReply) -> bytes:
    """Pickle ``reply``; a result or error that cannot be pickled is replaced by an error saying so."""
    try:
        return _dumps(reply)
    except Exception as exc:  # noqa: BLE001 - the task's value is the problem; report it, do not crash the worker
        problem = exc
    if reply.ok:
        reply.fail(
            TaskError(
                f"The return value of task '{reply.task_id}' ({type(reply.result).__name__}) cannot be pickled to send "
                f"it back from the worker: {type(problem).__name__}: {problem}. Return plain data (or write the "
                f"object somewhere the next task can read it).",
                reply.task_id,
            )
        )
    else:
        text_only = TaskError(f"Task '{reply.task_id}' raised {reply.error_type}: {reply.error_message}", reply.task_id)
        reply.error = text_only
    for name in ("iterate_data", "terminate_result"):
        try:
            _dumps(getattr(reply, name))
        except Exception:  # noqa: BLE001
            setattr(reply, name, None)
    try:
        return _dumps(reply)
    except Exception as exc:  # noqa: BLE001 - last resort: an error reply with nothing but text
        bare = JobReply(reply.task_id)
        bare.fail(TaskError(f"The reply of task '{reply.task_id}' cannot be pickled: {exc}", reply.task_id))
        bare.worker_id = reply.worker_id
        return _dumps(bare)


def decode_reply(payload: bytes) -> JobReply:
    reply = _loads(payload)
    if not isinstance(reply, JobReply):
        raise JobError(f"expected a job reply, got {type(reply).__name__}")
    return reply


# -- producer side ---------------------------------------------------------------------------------------------
def apply_task_reply(ctx: ExecutionContext, tctx: TaskExecutionContext | None, reply: JobReply) -> Any:
    """Replay a :class:`TaskJob`'s control calls on the producer's task context; return the result or raise."""
    if not reply.ok:
        raise reply.error or TaskError(f"Task '{reply.task_id}' failed on a worker", reply.task_id)
    if tctx is None:
        return reply.result
    for call in reply.spawn_calls:
        nodes, edges, entry, goto = _loads(call)
        _spawn(tctx, nodes, edges, entry, goto)
    if reply.skip_successors:
        tctx.skip_successors = True
    if reply.iterate:
        tctx.iterate_data = reply.iterate_data
    if reply.terminate_message is not None:
        tctx.terminate_message = reply.terminate_message
    if reply.cancel_message is not None:
        tctx.cancel_message = reply.cancel_message
    if reply.checkpoint_request is not None:
        tctx.checkpoint_request = reply.checkpoint_request
    return reply.result


def _spawn(
    tctx: TaskExecutionContext, nodes: list[Executable], edges: list[tuple[str, str]], entry: str, goto: bool
) -> None:
    """``tctx.next_task`` with copies made on a worker: ids already in the graph mean those very tasks."""
    graph = tctx.execution_context.graph
    by_id: dict[str, Executable] = {}
    for node in nodes:
        node._pending_edges = []
        tid = node.task_id
        by_id[tid] = graph._nodes.get(tid, node)
    for src, dst in edges:
        source = by_id[src]
        if src not in graph._nodes and by_id[dst] not in source._pending_edges:
            source._pending_edges.append(by_id[dst])
    target = by_id[entry]
    tctx.next_task(target, goto=goto)


def apply_member_reply(ctx: ExecutionContext, member_id: str, reply: JobReply) -> TaskResult:
    """Fold a :class:`MemberJob`'s reply into the producer's context; return the member's TaskResult."""
    with ctx.state_lock:
        ctx.cycle_counts.update(reply.cycle_counts)
        for tid, count in reply.retry_counts.items():
            ctx.retry_counts[tid] = count
        for tid in reply.cycle_counts:
            if tid not in reply.retry_counts:
                ctx.retry_counts.pop(tid, None)
        ctx.iteration_data.update(reply.iteration_data)
        ctx.completed_tasks.update(reply.completed)
        ctx.steps += reply.steps
        if reply.graph_delta is not None:
            _apply_graph_delta(ctx, reply.graph_delta)
        if reply.terminate_message is not None and ctx.terminated is None:
            ctx.terminate_result = reply.terminate_result
            ctx.terminated = reply.terminate_message
    if reply.canceled is not None and ctx.canceled is None:
        # outside state_lock: the cancel listeners kill runners (a container kill can take a while)
        ctx.mark_canceled(*reply.canceled)
    stamp = reply.started_at or time.time()
    if reply.ok:
        outcome = TaskResult(member_id, True, None, None, reply.duration, stamp, reply.result)
    else:
        error = reply.error or TaskError(reply.error_message or "member failed", member_id)
        message = f"{type(error).__name__}: {error}"
        outcome = TaskResult(member_id, False, error, message, reply.duration, stamp)
        failed = reply.failed_task
        outcome.metadata["failed_task"] = failed if failed in ctx.graph._nodes else member_id
    if reply.checkpoint_requests:
        outcome.metadata["checkpoint_requests"] = reply.checkpoint_requests
    if reply.worker_id:
        outcome.metadata["worker"] = reply.worker_id
    return outcome


def _apply_graph_delta(ctx: ExecutionContext, blob: bytes) -> None:
    try:
        nodes, edges, owners, roots = _loads(blob)
    except Exception as exc:  # noqa: BLE001 - the member ran; only the producer's view of its dynamic tasks is lost
        logger.warning("cannot load the dynamic tasks a member added on a worker: %s", exc)
        return
    if not ctx._owns_graph:
        ctx.graph = ctx.graph.copy()
        ctx._owns_graph = True
    graph = ctx.graph
    for node in nodes:
        if node.task_id not in graph._nodes:
            graph.add_node(node)
            node._graph = graph
    for src, dst in edges:
        if src in graph._nodes and dst in graph._nodes:
            graph.add_edge(src, dst)
    for member, group in owners.items():
        if member in graph._nodes:
            graph.set_owner(member, group)
    ctx.extra_roots.extend(r for r in roots if r in graph._nodes)


def group_subgraph(graph: TaskGraph, group_id: str) -> TaskGraph:
    """The part of ``graph`` a group's :class:`MemberJob` needs: the group, its members' branches
    (nested groups included) and the edges among them.

    Shipping only this keeps the payload small and lets the rest of the workflow hold things that
    do not pickle (a task closing over a lock, say). Group objects are copied so that their
    reference to the full graph is not shipped along.
    """
    import copy

    members_of: dict[str, list[str]] = {}
    for member, owner in graph.owner_of.items():
        members_of.setdefault(owner, []).append(member)
    include = {group_id}
    stack = [group_id]
    while stack:
        for member in members_of.get(stack.pop(), ()):
            if member not in include:
                include.add(member)
                stack.append(member)
    sub = TaskGraph(graph.name)
    clones: dict[int, Executable] = {}
    for tid in [t for t in graph._nodes if t in include]:  # graph order: the same graph pickles the same
        node = graph._nodes[tid]
        if isinstance(node, ParallelGroup):
            clone = copy.copy(node)
            clone._graph = sub
            clones[id(node)] = clone
            node = clone
        sub._nodes[tid] = node
        sub._succ[tid] = [s for s in graph._succ.get(tid, ()) if s in include]
        sub._pred[tid] = [p for p in graph._pred.get(tid, ()) if p in include]
    for clone in clones.values():
        assert isinstance(clone, ParallelGroup)
        members: list[Executable] = []
        for member in clone.tasks:
            if isinstance(member, SequentialTask):
                chain = copy.copy(member)
                chain.tasks = [clones.get(id(t), t) for t in member.tasks]
                members.append(chain)
            else:
                members.append(clones.get(id(member), member))
        clone.tasks = members
    sub.owner_of = {m: g for m, g in graph.owner_of.items() if m in include}
    sub.version = graph.version
    return sub


def member_branch_state(ctx: ExecutionContext, branch: list[str]) -> dict[str, Any]:
    """The counters of the tasks of one member's branch (see ``member_branches``), for its :class:`MemberJob`."""
    cycles = ctx.cycle_counts
    retries = ctx.retry_counts
    iteration = ctx.iteration_data
    return {
        "cycle_counts": {n: cycles[n] for n in branch if n in cycles},
        "retry_counts": {n: retries[n] for n in branch if n in retries},
        "iteration_data": {n: iteration[n] for n in branch if n in iteration},
    }


def member_branches(group: ParallelGroup) -> dict[str, list[str]]:
    """``{member id: ids of the tasks its branch runs}`` (a chain member runs every task of the chain)."""
    branches: dict[str, list[str]] = {}
    for member in group.tasks:
        nodes = [node.task_id for node in member._nodes()] if isinstance(member, SequentialTask) else [member.task_id]
        branches[nodes[0]] = nodes
    return branches


class _TailRouter:
    """Runs a member's branch on this worker, except the tasks that name another queue than the
    member's: those go through the broker to a worker of their queue (``@task(queue="gpu")`` in a
    chain behind a CPU member runs on a GPU worker), and this thread waits for them, lending its slot.
    """

    def __init__(self, runtime: WorkerRuntime, home: str | None) -> None:
        self.runtime = runtime
        self.home = home

    @classmethod
    def for_member(
        cls, runtime: WorkerRuntime, graph: TaskGraph, group: ParallelGroup, member_id: str
    ) -> _TailRouter | None:
        foreign = cls._foreign_tails(runtime, graph, group).get(member_id)
        if not foreign:
            return None  # the common case: the whole branch runs here, at full speed
        if getattr(runtime.broker, "execute_task", None) is None:
            logger.warning(
                "member '%s': task(s) %s name another queue, but this worker's broker cannot forward single "
                "tasks; they run here",
                member_id,
                ", ".join(foreign),
            )
            return None
        return cls(runtime, getattr(graph._nodes.get(member_id), "queue", None))

    @staticmethod
    def _foreign_tails(runtime: WorkerRuntime, graph: TaskGraph, group: ParallelGroup) -> dict[str, list[str]]:
        """``{member id: tail tasks naming another queue than the member's}`` of ``group``, worked out
        once per shipped group: every member job of a large group asks, and walking all the members'
        branches each time would make the group's cost grow with the square of its size."""
        cached = runtime._foreign_tails.get(id(group))
        if cached is not None and cached[0] is group:
            return cached[1]
        nodes = graph._nodes
        found: dict[str, list[str]] = {}
        for member_id, branch in member_branches(group).items():
            home = getattr(nodes.get(member_id), "queue", None)
            foreign = [t for t in branch if getattr(nodes.get(t), "queue", None) not in (None, home)]
            if foreign:
                found[member_id] = foreign
        runtime._foreign_tails.put(id(group), (group, found))  # holds the group: its id is not reused meanwhile
        return found

    def execute_task(self, task: Executable, context: ExecutionContext) -> Any:
        queue = getattr(task, "queue", None)
        if queue is not None and queue != self.home:
            return self.runtime.broker.execute_task(task, context)  # type: ignore[union-attr]
        return self.runtime.engine.get_handler(task).execute_task(task, context)

    def run_finished(self, context: ExecutionContext) -> None:
        pass


# -- pickling ---------------------------------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    """cloudpickle, except that module-level tasks travel by name (see :func:`module_task_ref`).

    Workers then import the workflow's code as Celery workers do, payloads stay small, and a worker
    unpickling thousands of jobs shares one function object per task instead of making one each time.
    """
    import io

    buffer = io.BytesIO()
    _job_pickler()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


_pickler_class: Any = None


def _job_pickler() -> Any:
    global _pickler_class
    if _pickler_class is None:
        import cloudpickle

        from graflow.core.task import TaskWrapper

        class JobPickler(cloudpickle.CloudPickler):
            def reducer_override(self, obj: Any) -> Any:
                if type(obj) is TaskWrapper:
                    ref = module_task_ref(obj)
                    if ref is not None:
                        return (task_by_name, ref)
                return super().reducer_override(obj)

        _pickler_class = JobPickler
    return _pickler_class


def _loads(data: bytes) -> Any:
    return pickle.loads(data)


dumps = _dumps
loads = _loads

__all__ = [
    "Job",
    "JobError",
    "JobReply",
    "MemberJob",
    "RunState",
    "TaskJob",
    "WorkerRuntime",
    "WorkerTaskContext",
    "WorkerTaskTimeout",
    "apply_member_reply",
    "apply_task_reply",
    "decode_reply",
    "dumps",
    "encode_reply",
    "group_subgraph",
    "loads",
    "member_branch_state",
    "member_branches",
    "module_task_ref",
    "task_by_name",
]
