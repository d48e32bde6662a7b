"""Conformance suite for task handlers.

A handler is only useful if a task behaves the same under it as in-process: same parameters,
same result, same exceptions, and the same ``context`` (channel reads and writes, dynamic tasks,
iterations, terminate / cancel). Plugin authors subclass :class:`TaskHandlerConformance` and
provide a ``handler`` fixture::

    import pytest
    from graflow_testkit.handlers import TaskHandlerConformance
    from my_plugin import MyHandler

    class TestMyHandler(TaskHandlerConformance):
        xfail_tests = {"test_async_task": "this runtime has no event loop"}

        @pytest.fixture
        def handler(self):
            h = MyHandler(setting=1)
            yield h
            h.close()

Each test builds a small workflow whose tasks use ``handler="conformance"`` and runs it on an
engine where the fixture's handler is registered under that name. Task functions are defined at
module level or as closures over plain data, so handlers that ship tasks elsewhere (containers,
remote hosts) can pickle them with cloudpickle.
"""

from __future__ import annotations

from typing import Any

import pytest

from graflow.core.context import ExecutionContext, TaskExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.handler import TaskHandler
from graflow.core.task import chain, parallel
from graflow.core.workflow import workflow
from graflow.exceptions import GraflowWorkflowCanceledError, TaskError, TaskTimeoutError
from graflow_testkit.expected_failures import ExpectedFailures

NAME = "conformance"


class ConformanceError(Exception):
    """A module-level exception type: its class must survive the trip back from the handler."""


def _run(handler: TaskHandler, wf: Any, **inputs: Any) -> tuple[Any, ExecutionContext]:
    context = ExecutionContext.create(wf.graph, None, max_steps=1000)
    for key, value in inputs.items():
        context.channel.set(key, value)
    engine = WorkflowEngine()
    engine.register_handler(NAME, handler)
    return engine.execute(context), context


class TaskHandlerConformance(ExpectedFailures):
    """Subclass and provide a ``handler`` fixture (a :class:`TaskHandler` instance).

    Set ``stops_timed_out_tasks = True`` when the handler can stop a task that overruns its
    ``timeout`` (remote handlers kill the process); in-process handlers cannot, and report the
    overrun only when the task returns.
    """

    stops_timed_out_tasks = False



    def test_is_a_task_handler(self, handler: TaskHandler) -> None:
        assert isinstance(handler, TaskHandler)
        assert isinstance(handler.get_name(), str) and handler.get_name()

    def test_returns_the_result(self, handler: TaskHandler) -> None:
        @task(handler=NAME)
        def answer() -> dict[str, Any]:
            return {"value": 42, "items": (1, 2)}

        with workflow("conformance-result") as wf:
            chain(answer)
        result, context = _run(handler, wf)
        assert result == {"value": 42, "items": (1, 2)}
        assert context.get_result("answer") == {"value": 42, "items": (1, 2)}

    def test_parameters_come_from_results_and_channel(self, handler: TaskHandler) -> None:
        @task
        def produce() -> int:
            return 20

        @task(handler=NAME)
        def consume(produce: int, offset: int, scale: int = 2) -> int:
            return produce * scale + offset

        with workflow("conformance-params") as wf:
            produce >> consume
        result, _ = _run(handler, wf, offset=2)
        assert result == 42

    def test_channel_reads_and_writes_round_trip(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True)
        def writer(ctx: TaskExecutionContext) -> str:
            channel = ctx.get_channel()
            seen = channel.get("seed")
            channel.set("written", seen + 1)
            channel.append("log", "remote")
            return "ok"

        @task
        def reader(writer: str, written: int) -> tuple[str, int]:
            return writer, written

        with workflow("conformance-channel") as wf:
            writer >> reader
        result, context = _run(handler, wf, seed=41)
        assert result == ("ok", 42)
        assert context.channel.get("log") == ["remote"]

    def test_exception_type_comes_back(self, handler: TaskHandler) -> None:
        @task(handler=NAME)
        def explode() -> None:
            raise ConformanceError("boom from the handler")

        with workflow("conformance-error") as wf:
            chain(explode)
        with pytest.raises(TaskError) as info:
            _run(handler, wf)
        cause = info.value.__cause__
        assert isinstance(cause, ConformanceError)
        assert "boom from the handler" in str(cause)

    def test_next_task_from_inside(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True)
        def spawner(ctx: TaskExecutionContext) -> str:
            @task("spawned")
            def spawned() -> str:
                return "dynamic"

            ctx.next_task(spawned)
            return "spawner"

        with workflow("conformance-dynamic") as wf:
            chain(spawner)
        _, context = _run(handler, wf)
        assert context.get_result("spawned") == "dynamic"
        assert "spawned" in context.completed_tasks

    def test_next_iteration_from_inside(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True, max_cycles=5)
        def counter(ctx: TaskExecutionContext, data: Any = None) -> int:
            n = 0 if data is None else data
            if n < 3:
                ctx.next_iteration(n + 1)
            return n

        @task
        def after(counter: int) -> int:
            return counter * 10

        with workflow("conformance-iterate") as wf:
            counter >> after
        result, context = _run(handler, wf)
        assert result == 30
        assert context.cycle_counts["counter"] == 4
        assert context.cycle_counts["after"] == 1

    def test_terminate_from_inside(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True)
        def stopper(ctx: TaskExecutionContext) -> str:
            ctx.terminate_workflow("enough")
            return "stopped"

        @task
        def never() -> str:
            return "ran"

        with workflow("conformance-terminate") as wf:
            stopper >> never
        result, context = _run(handler, wf)
        assert result == "stopped"
        assert "never" not in context.completed_tasks

    def test_cancel_from_inside(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True)
        def canceller(ctx: TaskExecutionContext) -> None:
            ctx.cancel_workflow("bad input")

        with workflow("conformance-cancel") as wf:
            chain(canceller)
        with pytest.raises(GraflowWorkflowCanceledError, match="bad input"):
            _run(handler, wf)

    def test_async_task(self, handler: TaskHandler) -> None:
        @task(handler=NAME)
        async def coroutine_task() -> str:
            return "awaited"

        with workflow("conformance-async") as wf:
            chain(coroutine_task)
        result, _ = _run(handler, wf)
        assert result == "awaited"

    def test_parallel_members_share_one_channel_with_locks(self, handler: TaskHandler) -> None:
        def bump(ctx: TaskExecutionContext) -> int:
            channel = ctx.get_channel()
            for _ in range(10):
                with channel.lock("counter-lock"):
                    # read-modify-write: only correct if the lock excludes the other members
                    channel.set("counter", channel.get("counter", 0) + 1)
                channel.atomic_add("added", 1)
            return ctx.get_channel().get("counter")

        members = [task(f"bump_{i}", handler=NAME, inject_context=True)(bump) for i in range(4)]

        @task
        def total() -> str:
            return "joined"

        with workflow("conformance-locks") as wf:
            parallel(*members) >> total
        _, context = _run(handler, wf)
        assert context.channel.get("counter") == 40
        assert context.channel.get("added") == 40

    def test_threads_of_one_task_share_locks(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True)
        def threaded(ctx: TaskExecutionContext) -> int:
            import threading

            channel = ctx.get_channel()

            def work() -> None:
                for _ in range(5):
                    # a holder and a waiter in the same task: the waiter must not block the release
                    with channel.lock("thread-lock", timeout=30):
                        channel.set("shared", channel.get("shared", 0) + 1)

            threads = [threading.Thread(target=work) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return channel.get("shared")

        with workflow("conformance-thread-locks") as wf:
            chain(threaded)
        result, _ = _run(handler, wf)
        assert result == 15

    def test_get_result_of_an_earlier_task(self, handler: TaskHandler) -> None:
        @task
        def first() -> list[int]:
            return [1, 2, 3]

        @task(handler=NAME, inject_context=True)
        def second(ctx: TaskExecutionContext) -> int:
            return sum(ctx.get_result("first")) + len(ctx.get_result("missing", [])) + ctx.cycle_count

        with workflow("conformance-get-result") as wf:
            first >> second
        result, _ = _run(handler, wf)
        assert result == 7

    def test_dynamic_chain_from_inside(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True)
        def planner(ctx: TaskExecutionContext) -> str:
            @task("step_one", inject_context=True)
            def step_one(inner: TaskExecutionContext) -> int:
                inner.get_channel().append("order", "one")
                return 1

            @task("step_two", inject_context=True)
            def step_two(inner: TaskExecutionContext, step_one: int) -> int:
                inner.get_channel().append("order", "two")
                return step_one + 1

            ctx.next_task(step_one >> step_two)
            return "planned"

        with workflow("conformance-dynamic-chain") as wf:
            chain(planner)
        result, context = _run(handler, wf)
        assert result == 2
        assert context.channel.get("order") == ["one", "two"]

    def test_goto_an_existing_task_skips_successors(self, handler: TaskHandler) -> None:
        @task(handler=NAME, inject_context=True)
        def router(ctx: TaskExecutionContext) -> str:
            ctx.next_task(ctx.get_channel().get("target_task"), goto=True)
            return "routed"

        @task
        def skipped() -> str:
            return "skipped ran"

        @task
        def target() -> str:
            return "target ran"

        with workflow("conformance-goto") as wf:
            router >> skipped >> target
        # the target travels to the handler through the channel, as any picklable value would
        _, context = _run(handler, wf, target_task=target)
        assert "target" in context.completed_tasks
        assert "skipped" not in context.completed_tasks

    def test_checkpoint_request_from_inside(self, handler: TaskHandler, tmp_path: Any) -> None:
        from graflow.core.checkpoint import CheckpointManager

        where = str(tmp_path / "conformance-ckpt")

        @task(handler=NAME, inject_context=True)
        def saver(ctx: TaskExecutionContext) -> str:
            ctx.get_channel().set("saved_by", "saver")
            ctx.checkpoint({"note": "from the handler"}, path=where)
            return "saved"

        @task
        def later() -> str:
            return "later"

        with workflow("conformance-checkpoint") as wf:
            saver >> later
        _run(handler, wf)
        resumed, metadata = CheckpointManager.resume_from_checkpoint(where)
        assert metadata.user_metadata["note"] == "from the handler"
        assert "saver" in resumed.completed_tasks
        assert resumed.channel.get("saved_by") == "saver"
        assert WorkflowEngine().execute(resumed) == "later"

    def test_timeout_stops_the_task(self, handler: TaskHandler) -> None:
        if not self.stops_timed_out_tasks:
            pytest.skip("this handler runs tasks in-process and cannot stop them (stops_timed_out_tasks = False)")

        @task(handler=NAME, timeout=1.0)
        def hang() -> str:
            import time

            time.sleep(120)
            return "woke up"

        with workflow("conformance-timeout") as wf:
            chain(hang)
        with pytest.raises(TaskError) as info:
            _run(handler, wf)
        error = info.value if isinstance(info.value, TaskTimeoutError) else info.value.__cause__
        assert isinstance(error, TaskTimeoutError)

    def test_a_sibling_canceling_the_workflow_stops_the_task(self, handler: TaskHandler) -> None:
        if not self.stops_timed_out_tasks:
            pytest.skip("this handler runs tasks in-process and cannot stop them (stops_timed_out_tasks = False)")

        @task(handler=NAME, inject_context=True)
        def hang(ctx: TaskExecutionContext) -> str:
            import time

            ctx.get_channel().set("hang.started", True)
            time.sleep(120)
            return "woke up"

        @task(inject_context=True)
        def stopper(ctx: TaskExecutionContext) -> None:
            import time

            channel = ctx.get_channel()
            deadline = time.monotonic() + 60
            while not channel.get("hang.started", False) and time.monotonic() < deadline:
                time.sleep(0.02)
            ctx.cancel_workflow("stop everything")

        with workflow("conformance-sibling-cancel") as wf:
            parallel(hang, stopper)
        context = ExecutionContext.create(wf.graph, None, max_steps=1000)
        engine = WorkflowEngine()
        engine.register_handler(NAME, handler)
        with pytest.raises(GraflowWorkflowCanceledError) as info:
            engine.execute(context)
        assert info.value.task_id == "stopper"
        assert context.channel.get("hang.started") is True, "the task under test had started"
        # had the task not been stopped, the group would have waited for it and it would count as done
        assert "hang" not in context.completed_tasks
        assert "stopper" in context.completed_tasks


__all__ = ["ConformanceError", "TaskHandlerConformance"]
