"""Scheduling (SPEC §4.3): joins, loops, sources, results, parameters, return values, max_steps, entry points."""

from __future__ import annotations

from typing import Any

import pytest

from graflow import ExecutionContext, TaskWrapper, WorkflowEngine, create_execution_context, task, workflow
from graflow.core.context import create_execution_context as create_from_context_module
from graflow.core.graph import TaskGraph
from graflow.exceptions import ConfigError, CycleLimitExceededError, GraflowRuntimeError, TaskError


def _rec(name: str, log: list[str], value: Any = None) -> TaskWrapper:
    def fn() -> Any:
        log.append(name)
        return name if value is None else value

    return TaskWrapper(name, fn)


# -- joins ------------------------------------------------------------------------------------------------


def test_diamond_sink_runs_once_with_both_inputs() -> None:
    log: list[str] = []
    seen: list[tuple[int, int]] = []
    with workflow("diamond") as wf:

        @task
        def s() -> int:
            log.append("s")
            return 1

        @task
        def left(s: int) -> int:
            log.append("left")
            return s + 10

        @task
        def right(s: int) -> int:
            log.append("right")
            return s + 20

        @task
        def sink(left: int, right: int) -> int:
            log.append("sink")
            seen.append((left, right))
            return left + right

        s >> left >> sink
        s >> right >> sink
        result = wf.execute()

    assert log.count("sink") == 1
    assert seen == [(11, 21)]
    assert result == 32
    assert log[-1] == "sink"


def test_join_waits_for_the_longer_branch() -> None:
    log: list[str] = []
    with workflow("uneven") as wf:
        s, a, b, j = _rec("s", log), _rec("a", log), _rec("b", log), _rec("j", log)
        s >> a >> b >> j
        s >> j
        wf.execute()
    assert log == ["s", "a", "b", "j"]


def test_join_with_predecessor_unreachable_from_start_does_not_hang() -> None:
    log: list[str] = []
    with workflow("unreachable") as wf:
        a, b, other, j = _rec("a", log), _rec("b", log), _rec("other", log), _rec("j", log)
        a >> j
        other >> b >> j
        result = wf.execute(start="a")
    assert log == ["a", "j"]
    assert result == "j"


def test_goto_skipped_predecessor_does_not_hang_join() -> None:
    log: list[str] = []
    side = _rec("side", log)
    with workflow("goto_join") as wf:
        s, left, j = _rec("s", log), _rec("left", log), _rec("j", log)

        @task(inject_context=True)
        def right(ctx: Any) -> str:
            log.append("right")
            ctx.next_task(side, goto=True)
            return "right"

        s >> left >> j
        s >> right >> j
        wf.execute()
    assert log.count("j") == 1
    assert log.index("j") > log.index("left")
    assert set(log) == {"s", "left", "right", "side", "j"}


def test_join_in_loop_rearms_each_wave() -> None:
    log: list[str] = []
    done = _rec("done", log)
    with workflow("loop_join") as wf:
        start, t1, t2, merge = _rec("start", log), _rec("t1", log), _rec("t2", log), _rec("merge", log)

        @task(inject_context=True)
        def agent(ctx: Any) -> int:
            log.append("agent")
            if ctx.cycle_count == 3:
                ctx.next_task(done, goto=True)
            return ctx.cycle_count

        start >> agent
        agent >> t1 >> merge
        agent >> t2 >> merge
        merge >> agent
        wf.execute()
    wave = ["agent", "t1", "t2", "merge"]
    assert log == ["start", *wave, *wave, "agent", "done"]


# -- loops ------------------------------------------------------------------------------------------------


def test_static_loop_with_goto_exit() -> None:
    log: list[str] = []
    finish = _rec("finish", log)
    with workflow("agent_loop") as wf:
        start = _rec("start", log)

        @task(inject_context=True)
        def agent(ctx: Any) -> str:
            log.append("agent")
            if ctx.cycle_count >= 3:
                ctx.next_task(finish, goto=True)
            return "agent"

        tool = _rec("tool", log)
        start >> agent >> tool >> agent
        result = wf.execute()
    assert log == ["start", "agent", "tool", "agent", "tool", "agent", "finish"]
    assert result == "finish"


def test_static_loop_with_terminate_exit() -> None:
    log: list[str] = []
    with workflow("agent_loop_term") as wf:
        start = _rec("start", log)

        @task(inject_context=True)
        def agent(ctx: Any) -> int:
            log.append("agent")
            if ctx.cycle_count == 2:
                ctx.terminate_workflow("enough")
            return ctx.cycle_count

        tool = _rec("tool", log)
        start >> agent >> tool >> agent
        result = wf.execute()
    assert log == ["start", "agent", "tool", "agent"]
    assert result == 2


def test_loop_without_exit_hits_cycle_limit() -> None:
    with workflow("endless") as wf:
        start = TaskWrapper("start", lambda: None)
        agent = TaskWrapper("agent", lambda: None, max_cycles=4)
        tool = TaskWrapper("tool", lambda: None)
        start >> agent >> tool >> agent
        with pytest.raises(CycleLimitExceededError) as info:
            wf.execute()
    assert info.value.task_id == "agent"
    assert info.value.max_cycles == 4


# -- sources and results ----------------------------------------------------------------------------------


def test_every_source_starts_when_no_start_given() -> None:
    log: list[str] = []
    with workflow("sources") as wf:
        a, b, c = _rec("a", log), _rec("b", log), _rec("c", log)
        a2 = _rec("a2", log)
        a >> a2
        _ = (b, c)
        wf.execute()
    assert sorted(log) == ["a", "a2", "b", "c"]
    assert log.index("a2") > log.index("a")


def test_only_chosen_start_runs() -> None:
    log: list[str] = []
    with workflow("one_start") as wf:
        a, b, c = _rec("a", log), _rec("b", log), _rec("c", log)
        a >> b
        _ = c
        wf.execute(start=b)
    assert log == ["b"]


def test_results_are_stored_under_result_keys() -> None:
    with workflow("results") as wf:
        a = TaskWrapper("a", lambda: {"k": 1})
        b = TaskWrapper("b", lambda a: a["k"] + 1)
        a >> b
        _, ctx = wf.execute(ret_context=True)
    assert ctx.channel.get("a.__result__") == {"k": 1}
    assert ctx.channel.get("b.__result__") == 2
    assert ctx.get_result("b") == 2
    assert {"a.__result__", "b.__result__"} <= set(ctx.channel.keys())


def test_none_result_is_stored_too() -> None:
    with workflow("none_result") as wf:
        TaskWrapper("quiet", lambda: None)
        _, ctx = wf.execute(ret_context=True)
    assert ctx.channel.exists("quiet.__result__")


# -- parameters ------------------------------------------------------------------------------------------


def test_parameter_prefers_task_result_over_channel_key() -> None:
    with workflow("param_result") as wf:
        x = TaskWrapper("x", lambda: "from_task")
        use = TaskWrapper("use", lambda x: x)
        x >> use
        assert wf.execute(x="from_channel") == "from_task"


def test_parameter_falls_back_to_channel_key() -> None:
    with workflow("param_channel") as wf:
        TaskWrapper("use", lambda y: y * 2)
        assert wf.execute(y=21) == 42


def test_parameter_falls_back_to_default() -> None:
    with workflow("param_default") as wf:
        TaskWrapper("use", lambda z=5: z)
        assert wf.execute() == 5


def test_bound_kwargs_override_results_and_channel() -> None:
    @task
    def use(x: int) -> int:
        return x

    with workflow("param_bound") as wf:
        x = TaskWrapper("x", lambda: 1)
        x >> use(task_id="use_bound", x=99)
        assert wf.execute(x=2) == 99


def test_resolve_keyword_args_false_uses_defaults_only() -> None:
    with workflow("no_resolve") as wf:
        x = TaskWrapper("x", lambda: 1)
        use = TaskWrapper("use", lambda x=7: x, resolve_keyword_args=False)
        x >> use
        assert wf.execute() == 7


def test_missing_parameter_error_names_task_and_parameter() -> None:
    with workflow("missing") as wf:

        @task
        def needy(mystery_param: int) -> int:
            return mystery_param

        with pytest.raises(GraflowRuntimeError) as info:
            wf.execute()
    message = str(info.value)
    assert isinstance(info.value, TaskError)
    assert "needy" in message
    assert "mystery_param" in message


def test_results_survive_a_failed_task() -> None:
    with workflow("keep") as wf:
        ok = TaskWrapper("ok", lambda: "kept")

        @task
        def broken(ok: str) -> None:
            raise ValueError("boom")

        ok >> broken
        with pytest.raises(TaskError) as info:
            wf.execute()
    ctx = info.value.execution_context  # type: ignore[attr-defined]
    assert ctx.get_result("ok") == "kept"


# -- return values ---------------------------------------------------------------------------------------


def test_execute_returns_last_result_and_context() -> None:
    with workflow("ret") as wf:
        a = TaskWrapper("a", lambda: 1)
        b = TaskWrapper("b", lambda a: a + 1)
        a >> b
        assert wf.execute() == 2
        result, ctx = wf.execute(ret_context=True)
    assert result == 2
    assert isinstance(ctx, ExecutionContext)
    assert ctx.get_result("a") == 1


def test_max_steps_overflow_is_a_clear_error() -> None:
    with workflow("steps") as wf:
        a = TaskWrapper("a", lambda: None, max_cycles=1000)
        b = TaskWrapper("b", lambda: None, max_cycles=1000)
        a >> b >> a
        with pytest.raises(GraflowRuntimeError) as info:
            wf.execute(start="a", max_steps=5)
    assert not isinstance(info.value, CycleLimitExceededError)
    assert "max_steps" in str(info.value)
    assert "5" in str(info.value)


def test_max_steps_not_exceeded_when_exactly_enough() -> None:
    with workflow("steps_ok") as wf:
        a, b, c = TaskWrapper("a", lambda: 1), TaskWrapper("b", lambda: 2), TaskWrapper("c", lambda: 3)
        a >> b >> c
        assert wf.execute(max_steps=3) == 3


def test_bad_max_steps_is_config_error() -> None:
    with workflow("steps_bad") as wf:
        TaskWrapper("a", lambda: 1)
        with pytest.raises(ConfigError, match="max_steps"):
            wf.execute(max_steps=0)


# -- entry points ------------------------------------------------------------------------------------------


def test_execute_with_start_and_inputs() -> None:
    with workflow("inputs") as wf:
        a = TaskWrapper("a", lambda: "unused")
        b = TaskWrapper("b", lambda name, greeting="hi": f"{greeting} {name}")
        a >> b
        assert wf.execute(start="b", name="ann") == "hi ann"
        assert wf.execute(start=b, name="bob", greeting="yo") == "yo bob"


def test_execute_with_start_node_and_initial_channel() -> None:
    with workflow("upstream_args") as wf:
        a = TaskWrapper("a", lambda: "unused")
        b = TaskWrapper("b", lambda n: n + 1)
        a >> b
        assert wf.execute("b", initial_channel={"n": 1}) == 2
        assert wf.execute(start_node="b", initial_channel={"n": 4}) == 5
        result, ctx = wf.execute("b", 100, True, {"n": 9})
    assert result == 10
    assert ctx.channel.get("n") == 9


def test_start_and_start_node_together_is_config_error() -> None:
    with workflow("both") as wf:
        TaskWrapper("a", lambda: 1)
        with pytest.raises(ConfigError):
            wf.execute("a", start="a")


def test_unknown_start_is_config_error_listing_tasks() -> None:
    with workflow("unknown_start") as wf:
        TaskWrapper("real", lambda: 1)
        with pytest.raises(ConfigError) as info:
            wf.execute(start="nope")
    assert "nope" in str(info.value) and "real" in str(info.value)


def test_loop_without_source_needs_start() -> None:
    with workflow("no_source") as wf:
        a, b = TaskWrapper("a", lambda: 1), TaskWrapper("b", lambda: 2)
        a >> b >> a
        with pytest.raises(ConfigError, match="start"):
            wf.execute()


def test_execution_context_create_and_engine_execute() -> None:
    log: list[str] = []
    graph = TaskGraph("manual")
    a, b, c = _rec("a", log), _rec("b", log), _rec("c", log, value=3)
    for t in (a, b, c):
        graph.add_node(t)
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    ctx = ExecutionContext.create(graph, "b", max_steps=10)
    assert WorkflowEngine().execute(ctx) == 3
    assert log == ["b", "c"]
    assert ctx.get_result("c") == 3
    assert ctx.completed_tasks == {"b", "c"}


def test_create_execution_context_helper() -> None:
    log: list[str] = []
    graph = TaskGraph("helper")
    a, b = _rec("a", log), _rec("b", log)
    graph.add_node(a)
    graph.add_node(b)
    graph.add_edge("a", "b")
    assert create_from_context_module is create_execution_context
    ctx = create_execution_context(graph)
    assert ctx.start_nodes == ["a"]
    assert WorkflowEngine().execute(ctx) == "b"
    assert log == ["a", "b"]


def test_engine_execute_with_start_task_id() -> None:
    log: list[str] = []
    graph = TaskGraph("start_id")
    a, b = _rec("a", log), _rec("b", log)
    graph.add_node(a)
    graph.add_node(b)
    graph.add_edge("a", "b")
    ctx = ExecutionContext.create(graph)
    WorkflowEngine().execute(ctx, start_task_id="b")
    assert log == ["b"]


def test_engine_execute_rejects_non_context() -> None:
    with pytest.raises(ConfigError):
        WorkflowEngine().execute("not a context")  # type: ignore[arg-type]
