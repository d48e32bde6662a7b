"""The task DSL (SPEC §4.1, §4.2): every ``@task`` form and option, operators, groups, bad options."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graflow import ParallelGroup, RetryPolicy, TaskWrapper, chain, parallel, task, workflow
from graflow.core.decorators import task as task_from_decorators
from graflow.core.graph import TaskGraph
from graflow.core.task import Executable, SequentialTask
from graflow.exceptions import ConfigError, DuplicateTaskError, GraphCompilationError

# -- module-level tasks, reused by several workflows -----------------------------------------------------

SHARED_LOG: list[str] = []


@task
def shared_source() -> int:
    SHARED_LOG.append("shared_source")
    return 10


@task
def shared_sink(shared_source: int) -> int:
    SHARED_LOG.append("shared_sink")
    return shared_source + 1


# -- @task forms ----------------------------------------------------------------------------------------


def test_task_bare_decorator_uses_function_name() -> None:
    @task
    def hello() -> str:
        return "hi"

    assert isinstance(hello, TaskWrapper)
    assert hello.task_id == "hello"
    assert hello.__name__ == "hello"


def test_task_empty_call_uses_function_name() -> None:
    @task()
    def hello2() -> str:
        return "hi"

    assert isinstance(hello2, TaskWrapper)
    assert hello2.task_id == "hello2"


def test_task_positional_id() -> None:
    @task("custom_id")
    def f() -> int:
        return 1

    assert f.task_id == "custom_id"


def test_task_keyword_id_with_options() -> None:
    @task(id="kw_id", inject_context=True, max_retries=2)
    def f(ctx: Any) -> int:
        return 1

    assert f.task_id == "kw_id"
    assert f.inject_context is True
    assert f.max_retries == 2


def test_task_called_as_function() -> None:
    def plain(x: int = 3) -> int:
        return x * 2

    t = task(plain)
    assert isinstance(t, TaskWrapper)
    assert t.task_id == "plain"
    assert t.func is plain


def test_decorators_module_path_is_the_same_task() -> None:
    assert task_from_decorators is task


def test_every_option_is_stored() -> None:
    policy = RetryPolicy(max_retries=4, initial_interval=0.0)

    @task(
        id="opts",
        inject_context=True,
        handler="docker",
        handler_kwargs={"image": "python:3.11"},
        resolve_keyword_args=False,
        max_cycles=7,
        retry_policy=policy,
        timeout=2.5,
        queue="gpu",
    )
    def f(ctx: Any) -> None:
        return None

    assert f.task_id == "opts"
    assert f.inject_context is True
    assert f.handler_type == "docker"
    assert f.handler_kwargs == {"image": "python:3.11"}
    assert f.resolve_keyword_args is False
    assert f.max_cycles == 7
    assert f.retry_policy is policy
    assert f.max_retries == 4  # taken from the policy
    assert f.timeout == 2.5
    assert f.queue == "gpu"


def test_option_defaults() -> None:
    @task
    def f() -> None:
        return None

    assert f.inject_context is False
    assert f.handler_type is None
    assert f.handler_kwargs is None
    assert f.resolve_keyword_args is True
    assert f.max_cycles is None
    assert f.max_retries is None
    assert f.retry_policy is None
    assert f.timeout is None
    assert f.queue is None


def test_max_retries_option_stored_without_policy() -> None:
    @task(max_retries=3)
    def f() -> None:
        return None

    assert f.max_retries == 3
    assert f.retry_policy is None


# -- bad options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_cycles": 0}, "max_cycles"),
        ({"max_cycles": "many"}, "max_cycles"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -3}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"handler_kwargs": "image=x", "handler": "docker"}, "handler_kwargs"),
        ({"handler_kwargs": {"image": "x"}}, "handler"),
    ],
)
def test_bad_option_raises_config_error_naming_it(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:

        @task(id="badopt", **kwargs)
        def f() -> None:
            return None

    message = str(info.value)
    assert needle in message
    assert "badopt" in message


def test_task_with_non_string_non_callable_argument_is_config_error() -> None:
    with pytest.raises(ConfigError, match="int"):
        task(123)  # type: ignore[call-overload]


def test_task_with_two_different_ids_is_config_error() -> None:
    with pytest.raises(ConfigError) as info:

        @task("one", id="two")
        def f() -> None:
            return None

    assert "one" in str(info.value) and "two" in str(info.value)


def test_task_applied_twice_is_config_error() -> None:
    @task
    def once() -> None:
        return None

    with pytest.raises(ConfigError, match="once"):
        task(once)


def test_empty_task_id_is_config_error() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        TaskWrapper("", lambda: None)


def test_non_callable_is_config_error() -> None:
    with pytest.raises(ConfigError, match="not callable"):
        TaskWrapper("x", 42)  # type: ignore[arg-type]


def test_bad_retry_policy_fields_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ConfigError, match="retry_on"):
        RetryPolicy(retry_on=("ValueError",))  # type: ignore[arg-type]


# -- running tasks ------------------------------------------------------------------------------------------


def test_async_task_is_awaited() -> None:
    with workflow("async") as wf:

        @task
        async def produce() -> int:
            await asyncio.sleep(0)
            return 21

        @task
        async def double(produce: int) -> int:
            await asyncio.sleep(0)
            return produce * 2

        produce >> double
        result, ctx = wf.execute(ret_context=True)

    assert result == 42
    assert ctx.get_result("produce") == 21
    assert not asyncio.iscoroutine(ctx.get_result("double"))


def test_async_task_with_injected_context() -> None:
    with workflow("async_ctx") as wf:

        @task(inject_context=True)
        async def who(ctx: Any) -> str:
            await asyncio.sleep(0)
            return ctx.task_id

        assert wf.execute() == "who"


def test_async_task_runs_inside_a_running_event_loop() -> None:
    async def main() -> Any:
        with workflow("in_loop") as wf:

            @task
            async def inner() -> str:
                await asyncio.sleep(0)
                return "done"

            return wf.execute()

    assert asyncio.run(main()) == "done"


def test_calling_a_task_without_task_id_calls_the_function() -> None:
    @task
    def add(x: int, y: int = 1) -> int:
        return x + y

    assert add(2) == 3
    assert add(2, y=5) == 7
    assert add(x=4) == 5


def test_bound_instances_have_own_ids_and_parameters() -> None:
    seen: list[tuple[str, int]] = []

    @task
    def fetch(region: str, size: int = 1) -> str:
        seen.append((region, size))
        return f"{region}:{size}"

    with workflow("bound") as wf:
        eu = fetch(task_id="fetch_eu", region="eu")
        us = fetch(task_id="fetch_us", region="us", size=5)
        assert isinstance(eu, TaskWrapper) and eu.task_id == "fetch_eu"
        assert us.bound_kwargs == {"region": "us", "size": 5}
        eu >> us
        _, ctx = wf.execute(ret_context=True)

    assert seen == [("eu", 1), ("us", 5)]
    assert ctx.get_result("fetch_eu") == "eu:1"
    assert ctx.get_result("fetch_us") == "us:5"
    assert "fetch" not in wf.graph.nodes


def test_bound_instance_keeps_template_options() -> None:
    @task(inject_context=True, max_cycles=3, queue="q1")
    def tmpl(ctx: Any, n: int) -> int:
        return n

    inst = tmpl(task_id="inst", n=1)
    assert inst.inject_context is True
    assert inst.max_cycles == 3
    assert inst.queue == "q1"
    assert inst.func is tmpl.func


def test_taskwrapper_without_decorator() -> None:
    with workflow("tw") as wf:
        first = TaskWrapper("first", lambda: 5)
        second = TaskWrapper("second", lambda first: first + 1)
        first >> second
        assert wf.execute() == 6


# -- operators ------------------------------------------------------------------------------------------------


def _simple(name: str, log: list[str] | None = None) -> TaskWrapper:
    def fn() -> str:
        if log is not None:
            log.append(name)
        return name

    return TaskWrapper(name, fn)


def test_rshift_adds_edge_and_returns_chain() -> None:
    with workflow("rs") as wf:
        a, b, c = _simple("a"), _simple("b"), _simple("c")
        seq = a >> b >> c
        assert isinstance(seq, SequentialTask)
        assert [t.task_id for t in seq] == ["a", "b", "c"]
        assert seq.leftmost is a and seq.rightmost is c
    assert sorted(wf.graph.edges) == [("a", "b"), ("b", "c")]


def test_lshift_mirrors_rshift() -> None:
    log: list[str] = []
    with workflow("ls") as wf:
        a, b, c = _simple("a", log), _simple("b", log), _simple("c", log)
        seq = c << b << a
        assert isinstance(seq, SequentialTask)
        wf.execute()
    assert sorted(wf.graph.edges) == [("a", "b"), ("b", "c")]
    assert log == ["a", "b", "c"]


def test_chain_function() -> None:
    log: list[str] = []
    with workflow("ch") as wf:
        seq = chain(_simple("a", log), _simple("b", log), _simple("c", log))
        assert isinstance(seq, SequentialTask)
        assert wf.execute() == "c"
    assert sorted(wf.graph.edges) == [("a", "b"), ("b", "c")]
    assert log == ["a", "b", "c"]


def test_parallel_function_and_pipe_make_groups() -> None:
    with workflow("par") as wf:
        a, b, c = _simple("a"), _simple("b"), _simple("c")
        g = parallel(a, b, c)
        assert isinstance(g, ParallelGroup)
        assert g.member_ids == ["a", "b", "c"]
        result = wf.execute()
    assert result == {"a": "a", "b": "b", "c": "c"}


def test_pipe_of_three_makes_one_group_of_three() -> None:
    with workflow("pipe3") as wf:
        g = _simple("a") | _simple("b") | _simple("c")
        assert g.member_ids == ["a", "b", "c"]
    groups = [n for n in wf.graph.nodes if isinstance(wf.graph.get_node(n), ParallelGroup)]
    assert groups == [g.task_id]


def test_operands_must_be_tasks() -> None:
    with workflow("bad_operand"):
        a = _simple("a")
        with pytest.raises(GraphCompilationError, match="int"):
            a >> 3  # type: ignore[operator]
        with pytest.raises(GraphCompilationError):
            a | "b"  # type: ignore[operator]
        with pytest.raises(GraphCompilationError):
            chain()
        with pytest.raises(GraphCompilationError):
            parallel()


def test_group_names_count_per_workflow_from_one() -> None:
    with workflow("names1"):
        g1 = _simple("a") | _simple("b") | _simple("c")
        g2 = _simple("d") | _simple("e")
    assert g1.task_id == "ParallelGroup_1"
    assert g2.task_id == "ParallelGroup_2"
    with workflow("names2"):
        g3 = _simple("a") | _simple("b")
    assert g3.task_id == "ParallelGroup_1"


def test_two_member_group_names() -> None:
    with workflow("names3"):
        g1 = _simple("a") | _simple("b")
        g2 = parallel(_simple("c"), _simple("d"))
    assert (g1.task_id, g2.task_id) == ("ParallelGroup_1", "ParallelGroup_2")


def test_set_group_name_renames_node_and_edges() -> None:
    with workflow("rename") as wf:
        start, end = _simple("start"), _simple("end")
        g = (_simple("a") | _simple("b")).set_group_name("fanout")
        start >> g >> end
        _, ctx = wf.execute(ret_context=True)
    assert g.task_id == "fanout"
    assert ("start", "fanout") in wf.graph.edges and ("fanout", "end") in wf.graph.edges
    assert wf.graph.owner_of["a"] == "fanout"
    assert not any(n.startswith("ParallelGroup_") for n in wf.graph.nodes)
    assert ctx.get_result("fanout") == {"a": "a", "b": "b"}


def test_set_group_name_after_wiring() -> None:
    with workflow("rename2") as wf:
        start = _simple("start")
        g = _simple("a") | _simple("b")
        start >> g
        g.set_group_name("later")
        result = wf.execute()
    assert wf.graph.edges == [("start", "later")]
    assert result == {"a": "a", "b": "b"}


def test_nested_groups_run_every_member_once() -> None:
    log: list[str] = []
    with workflow("nested") as wf:
        inner = parallel(_simple("a", log), _simple("b", log), name="inner")
        outer = parallel(inner, _simple("c", log), name="outer")
        after = _simple("after", log)
        outer >> after
        _, ctx = wf.execute(ret_context=True)
    assert wf.graph.owner_of["a"] == "inner"
    assert wf.graph.owner_of["inner"] == "outer"
    assert sorted(log[:-1]) == ["a", "b", "c"]
    assert log[-1] == "after"
    assert ctx.get_result("outer") == {"inner": {"a": "a", "b": "b"}, "c": "c"}


def test_pipe_with_existing_named_group_adds_no_stray_edge() -> None:
    log: list[str] = []
    with workflow("stray") as wf:
        start = _simple("start", log)
        x = _simple("x", log)
        g = (_simple("b", log) | _simple("c", log)).set_group_name("bc")
        outer = x | g
        start >> outer
        wf.execute()
    assert wf.graph.edges == [("start", outer.task_id)]
    assert log.count("x") == 1 and log.count("b") == 1 and log.count("c") == 1
    assert wf.graph.owner_of["x"] == outer.task_id
    assert wf.graph.owner_of["bc"] == outer.task_id


def test_pipe_with_existing_fresh_group_runs_once() -> None:
    log: list[str] = []
    with workflow("stray2") as wf:
        start = _simple("start", log)
        g = _simple("b", log) | _simple("c", log)
        outer = _simple("a", log) | g
        start >> outer
        wf.execute()
    assert wf.graph.edges == [("start", outer.task_id)]
    assert sorted(log) == ["a", "b", "c", "start"]


def test_pipe_with_wired_group_adds_no_stray_edge() -> None:
    with workflow("stray3") as wf:
        s = _simple("s")
        g = _simple("b") | _simple("c")
        s >> g
        outer = _simple("a") | g
    # 'a' joins no edge: it is only a member of the outer group
    assert all("a" not in edge for edge in wf.graph.edges)
    assert outer.member_ids == ["a", g.task_id]


def test_existing_named_group_pipe_task_adds_no_stray_edge() -> None:
    log: list[str] = []
    with workflow("stray4") as wf:
        g = (_simple("b", log) | _simple("c", log)).set_group_name("bc")
        outer = g | _simple("x", log)
        end = _simple("end", log)
        outer >> end
        wf.execute()
    assert wf.graph.edges == [(outer.task_id, "end")]
    assert sorted(log[:-1]) == ["b", "c", "x"]
    assert log[-1] == "end"


def test_duplicate_task_id_in_one_workflow() -> None:
    with workflow("dup"):

        @task("same")
        def one() -> None:
            return None

        with pytest.raises(DuplicateTaskError) as info:

            @task("same")
            def two() -> None:
                return None

    assert "same" in str(info.value)
    assert isinstance(info.value, GraphCompilationError)


def test_duplicate_bound_instance_id() -> None:
    @task
    def tmpl(n: int = 0) -> int:
        return n

    with workflow("dup2"):
        tmpl(task_id="inst", n=1)
        with pytest.raises(DuplicateTaskError, match="inst"):
            tmpl(task_id="inst", n=2)


def test_same_task_object_twice_is_not_duplicate() -> None:
    with workflow("same_obj") as wf:
        a, b, c = _simple("a"), _simple("b"), _simple("c")
        a >> b
        a >> c
    assert sorted(wf.graph.edges) == [("a", "b"), ("a", "c")]


def test_task_created_while_running_is_not_added_to_graph() -> None:
    log: list[str] = []
    with workflow("runtime") as wf:

        @task(inject_context=True)
        def maker(ctx: Any) -> str:
            TaskWrapper("ghost", lambda: log.append("ghost"))
            return "made"

        @task
        def after() -> None:
            log.append("after")

        maker >> after
        wf.execute()
    assert "ghost" not in wf.graph.nodes
    assert log == ["after"]


def test_task_created_while_running_enters_graph_through_next_task() -> None:
    log: list[str] = []
    with workflow("runtime2") as wf:

        @task(inject_context=True)
        def maker(ctx: Any) -> str:
            extra = TaskWrapper("extra", lambda: log.append("extra"))
            ctx.next_task(extra)
            return "made"

        _, ctx = wf.execute(ret_context=True)
    # the run's graph gains the dynamic task; the workflow as built stays unchanged for the next run
    assert "extra" in ctx.graph.nodes
    assert "extra" not in wf.graph.nodes
    assert log == ["extra"]


def test_static_loop_is_legal() -> None:
    with workflow("loop") as wf:
        start, agent, tool = _simple("start"), _simple("agent"), _simple("tool")
        start >> agent >> tool >> agent
    assert ("tool", "agent") in wf.graph.edges
    assert wf.graph.detect_cycles()


def test_same_module_level_tasks_in_two_workflows() -> None:
    SHARED_LOG.clear()
    with workflow("first") as wf1:
        shared_source >> shared_sink
    with workflow("second") as wf2:
        shared_source >> shared_sink
    assert wf1.graph is not wf2.graph
    assert wf1.execute() == 11
    assert wf2.execute() == 11
    assert wf1.execute() == 11
    assert SHARED_LOG == ["shared_source", "shared_sink"] * 3
    assert wf1.graph.edges == [("shared_source", "shared_sink")]
    assert wf2.graph.edges == [("shared_source", "shared_sink")]


def test_module_level_tasks_in_two_workflows_with_different_wiring() -> None:
    extra = _simple("extra_tail")
    with workflow("third") as wf3:
        shared_source >> shared_sink
    with workflow("fourth") as wf4:
        shared_source >> shared_sink >> extra
    assert wf3.graph.edges == [("shared_source", "shared_sink")]
    assert "extra_tail" not in wf3.graph.nodes
    assert wf3.execute() == 11
    assert wf4.execute() == "extra_tail"


def test_workflow_graph_is_a_task_graph_and_executables() -> None:
    with workflow("types") as wf:
        a = _simple("a")
    assert isinstance(wf.graph, TaskGraph)
    assert isinstance(a, Executable)
    assert wf.graph.get_node("a") is a


def test_empty_workflow_is_a_clear_error() -> None:
    with workflow("empty") as wf, pytest.raises(GraphCompilationError, match="empty"):
        wf.execute()


# -- handlers chosen by option ------------------------------------------------------------------------------------


def test_unknown_handler_is_plugin_not_found_naming_it() -> None:
    from graflow.exceptions import PluginNotFoundError

    with workflow("unknown_handler") as wf:

        @task(handler="no_such_handler_xyz")
        def remote() -> int:
            return 1

        with pytest.raises(PluginNotFoundError) as info:
            wf.execute()
    assert "no_such_handler_xyz" in str(info.value)
    assert "direct" in str(info.value)


def test_engine_registered_handler_runs_task() -> None:
    from graflow import ExecutionContext, WorkflowEngine
    from graflow.core.handler import TaskHandler

    calls: list[str] = []

    class Recording(TaskHandler):
        name = "recording"

        def execute_task(self, task: Executable, context: Any) -> Any:
            calls.append(task.task_id)
            return ("via-handler", task.run_in(context, context.current_task_context))

    graph = TaskGraph("handlers")
    t = TaskWrapper("handled", lambda: 5, handler_type="py311", register_to_context=False)
    graph.add_node(t)
    engine = WorkflowEngine()
    engine.register_handler("py311", Recording())
    assert engine.execute(ExecutionContext.create(graph)) == ("via-handler", 5)
    assert calls == ["handled"]
