"""WorkflowEngine: schedules the tasks of a run.

One loop (:meth:`WorkflowEngine._drive`) serves the whole run and every branch of a parallel
group. Per task it does a handful of dictionary operations; anything costly (join analysis,
handler construction, events) is cached or skipped when unused, so the cost per task does not
grow with the graph.

Join rule (SPEC §4.3): a node with several predecessors runs when every predecessor that can run
in this run has arrived. Predecessors not reachable from the start do not count; an edge that
closes a loop (a back edge of a depth-first walk from the start) never holds a node back; and
when nothing is left to run, a partially arrived join is released (its missing predecessors were
skipped, e.g. by a goto). Each release re-arms the join for the next wave of a loop.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

from graflow import plugins
from graflow.core.context import ExecutionContext, TaskExecutionContext, _local
from graflow.core.handler import TaskHandler, TaskResult
from graflow.core.task import NO_DATA, Executable, ParallelGroup
from graflow.exceptions import (
    ConfigError,
    CycleLimitExceededError,
    GraflowError,
    GraflowRuntimeError,
    GraflowWorkflowCanceledError,
    RetryLimitExceededError,
    TaskError,
    TaskTimeoutError,
)

logger = logging.getLogger(__name__)

# One handler per (class, settings), shared by every engine: warm pools and connections survive runs,
# and a plugin registered or removed later is looked up afresh.
_shared_handlers: dict[tuple[type, Any], TaskHandler] = {}
_shared_lock = threading.Lock()


def close_shared_handlers() -> None:
    """Close every handler made from ``@task(handler=..., handler_kwargs=...)`` settings.

    They are shared by all engines so warm runners (containers, SSH connections, child processes)
    outlive one run; this releases them. It runs at interpreter exit too.
    """
    with _shared_lock:
        handlers = list(_shared_handlers.values())
        _shared_handlers.clear()
    for handler in handlers:
        try:
            handler.close()
        except Exception as exc:  # noqa: BLE001 - one handler failing to close must not keep the others open
            logger.warning("closing the %s handler failed: %s", handler.get_name(), exc)


atexit.register(close_shared_handlers)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(_freeze(v) for v in value)
    hash(value)
    return value


class WorkflowEngine:
    """Runs an :class:`ExecutionContext` to completion: ``WorkflowEngine().execute(ctx)``."""

    def __init__(self) -> None:
        self._handlers: dict[str, TaskHandler] = {}
        from graflow.coordination.executor import GroupExecutor

        self._group_executor = GroupExecutor()

    # -- handlers ----------------------------------------------------------------------------------------
    def register_handler(self, handler_type: str, handler: TaskHandler) -> None:
        """Use ``handler`` for tasks with ``handler=handler_type`` on this engine (wins over plugins)."""
        if not isinstance(handler, TaskHandler):
            raise ConfigError(f"register_handler needs a TaskHandler instance, got {type(handler).__name__}")
        self._handlers[handler_type] = handler

    def get_handler(self, task: Executable) -> TaskHandler:
        name = task.handler_type or "direct"
        handler = self._handlers.get(name)
        if handler is not None:
            return handler
        kwargs = task.handler_kwargs or {}
        cls = plugins.get_task_handler_class(name)
        try:
            key = (cls, _freeze(kwargs))
        except TypeError:
            return self._make_handler(cls, name, kwargs, task)
        handler = _shared_handlers.get(key)
        if handler is None:
            with _shared_lock:
                handler = _shared_handlers.get(key)
                if handler is None:
                    handler = self._make_handler(cls, name, kwargs, task)
                    _shared_handlers[key] = handler
        return handler

    @staticmethod
    def _make_handler(cls: type, name: str, kwargs: dict[str, Any], task: Executable) -> TaskHandler:
        from graflow.coordination.coordinator import check_kwargs

        try:
            check_kwargs(cls, kwargs, f"'{name}' task handler (task '{task.task_id}')", "handler_kwargs")
            return cls(**kwargs)
        except ConfigError:
            raise
        except TypeError as exc:
            raise ConfigError(f"Task '{task.task_id}': bad handler_kwargs for handler '{name}': {exc}") from exc

    # -- running -----------------------------------------------------------------------------------------
    def execute(self, context: ExecutionContext, start_task_id: str | None = None) -> Any:
        """Run until no task is left; return the result of the last task that ran."""
        if not isinstance(context, ExecutionContext):
            raise ConfigError(f"execute() needs an ExecutionContext, got {type(context).__name__}")
        if start_task_id is not None:
            if not context.graph.has_node(start_task_id):
                raise ConfigError(f"Start task '{start_task_id}' is not in the workflow")
            context.task_queue.clear()
            context.task_queue.enqueue(start_task_id)
        saved = (getattr(_local, "task_id", None), getattr(_local, "task_ctx", None))
        observe = plugins.has_observers()
        if observe:
            plugins.emit("workflow.started", session_id=context.session_id, graph=context.graph.name)
        try:
            queue = getattr(context.task_queue, "items", None)
            if queue is None:
                raise ConfigError(
                    f"The engine cannot drive a {type(context.task_queue).__name__}; a distributed queue needs "
                    f"its package's runner (see graflow-redis)."
                )
            result = self._drive(context, queue, None, context.join_arrivals)
        except BaseException as exc:
            if isinstance(exc, GraflowError) and getattr(exc, "execution_context", None) is None:
                exc.execution_context = context  # type: ignore[attr-defined]
            if observe:
                plugins.emit("workflow.finished", session_id=context.session_id, ok=False, error=repr(exc))
            raise
        finally:
            _local.task_id, _local.task_ctx = saved
            dispatcher = getattr(context, "task_dispatcher", None)
            if dispatcher is not None:
                dispatcher.run_finished(context)
        context.last_result = result
        if observe:
            plugins.emit("workflow.finished", session_id=context.session_id, ok=True, steps=context.steps)
        return result

    def _drive(
        self,
        ctx: ExecutionContext,
        queue: deque[str],
        scope: str | None,
        arrivals: dict[str, set[str]],
        checkpoints: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> Any:
        """Run tasks from ``queue`` until it is empty; ``scope`` is the group id inside a branch.

        Inside a branch, deferred checkpoint requests are collected in ``checkpoints`` and written
        once the member has finished and its progress is recorded, so the resumed run does not
        repeat the member.
        """
        graph, nodes, succ, pred, owner_of = _graph_refs(ctx)
        cycle_counts = ctx.cycle_counts
        retry_counts = ctx.retry_counts
        iteration_data = ctx.iteration_data
        completed = ctx.completed_tasks
        channel_set = ctx.channel.set
        default_cycles = ctx.default_max_cycles
        max_steps = ctx.max_steps
        # A distributed queue (graflow-redis's RedisTaskQueue) attaches a dispatcher to the context:
        # every task then runs wherever it sends it, while this loop stays the only scheduler.
        dispatcher = getattr(ctx, "task_dispatcher", None)
        direct_ok = "direct" not in self._handlers and dispatcher is None
        observe = plugins.has_observers()
        local = _local
        popleft = queue.popleft
        append = queue.append
        delayed: list[tuple[float, int, str]] = []
        seq = itertools.count()
        last: Any = None

        while True:
            if not queue:
                if delayed:
                    wait = delayed[0][0] - time.monotonic()
                    if wait > 0:
                        time.sleep(min(wait, 0.05))
                    now = time.monotonic()
                    while delayed and delayed[0][0] <= now:
                        append(heapq.heappop(delayed)[2])
                    if ctx.canceled is None and ctx.terminated is None:
                        continue
                    break
                if arrivals and ctx.terminated is None and ctx.canceled is None:
                    queue.extend(arrivals)
                    arrivals.clear()
                    continue
                break
            if ctx.terminated is not None or ctx.canceled is not None:
                break
            if delayed and delayed[0][0] <= time.monotonic():
                append(heapq.heappop(delayed)[2])
            tid = popleft()
            task = nodes.get(tid)
            if task is None:
                raise GraflowRuntimeError(f"Queued task '{tid}' is not in the graph")
            ctx.steps += 1
            if ctx.steps > max_steps:
                queue.appendleft(tid)
                raise GraflowRuntimeError(
                    f"The workflow exceeded max_steps={max_steps} (about to run '{tid}'). If the run is meant to "
                    f"be this long, pass a larger max_steps to execute(); otherwise look for a loop that never ends."
                )
            if not (retry_counts and tid in retry_counts):
                count = cycle_counts.get(tid, 0) + 1
                limit = task.max_cycles or default_cycles
                if count > limit:
                    raise CycleLimitExceededError(tid, count, limit)
                cycle_counts[tid] = count

            tctx: TaskExecutionContext | None = None
            if task._is_group:
                result = self._group_executor.execute_parallel_group(
                    task, ctx, lambda member_id, _g=task: self._run_member(ctx, _g, member_id)
                )
                if ctx.terminated is not None:
                    queue.clear()
                    last = ctx.terminate_result
                    break
                if ctx.graph is not graph:
                    graph, nodes, succ, pred, owner_of = _graph_refs(ctx)
            else:
                data = iteration_data.pop(tid, NO_DATA) if iteration_data else NO_DATA
                inline = direct_ok and task.handler_type in (None, "direct")
                if task.inject_context or not inline:
                    tctx = TaskExecutionContext(tid, ctx)
                    tctx.input_data = data
                local.task_id = tid
                local.task_ctx = tctx
                try:
                    if observe:
                        plugins.emit("task.started", session_id=ctx.session_id, task_id=tid)
                    started = time.perf_counter() if (task.timeout or observe) else 0.0
                    if inline:
                        result = task.run_in(ctx, tctx, data)
                    elif dispatcher is not None:
                        result = dispatcher.execute_task(task, ctx)
                    else:
                        result = self.get_handler(task).execute_task(task, ctx)
                    if task.timeout and dispatcher is None and time.perf_counter() - started > task.timeout:
                        raise TaskTimeoutError(tid, task.timeout, time.perf_counter() - started)
                except Exception as exc:
                    local.task_id = None
                    if data is not NO_DATA:
                        iteration_data[tid] = data
                    if self._retry(ctx, task, tid, exc, queue, delayed, seq, observe):
                        continue
                    failure = self._failure(ctx, tid, exc)
                    if failure is exc:
                        raise  # a graflow error stays itself, with its own cause (never its own cause)
                    raise failure from exc
                tctx = local.task_ctx
                local.task_id = None
                if observe:
                    plugins.emit(
                        "task.succeeded",
                        session_id=ctx.session_id,
                        task_id=tid,
                        duration=time.perf_counter() - started,
                    )
            if retry_counts:
                retry_counts.pop(tid, None)
            channel_set(task.result_key, result)
            completed.add(tid)
            last = result

            skip = False
            if tctx is not None:
                if tctx.cancel_message is not None:
                    ctx.mark_canceled(tctx.cancel_message, tid)
                    raise GraflowWorkflowCanceledError(tctx.cancel_message, tid)
                if tctx.spawned:
                    queue.extend(tctx.spawned)
                    if ctx.graph is not graph:
                        graph, nodes, succ, pred, owner_of = _graph_refs(ctx)
                if tctx.iterate_data is not NO_DATA:
                    if tctx.iterate_data is not None:
                        iteration_data[tid] = tctx.iterate_data
                    append(tid)
                    skip = True
                if tctx.terminate_message is not None:
                    if tctx.checkpoint_request is not None and scope is None and not skip:
                        # checkpoint + terminate = "pause here": the checkpoint keeps the successors queued
                        queue.extend(s for s in succ[tid] if s not in owner_of)
                        self._deferred_checkpoint(ctx, tid, tctx.checkpoint_request)
                    ctx.terminate_result = result
                    ctx.terminated = tctx.terminate_message
                    queue.clear()
                    break
                skip = skip or tctx.skip_successors

            if not skip:
                for s in succ[tid]:
                    if scope is None:
                        if s in owner_of:
                            continue
                    elif owner_of.get(s, scope) != scope:
                        continue
                    if len(pred[s]) > 1 and not self._arrive(ctx, arrivals, tid, s):
                        continue
                    append(s)
            if tctx is not None and tctx.checkpoint_request is not None:
                if checkpoints is not None:
                    checkpoints.append((tid, tctx.checkpoint_request))
                else:
                    self._deferred_checkpoint(ctx, tid, tctx.checkpoint_request)
        return last

    # -- joins ---------------------------------------------------------------------------------------------
    def _arrive(self, ctx: ExecutionContext, arrivals: dict[str, set[str]], src: str, dst: str) -> bool:
        required, back_edges = _join_plan(ctx)
        if (src, dst) in back_edges:
            return True
        need = required.get(dst)
        if not need or src not in need:
            # a predecessor the analysis did not expect (dynamic edge): let it through
            return True
        with ctx.state_lock:
            arrived = arrivals.get(dst)
            if arrived is None:
                arrived = arrivals[dst] = set()
            arrived.add(src)
            if need <= arrived:
                del arrivals[dst]
                return True
        return False

    # -- failures -------------------------------------------------------------------------------------------
    def _retry(
        self,
        ctx: ExecutionContext,
        task: Executable,
        tid: str,
        exc: Exception,
        queue: deque[str],
        delayed: list[tuple[float, int, str]],
        seq: Any,
        observe: bool,
    ) -> bool:
        if isinstance(exc, (CycleLimitExceededError, GraflowWorkflowCanceledError)) or isinstance(task, ParallelGroup):
            return False
        policy = ctx.retry_policy_for(tid)
        done = ctx.retry_counts.get(tid, 0)
        if not policy.should_retry(exc, done):
            return False
        ctx.retry_counts[tid] = done + 1
        delay = policy.get_delay(done)
        logger.info("retrying task %s (retry %d of %d) in %.3fs: %r", tid, done + 1, policy.max_retries, delay, exc)
        if observe:
            plugins.emit("task.retrying", session_id=ctx.session_id, task_id=tid, error=repr(exc), delay=delay)
        if delay <= 0:
            queue.appendleft(tid)
        else:
            heapq.heappush(delayed, (time.monotonic() + delay, next(seq), tid))
        return True

    def _failure(self, ctx: ExecutionContext, tid: str, exc: Exception) -> BaseException:
        done = ctx.retry_counts.pop(tid, 0)
        if plugins.has_observers():
            plugins.emit("task.failed", session_id=ctx.session_id, task_id=tid, error=repr(exc))
        if done > 0:
            return RetryLimitExceededError(tid, done + 1, exc)
        if isinstance(exc, GraflowError):
            return exc
        return TaskError(f"Task '{tid}' failed: {type(exc).__name__}: {exc}", tid)

    # -- groups ---------------------------------------------------------------------------------------------
    def _run_member(self, ctx: ExecutionContext, group: ParallelGroup, member_id: str) -> TaskResult:
        started = time.perf_counter()
        stamp = time.time()
        if ctx.terminated is not None or ctx.canceled is not None:
            why = "the workflow was terminated" if ctx.terminated is not None else "the workflow was canceled"
            return TaskResult(member_id, False, None, f"not run: {why}", 0.0, stamp)
        checkpoints: list[tuple[str, dict[str, Any]]] = []
        try:
            result = self._drive(ctx, deque([member_id]), group.task_id, {}, checkpoints)
        except Exception as exc:  # noqa: BLE001 - a member's failure is data for the group's policy
            original = exc.__cause__ if isinstance(exc, TaskError) and exc.__cause__ is not None else exc
            outcome = TaskResult(
                member_id,
                False,
                original,
                f"{type(original).__name__}: {original}",
                time.perf_counter() - started,
                stamp,
            )
            failed_task = getattr(exc, "task_id", None)
            outcome.metadata["failed_task"] = failed_task if failed_task in ctx.graph._nodes else member_id
            return outcome
        outcome = TaskResult(member_id, True, None, None, time.perf_counter() - started, stamp, result)
        if checkpoints:
            outcome.metadata["checkpoint_requests"] = checkpoints
        return outcome

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _deferred_checkpoint(self, ctx: ExecutionContext, tid: str, request: dict[str, Any]) -> None:
        from graflow.core.checkpoint import write_deferred_checkpoint

        write_deferred_checkpoint(ctx, tid, request)


def _graph_refs(
    ctx: ExecutionContext,
) -> tuple[Any, dict[str, Any], dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    graph = ctx.graph
    return graph, graph._nodes, graph._succ, graph._pred, graph.owner_of


def _join_plan(ctx: ExecutionContext) -> tuple[dict[str, frozenset[str]], set[tuple[str, str]]]:
    """Required predecessors of every join node and the back edges, cached per graph version."""
    graph = ctx.graph
    key = (id(graph), graph.version, len(ctx.extra_roots))
    cached = getattr(ctx, "_join_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    with ctx.state_lock:
        succ = graph._succ
        members: dict[str, list[str]] = {}
        for member, group in graph.owner_of.items():
            members.setdefault(group, []).append(member)
        reachable: set[str] = set()
        back: set[tuple[str, str]] = set()
        on_stack: set[str] = set()
        roots = [*ctx.start_nodes, *ctx.extra_roots]
        for root in roots:
            if root in reachable or root not in succ:
                continue
            reachable.add(root)
            on_stack.add(root)
            work = [(root, iter([*succ[root], *members.get(root, ())]))]
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is None:
                    work.pop()
                    on_stack.discard(node)
                    continue
                if child in on_stack:
                    back.add((node, child))
                elif child not in reachable:
                    reachable.add(child)
                    on_stack.add(child)
                    work.append((child, iter([*succ[child], *members.get(child, ())])))
        required: dict[str, frozenset[str]] = {}
        for node, preds in graph._pred.items():
            if len(preds) > 1:
                required[node] = frozenset(p for p in preds if p in reachable and (p, node) not in back)
        ctx._join_cache = (key, required, back)  # type: ignore[attr-defined]
    return required, back


__all__ = ["WorkflowEngine"]
