"""A cancellation reaches the remote runners of the run that was canceled, and no others.

``ExecutionContext.mark_canceled`` calls its listeners one after another, outside its lock, so a
listener can run late: after the task it was registered for has finished and its warm runner went
back to the pool (or already runs a task of another run). Such a late call must do nothing. These
tests use core's ``subprocess`` handler (real child processes); a first listener that blocks stands
in for a slow one (stopping a container over the Docker API, an SSH ``kill``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from graflow.core.context import ExecutionContext, TaskExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.handlers.subprocess import SubprocessTaskHandler
from graflow.core.workflow import workflow
from graflow.exceptions import GraflowWorkflowCanceledError

_WAIT = 60.0


def _wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_late_cancel_does_not_kill_the_warm_runner_now_serving_another_run() -> None:
    handler = SubprocessTaskHandler(reuse=True, pool_size=1)
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)

    @task(handler="sub", inject_context=True)
    def first(ctx: TaskExecutionContext) -> str:
        import os
        import time

        ctx.get_channel().set("first.pid", os.getpid())
        time.sleep(0.3)
        return "first done"

    @task(handler="sub", inject_context=True)
    def second(ctx: TaskExecutionContext) -> str:
        import os
        import time

        ctx.get_channel().set("second.pid", os.getpid())
        time.sleep(1.5)
        return "second done"

    with workflow("cancel-a") as wf_a:
        first(task_id="first")
    with workflow("cancel-b") as wf_b:
        second(task_id="second")
    ctx_a = ExecutionContext.create(wf_a.graph, None, max_steps=100)
    ctx_b = ExecutionContext.create(wf_b.graph, None, max_steps=100)

    slow_listener_may_return = threading.Event()
    ctx_a.on_cancel(lambda: slow_listener_may_return.wait(_WAIT))  # runs before the handler's listener
    try:
        run_a, box_a = _in_thread(lambda: engine.execute(ctx_a))
        _wait_for(lambda: ctx_a.channel.get("first.pid") is not None, "the first task to start")
        cancel, _ = _in_thread(lambda: ctx_a.mark_canceled("stop run A", "someone"))
        run_a.join(_WAIT)
        assert not run_a.is_alive()
        # run A's task finished before its cancellation listener got its turn: its runner is idle again
        assert box_a.get("result") == "first done", box_a
        assert len(handler._idle) == 1

        run_b, box_b = _in_thread(lambda: engine.execute(ctx_b))
        _wait_for(lambda: ctx_b.channel.get("second.pid") is not None, "the second task to start")
        assert ctx_b.channel.get("second.pid") == ctx_a.channel.get("first.pid"), "the warm runner was reused"
        slow_listener_may_return.set()  # run A's late listener runs now, while run B uses the runner
        cancel.join(_WAIT)
        run_b.join(_WAIT)
        assert not run_b.is_alive()
        assert "error" not in box_b, f"run B failed because run A was canceled: {box_b.get('error')!r}"
        assert box_b["result"] == "second done"
        assert ctx_b.canceled is None
    finally:
        slow_listener_may_return.set()
        handler.close()


def test_a_cancel_during_the_task_still_stops_it_and_the_runner_is_not_reused() -> None:
    handler = SubprocessTaskHandler(reuse=True, pool_size=1)
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)

    @task(handler="sub", inject_context=True)
    def hang(ctx: TaskExecutionContext) -> str:
        import os
        import time

        ctx.get_channel().set("hang.pid", os.getpid())
        time.sleep(120)
        return "woke up"

    with workflow("cancel-hang") as wf:
        hang(task_id="hang")
    ctx = ExecutionContext.create(wf.graph, None, max_steps=100)
    try:
        run, box = _in_thread(lambda: engine.execute(ctx))
        _wait_for(lambda: ctx.channel.get("hang.pid") is not None, "the task to start")
        ctx.mark_canceled("stop it", "canceller")
        run.join(_WAIT)
        assert not run.is_alive(), "the canceled task was not stopped"
        error = box.get("error")
        assert isinstance(error, GraflowWorkflowCanceledError), box
        assert error.task_id == "canceller"
        assert handler._idle == [], "a runner killed for a cancellation went back to the pool"
    finally:
        handler.close()


def test_a_task_started_after_the_cancel_is_refused_and_leaves_no_listener() -> None:
    handler = SubprocessTaskHandler(reuse=True, pool_size=1)
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)

    @task(handler="sub")
    def never() -> str:
        return "ran"

    with workflow("cancel-before") as wf:
        never(task_id="never")
    ctx = ExecutionContext.create(wf.graph, None, max_steps=100)
    ctx.mark_canceled("already canceled", "earlier")
    try:
        tctx = TaskExecutionContext("never", ctx)
        from graflow.core.context import _local

        _local.task_id, _local.task_ctx = "never", tctx
        try:
            try:
                handler.execute_task(wf.graph.get_node("never"), ctx)
            except GraflowWorkflowCanceledError as exc:
                assert exc.task_id == "earlier"
            else:
                raise AssertionError("a task of a canceled run ran on the handler")
        finally:
            _local.task_id, _local.task_ctx = None, None
        assert ctx._cancel_listeners == []
        assert handler._busy == set()
    finally:
        handler.close()
