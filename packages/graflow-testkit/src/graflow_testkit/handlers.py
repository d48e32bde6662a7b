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
from graflow.core.task import chain
from graflow.core.workflow import workflow
from graflow.exceptions import GraflowWorkflowCanceledError, TaskError
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
    """Subclass and provide a ``handler`` fixture (a :class:`TaskHandler` instance)."""



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


__all__ = ["ConformanceError", "TaskHandlerConformance"]
