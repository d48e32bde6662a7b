"""Dynamic control from inside a task (SPEC §4.4): next_task, next_iteration, terminate, cancel, max_cycles."""

from __future__ import annotations

from typing import Any, TypedDict

import pytest

from graflow import ExecutionContext, TaskExecutionContext, TaskWrapper, task, workflow
from graflow.channels.base import Channel
from graflow.exceptions import (
    ConfigError,
    CycleLimitExceededError,
    GraflowRuntimeError,
    GraflowWorkflowCanceledError,
    ParallelGroupError,
)

COORDINATORS = ["direct", "threading"]


def _rec(name: str, log: list[str], value: Any = None) -> TaskWrapper:
    def fn() -> Any:
        log.append(name)
        return name if value is None else value

    return TaskWrapper(name, fn)


# -- next_task ----------------------------------------------------------------------------------------------


def test_next_task_new_adds_queues_and_successors_still_run() -> None:
    log: list[str] = []
    new = _rec("new", log)
    with workflow("nt_new") as wf:

        @task(inject_context=True)
        def a(ctx: Any) -> str:
            log.append("a")
            assert ctx.next_task(new) == "new"
            return "a"

        b = _rec("b", log)
        a >> b
        _, ctx = wf.execute(ret_context=True)
    assert sorted(log) == ["a", "b", "new"]
    assert log[0] == "a"
    assert "new" in ctx.graph.nodes  # the run's graph; the workflow as built is left unchanged
    assert "new" not in wf.graph.nodes
    assert ctx.get_result("new") == "new"


def test_next_task_new_chain_brings_its_wired_edges() -> None:
    log: list[str] = []
    x, y = _rec("x", log), _rec("y", log)
    x >> y  # wired outside any workflow: kept on the objects until next_task adds them
    with workflow("nt_chain") as wf:

        @task(inject_context=True)
        def a(ctx: Any) -> None:
            log.append("a")
            ctx.next_task(x)

        _, ctx = wf.execute(ret_context=True)
    assert log == ["a", "x", "y"]
    assert ("x", "y") in ctx.graph.edges


def test_next_task_existing_jumps_and_skips_successors() -> None:
    log: list[str] = []
    with workflow("nt_existing") as wf:

        @task(inject_context=True)
        def a(ctx: Any) -> str:
            log.append("a")
            ctx.next_task(target)
            return "a"

        b = _rec("b", log)
        other = _rec("other", log)
        target = _rec("target", log)
        a >> b
        other >> target
        result = wf.execute(start="a")
    assert log == ["a", "target"]
    assert result == "target"


def test_next_task_goto_new_skips_successors() -> None:
    log: list[str] = []
    new = _rec("new", log)
    with workflow("nt_goto") as wf:

        @task(inject_context=True)
        def a(ctx: Any) -> None:
            log.append("a")
            ctx.next_task(new, goto=True)

        b = _rec("b", log)
        a >> b
        wf.execute()
    assert log == ["a", "new"]


def test_next_task_rejects_non_task() -> None:
    with workflow("nt_bad") as wf:

        @task(inject_context=True)
        def a(ctx: Any) -> None:
            ctx.next_task("b")

        with pytest.raises(ConfigError, match="next_task"):
            wf.execute()


# -- next_iteration --------------------------------------------------------------------------------------------


def test_next_iteration_passes_data_and_successors_run_once_after_last() -> None:
    log: list[str] = []
    with workflow("iter") as wf:

        @task(inject_context=True)
        def step(ctx: Any, data: Any = None) -> int:
            n = 0 if data is None else data
            log.append(f"step{n}")
            if n < 3:
                ctx.next_iteration(n + 1)
            return n

        after = _rec("after", log)
        step >> after
        _, ctx = wf.execute(ret_context=True)
    assert log == ["step0", "step1", "step2", "step3", "after"]
    assert ctx.get_result("step") == 3
    assert ctx.cycle_counts["step"] == 4


def test_next_iteration_with_can_iterate_stops_at_max_cycles() -> None:
    log: list[str] = []
    with workflow("iter_can") as wf:

        @task(inject_context=True, max_cycles=3)
        def poll(ctx: Any) -> int:
            log.append(f"poll{ctx.cycle_count}")
            if ctx.can_iterate():
                ctx.next_iteration()
            return ctx.cycle_count

        after = _rec("after", log)
        poll >> after
        wf.execute()
    assert log == ["poll1", "poll2", "poll3", "after"]


def test_next_iteration_beyond_max_cycles_raises() -> None:
    runs: list[int] = []
    with workflow("iter_limit") as wf:

        @task(inject_context=True, max_cycles=3)
        def forever(ctx: Any) -> None:
            runs.append(ctx.cycle_count)
            ctx.next_iteration()

        after = TaskWrapper("after", lambda: runs.append(-1))
        forever >> after
        with pytest.raises(CycleLimitExceededError) as info:
            wf.execute()
    assert runs == [1, 2, 3]
    assert info.value.task_id == "forever"
    assert info.value.max_cycles == 3
    assert "forever" in str(info.value)


def test_default_max_cycles_comes_from_context() -> None:
    runs: list[int] = []
    with workflow("iter_default", default_max_cycles=2) as wf:

        @task(inject_context=True)
        def forever(ctx: Any) -> None:
            runs.append(ctx.cycle_count)
            assert ctx.max_cycles == 2
            ctx.next_iteration()

        with pytest.raises(CycleLimitExceededError):
            wf.execute()
    assert runs == [1, 2]


def test_default_max_cycles_is_ten() -> None:
    runs: list[int] = []
    with workflow("iter_ten") as wf:

        @task(inject_context=True)
        def forever(ctx: Any) -> None:
            runs.append(ctx.cycle_count)
            ctx.next_iteration()

        with pytest.raises(CycleLimitExceededError):
            wf.execute()
    assert len(runs) == 10


def test_max_cycles_bounds_static_edge_loop() -> None:
    log: list[str] = []
    with workflow("static_limit") as wf:
        start = _rec("start", log)
        agent = TaskWrapper("agent", lambda: log.append("agent"), max_cycles=3)
        tool = _rec("tool", log)
        start >> agent >> tool >> agent
        with pytest.raises(CycleLimitExceededError) as info:
            wf.execute()
    assert log.count("agent") == 3
    assert info.value.task_id == "agent"
    assert isinstance(info.value, GraflowRuntimeError)


# -- terminate / cancel ------------------------------------------------------------------------------------------


def test_terminate_finishes_task_drops_successors_and_returns_its_result() -> None:
    log: list[str] = []
    with workflow("term") as wf:
        a = _rec("a", log)

        @task(inject_context=True)
        def b(ctx: Any) -> str:
            log.append("b")
            ctx.terminate_workflow("done early")
            log.append("b-finished")
            return "b-result"

        c = _rec("c", log)
        other = _rec("other", log)
        a >> b >> c
        a >> other
        result, ctx = wf.execute(ret_context=True)
    assert result == "b-result"
    assert log[:3] == ["a", "b", "b-finished"]
    assert "c" not in log
    assert ctx.get_result("b") == "b-result"
    assert "c" not in ctx.completed_tasks


def test_cancel_raises_and_drops_successors() -> None:
    log: list[str] = []
    with workflow("cancel") as wf:

        @task(inject_context=True)
        def a(ctx: Any) -> None:
            log.append("a")
            ctx.cancel_workflow("user said stop")

        b = _rec("b", log)
        a >> b
        with pytest.raises(GraflowWorkflowCanceledError) as info:
            wf.execute()
    assert log == ["a"]
    assert "user said stop" in str(info.value)
    assert info.value.task_id == "a"


@pytest.mark.parametrize("backend", COORDINATORS)
def test_terminate_inside_parallel_member_stops_workflow(backend: str) -> None:
    log: list[str] = []
    with workflow("term_member") as wf:
        s = _rec("s", log)

        @task(inject_context=True)
        def m1(ctx: Any) -> str:
            log.append("m1")
            ctx.terminate_workflow("member says stop")
            return "m1-result"

        m2 = _rec("m2", log)
        after = _rec("after", log)
        s >> (m1 | m2).with_execution(backend=backend) >> after
        result, ctx = wf.execute(ret_context=True)
    assert "after" not in log
    assert ctx.terminated is not None
    assert ctx.get_result("m1") == "m1-result"
    if backend == "direct":
        assert log == ["s", "m1"]
        assert result == "m1-result"


@pytest.mark.parametrize("backend", COORDINATORS)
def test_cancel_inside_parallel_member_stops_workflow(backend: str) -> None:
    log: list[str] = []
    with workflow("cancel_member") as wf:

        @task(inject_context=True)
        def m1(ctx: Any) -> None:
            log.append("m1")
            ctx.cancel_workflow("member cancels")

        m2 = _rec("m2", log)
        after = _rec("after", log)
        (m1 | m2).with_execution(backend=backend).with_policy("best_effort") >> after
        with pytest.raises(GraflowWorkflowCanceledError) as info:
            wf.execute()
    assert not isinstance(info.value, ParallelGroupError)
    assert "member cancels" in str(info.value)
    assert "after" not in log


# -- context accessors ------------------------------------------------------------------------------------------


class Point(TypedDict):
    x: int
    y: int


def test_context_accessors() -> None:
    seen: dict[str, Any] = {}
    with workflow("accessors", default_max_cycles=5) as wf:
        first = TaskWrapper("first", lambda: 41)

        @task(inject_context=True, max_retries=2)
        def probe(ctx: Any) -> str:
            seen["type"] = type(ctx)
            seen["task_id"] = ctx.task_id
            seen["session_id"] = ctx.session_id
            seen["execution_context"] = ctx.execution_context
            seen["channel"] = ctx.get_channel()
            seen["result"] = ctx.get_result("first")
            seen["missing"] = ctx.get_result("nope", "dflt")
            seen["cycle_count"] = ctx.cycle_count
            seen["max_cycles"] = ctx.max_cycles
            seen["retry_count"] = ctx.retry_count
            seen["can_iterate"] = ctx.can_iterate()
            ctx.get_channel().set("from_probe", 7)
            return "ok"

        first >> probe
        _, exec_ctx = wf.execute(ret_context=True)
    assert seen["type"] is TaskExecutionContext
    assert seen["task_id"] == "probe"
    assert seen["session_id"] == exec_ctx.session_id
    assert seen["execution_context"] is exec_ctx
    assert isinstance(seen["execution_context"], ExecutionContext)
    assert isinstance(seen["channel"], Channel)
    assert seen["channel"] is exec_ctx.channel
    assert seen["result"] == 41
    assert seen["missing"] == "dflt"
    assert seen["cycle_count"] == 1
    assert seen["max_cycles"] == 5
    assert seen["retry_count"] == 0
    assert seen["can_iterate"] is True
    assert exec_ctx.channel.get("from_probe") == 7


def test_get_typed_channel() -> None:
    try:
        from graflow.channels.typed import TypedChannel
    except ImportError:  # channels not built yet
        pytest.skip("graflow.channels.typed is not available")
    seen: dict[str, Any] = {}
    with workflow("typed") as wf:

        @task(inject_context=True)
        def writer(ctx: Any) -> None:
            typed = ctx.get_typed_channel(Point)
            seen["typed"] = typed
            typed.set("p", {"x": 1, "y": 2})
            try:
                typed.set("bad", {"x": "one", "y": 2})
            except TypeError as exc:
                seen["error"] = str(exc)

        _, ctx = wf.execute(ret_context=True)
    assert isinstance(seen["typed"], TypedChannel)
    assert ctx.channel.get("p") == {"x": 1, "y": 2}
    assert "x" in seen["error"]
    assert not ctx.channel.exists("bad")


def test_cycle_count_and_retry_count_change_with_visits() -> None:
    seen: list[tuple[int, int]] = []
    with workflow("counts") as wf:

        @task(inject_context=True, max_retries=1)
        def flaky(ctx: Any, data: Any = None) -> None:
            seen.append((ctx.cycle_count, ctx.retry_count))
            if ctx.retry_count == 0:
                raise RuntimeError("first attempt of each visit fails")
            if ctx.cycle_count < 2:
                ctx.next_iteration()

        wf.execute()
    assert seen == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_control_calls_outside_a_task_are_config_errors() -> None:
    with workflow("outside") as wf:
        TaskWrapper("a", lambda: None)
        _, ctx = wf.execute(ret_context=True)
    with pytest.raises(ConfigError, match="inside a running task"):
        ctx.next_iteration()
    with pytest.raises(ConfigError, match="inside a running task"):
        ctx.terminate_workflow("x")


def test_join_waits_for_final_iteration_of_predecessor() -> None:
    log: list[str] = []
    with workflow("iter_join") as wf:
        s = _rec("s", log)

        @task(inject_context=True)
        def a(ctx: Any, data: Any = None) -> int:
            n = data or 0
            log.append(f"a{n}")
            if n < 2:
                ctx.next_iteration(n + 1)
            return n

        b = _rec("b", log)
        j = _rec("j", log)
        s >> a >> j
        s >> b >> j
        wf.execute()
    assert log.count("j") == 1
    assert log[-1] == "j"
    assert log.index("a2") < log.index("j")


def test_workflow_with_dynamic_task_can_run_twice() -> None:
    log: list[str] = []
    with workflow("rerun_dynamic") as wf:

        @task(inject_context=True)
        def a(ctx: Any) -> None:
            log.append("a")
            ctx.next_task(TaskWrapper("extra", lambda: log.append("extra")))

        b = _rec("b", log)
        a >> b
        wf.execute()
        first = list(log)
        log.clear()
        wf.execute()
    assert sorted(first) == ["a", "b", "extra"]
    assert log == first
