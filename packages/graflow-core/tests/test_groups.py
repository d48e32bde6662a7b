"""Parallel groups (SPEC §4.6, issue 3): coordinators, policies, barriers, the shared channel, member retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from graflow import (
    CoordinationBackend,
    ErrorHandlingPolicy,
    ExecutionContext,
    GroupExecutionPolicy,
    ParallelGroup,
    RetryPolicy,
    TaskWrapper,
    WorkflowEngine,
    parallel,
    plugins,
    task,
    workflow,
)
from graflow.coordination.direct import DirectCoordinator
from graflow.coordination.executor import GroupExecutor
from graflow.coordination.threading_coordinator import ThreadingCoordinator
from graflow.core.graph import TaskGraph
from graflow.core.handler import TaskResult
from graflow.core.handlers.group_policy import (
    AtLeastNGroupPolicy,
    BestEffortGroupPolicy,
    CriticalGroupPolicy,
    StrictGroupPolicy,
)
from graflow.exceptions import ConfigError, ParallelGroupError, PluginNotFoundError
from graflow.hookspecs import hookimpl

COORDINATORS = ["direct", "threading"]


def _rec(name: str, log: list[str], value: Any = None) -> TaskWrapper:
    lock = threading.Lock()

    def fn() -> Any:
        with lock:
            log.append(name)
        return name if value is None else value

    return TaskWrapper(name, fn)


def _bad(name: str, log: list[str], errors: list[BaseException] | None = None) -> TaskWrapper:
    def fn() -> None:
        log.append(name)
        err = ValueError(f"{name} broke")
        if errors is not None:
            errors.append(err)
        raise err

    return TaskWrapper(name, fn)


# -- custom and plugin policies -----------------------------------------------------------------------------


class NoMoreThanOneFailure(GroupExecutionPolicy):
    """A custom policy: the group tolerates a single failed member."""

    def on_group_finished(
        self, group_id: str, tasks: Sequence[Any], results: dict[str, TaskResult], context: ExecutionContext
    ) -> None:
        failed = [tid for tid, r in results.items() if not r.success]
        if len(failed) > 1:
            raise ParallelGroupError(
                f"{group_id}: too many failures",
                group_id=group_id,
                failed_tasks=[(tid, results[tid].error_message or "") for tid in failed],
                successful_tasks=[tid for tid, r in results.items() if r.success],
            )


class MinSuccessPolicy(GroupExecutionPolicy):
    """Registered through a plugin as ``min_success_test``."""

    name = "min_success_test"

    def __init__(self, k: int = 1) -> None:
        self.k = k

    def on_group_finished(
        self, group_id: str, tasks: Sequence[Any], results: dict[str, TaskResult], context: ExecutionContext
    ) -> None:
        ok = [tid for tid, r in results.items() if r.success]
        if len(ok) < self.k:
            raise self._fail(group_id, results, f"{len(ok)} < {self.k}")


class _PolicyPlugin:
    @hookimpl
    def graflow_register_group_policies(self) -> list[type]:
        return [MinSuccessPolicy]


@pytest.fixture
def plugin_policy() -> Iterator[None]:
    plugin = _PolicyPlugin()
    plugins.register(plugin, name="test-groups-policy-plugin")
    try:
        yield
    finally:
        plugins.unregister(plugin)


# -- every policy with every coordinator ------------------------------------------------------------------


POLICY_CASES: list[tuple[str, Any, dict[str, Any], bool]] = [
    ("default_strict", None, {}, True),
    ("strict", "strict", {}, True),
    ("best_effort", "best_effort", {}, False),
    ("at_least_2", "at_least_n", {"n": 2}, False),
    ("at_least_3", "at_least_n", {"n": 3}, True),
    ("critical_ok", "critical_tasks", {"task_ids": ["ok1"]}, False),
    ("critical_bad", "critical_tasks", {"task_ids": ["ok1", "bad"]}, True),
    ("alias_critical_ok", "critical", {"task_ids": ["ok2"]}, False),
    ("alias_critical_bad", "critical", {"task_ids": ["bad"]}, True),
    ("custom_instance", NoMoreThanOneFailure(), {}, False),
    ("plugin_ok", "min_success_test", {"k": 2}, False),
    ("plugin_bad", "min_success_test", {"k": 3}, True),
]


@pytest.mark.usefixtures("plugin_policy")
@pytest.mark.parametrize("backend", COORDINATORS)
@pytest.mark.parametrize(("case", "policy", "kwargs", "fails"), POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_policy_with_coordinator(backend: str, case: str, policy: Any, kwargs: dict[str, Any], fails: bool) -> None:
    log: list[str] = []
    errors: list[BaseException] = []
    with workflow(f"policy_{case}") as wf:
        start = _rec("start", log)
        g = (_rec("ok1", log) | _rec("ok2", log) | _bad("bad", log, errors)).set_group_name("grp")
        g.with_execution(backend=backend)
        if policy is not None:
            g.with_policy(policy, **kwargs)
        after = _rec("after", log)
        start >> g >> after
        if fails:
            with pytest.raises(ParallelGroupError) as info:
                wf.execute()
            err = info.value
            assert err.group_id == "grp"
            assert [tid for tid, _ in err.failed_tasks] == ["bad"]
            assert sorted(err.successful_tasks) == ["ok1", "ok2"]
            assert "after" not in log
            ctx = err.execution_context  # type: ignore[attr-defined]
        else:
            result, ctx = wf.execute(ret_context=True)
            assert log.count("after") == 1 and log[-1] == "after"
            assert result == "after"
            group_result = ctx.get_result("grp")
            assert group_result["ok1"] == "ok1"
            assert group_result["bad"] is errors[0]
    assert sorted(log[1:4]) == ["bad", "ok1", "ok2"]
    # every member's outcome is visible, failed ones as their exception
    assert ctx.get_result("ok1") == "ok1"
    assert ctx.get_result("bad") is errors[0]


@pytest.mark.parametrize("backend", COORDINATORS)
def test_custom_policy_failing_the_group(backend: str) -> None:
    log: list[str] = []
    with workflow("custom_fail") as wf:
        g = parallel(_bad("b1", log), _bad("b2", log), _rec("ok", log), name="g")
        g.with_execution(backend=backend).with_policy(NoMoreThanOneFailure())
        after = _rec("after", log)
        g >> after
        with pytest.raises(ParallelGroupError) as info:
            wf.execute()
    assert sorted(t for t, _ in info.value.failed_tasks) == ["b1", "b2"]
    assert info.value.successful_tasks == ["ok"]
    assert "after" not in log


def test_parallel_group_error_carries_details_and_cause() -> None:
    log: list[str] = []
    errors: list[BaseException] = []
    with workflow("pge") as wf:
        g = parallel(_rec("fine", log), _bad("broken", log, errors), name="pair").with_execution(backend="direct")
        _ = g
        with pytest.raises(ParallelGroupError) as info:
            wf.execute()
    err = info.value
    assert err.group_id == "pair"
    assert err.failed_tasks[0][0] == "broken"
    assert "broken broke" in err.failed_tasks[0][1]
    assert err.successful_tasks == ["fine"]
    assert "pair" in str(err) and "broken" in str(err)
    assert err.__cause__ is errors[0]


# -- with_policy forms ---------------------------------------------------------------------------------------


def _group3(name: str = "trio") -> ParallelGroup:
    return parallel(TaskWrapper("a", lambda: 1), TaskWrapper("b", lambda: 2), TaskWrapper("c", lambda: 3), name=name)


def test_with_policy_forms() -> None:
    with workflow("forms1"):
        g = _group3()
        assert isinstance(g.policy, StrictGroupPolicy)
        assert g.with_policy("at_least_n", n=2) is g
        assert isinstance(g.policy, AtLeastNGroupPolicy) and g.policy.n == 2
        g.with_policy(ErrorHandlingPolicy.critical_tasks(["a"]))
        assert isinstance(g.policy, CriticalGroupPolicy) and g.policy.task_ids == ["a"]
        g.with_policy(ErrorHandlingPolicy.at_least_n(3))
        assert g.policy.n == 3  # type: ignore[attr-defined]
        g.with_policy(ErrorHandlingPolicy.best_effort())
        assert isinstance(g.policy, BestEffortGroupPolicy)
        g.with_policy(ErrorHandlingPolicy.strict())
        assert isinstance(g.policy, StrictGroupPolicy)
        custom = NoMoreThanOneFailure()
        g.with_policy(custom)
        assert g.policy is custom
        g.with_policy(ErrorHandlingPolicy.critical(["b"]))
        assert g.policy.task_ids == ["b"]  # type: ignore[attr-defined]
        g.with_policy(BestEffortGroupPolicy)
        assert isinstance(g.policy, BestEffortGroupPolicy)
        g.with_policy(ErrorHandlingPolicy.AT_LEAST_N, n=1)
        assert isinstance(g.policy, AtLeastNGroupPolicy)


def test_with_execution_policy_argument() -> None:
    with workflow("forms2"):
        g = _group3()
        assert g.with_execution(policy="best_effort") is g
        assert isinstance(g.policy, BestEffortGroupPolicy)
        g.with_execution(backend=CoordinationBackend.DIRECT, policy=ErrorHandlingPolicy.at_least_n(2))
        assert isinstance(g.policy, AtLeastNGroupPolicy)
        assert g._execution_config["backend"] == "direct"


@pytest.mark.parametrize("backend", [CoordinationBackend.DIRECT, CoordinationBackend.THREADING, "direct", "THREADING"])
def test_setting_backend_does_not_reset_policy(backend: Any) -> None:
    log: list[str] = []
    with workflow("keep_policy") as wf:
        g = parallel(_rec("ok", log), _bad("bad", log), name="g")
        g.with_policy("best_effort")
        g.with_execution(backend=backend)
        g.with_execution(backend_config={})
        assert isinstance(g.policy, BestEffortGroupPolicy)
        after = _rec("after", log)
        g >> after
        wf.execute()
    assert "after" in log


def test_policy_set_after_backend_sticks() -> None:
    with workflow("keep_policy2"):
        g = _group3().with_execution(backend="direct").with_policy("at_least_n", n=1)
        g.with_execution(backend="threading", backend_config={"thread_count": 2})
        assert isinstance(g.policy, AtLeastNGroupPolicy) and g.policy.n == 1


def test_at_least_n_larger_than_group_fails_at_with_policy() -> None:
    with workflow("bad_n"):
        g = _group3("my_trio")
        with pytest.raises(ConfigError) as info:
            g.with_policy("at_least_n", n=4)
        with pytest.raises(ConfigError) as info2:
            g.with_policy(ErrorHandlingPolicy.at_least_n(5))
    assert "my_trio" in str(info.value) and "4" in str(info.value)
    assert "my_trio" in str(info2.value)


def test_critical_id_not_a_member_fails_at_with_policy() -> None:
    with workflow("bad_critical"):
        g = _group3("crit_group")
        with pytest.raises(ConfigError) as info:
            g.with_policy("critical_tasks", task_ids=["a", "zzz"])
    assert "crit_group" in str(info.value)
    assert "zzz" in str(info.value)


def test_unknown_policy_name_fails_at_with_policy() -> None:
    with workflow("bad_name"):
        g = _group3("named_group")
        with pytest.raises(PluginNotFoundError) as info:
            g.with_policy("no_such_policy")
    message = str(info.value)
    assert "named_group" in message
    assert "no_such_policy" in message
    assert "strict" in message  # lists what is installed
    assert isinstance(info.value, ConfigError)


def test_bad_policy_arguments_fail_at_with_policy() -> None:
    with workflow("bad_args"):
        g = _group3("args_group")
        with pytest.raises(ConfigError) as info:
            g.with_policy("at_least_n", wrong=1)
        with pytest.raises(ConfigError):
            g.with_policy("at_least_n", n=-1)
        with pytest.raises(ConfigError):
            g.with_policy(NoMoreThanOneFailure(), n=1)
        with pytest.raises(ConfigError):
            g.with_policy(42)
    assert "args_group" in str(info.value)


def test_bad_backend_fails_at_with_execution() -> None:
    with workflow("bad_backend"):
        g = _group3()
        with pytest.raises(PluginNotFoundError) as info:
            g.with_execution(backend="nonexistent_backend")
        with pytest.raises(ConfigError):
            g.with_execution(backend_config="threads=2")  # type: ignore[arg-type]
    assert "threading" in str(info.value)


def test_bad_backend_config_key_names_valid_keys() -> None:
    with workflow("bad_backend_config") as wf:
        _group3().with_execution(backend="threading", backend_config={"threads": 2})
        with pytest.raises(ConfigError) as info:
            wf.execute()
    assert "threads" in str(info.value) and "thread_count" in str(info.value)


# -- barriers, nesting, tails ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", COORDINATORS)
def test_fanout_fanin_runs_merge_once(backend: str) -> None:
    log: list[str] = []
    got: list[Any] = []
    with workflow("fan") as wf:
        fetch = _rec("fetch", log, value=10)

        def member(name: str, k: int) -> TaskWrapper:
            def fn(fetch: int) -> int:
                log.append(name)
                return fetch * k

            return TaskWrapper(name, fn)

        @task
        def merge(a: int, b: int, c: int) -> int:
            log.append("merge")
            got.append((a, b, c))
            return a + b + c

        fetch >> (member("a", 1) | member("b", 2) | member("c", 3)).with_execution(backend=backend) >> merge
        assert wf.execute() == 60
    assert log.count("merge") == 1
    assert log[-1] == "merge"
    assert got == [(10, 20, 30)]


@pytest.mark.parametrize("backend", COORDINATORS)
def test_chained_tails_finish_before_successor(backend: str) -> None:
    log: list[str] = []
    with workflow("tails") as wf:
        a, b, c, d = _rec("a", log), _rec("b", log), _rec("c", log), _rec("d", log)
        after = _rec("after", log)
        g = (a | (b >> c >> d)).with_execution(backend=backend)
        g >> after
        _, ctx = wf.execute(ret_context=True)
    assert log[-1] == "after" and log.count("after") == 1
    assert sorted(log[:-1]) == ["a", "b", "c", "d"]
    assert log.index("b") < log.index("c") < log.index("d")
    assert all(log.count(x) == 1 for x in "abcd")
    assert ctx.get_result("d") == "d"


@pytest.mark.parametrize("outer", COORDINATORS)
@pytest.mark.parametrize("inner", COORDINATORS)
def test_nested_groups(outer: str, inner: str) -> None:
    log: list[str] = []
    with workflow("nested") as wf:
        inner_g = parallel(_rec("i1", log), _rec("i2", log), name="inner").with_execution(backend=inner)
        deep = parallel(_rec("d1", log), _rec("d2", log), name="deep").with_execution(backend=inner)
        outer_g = parallel(inner_g, _rec("o1", log) >> deep, name="outer").with_execution(backend=outer)
        start = _rec("start", log)
        after = _rec("after", log)
        start >> outer_g >> after
        _, ctx = wf.execute(ret_context=True)
    assert log[0] == "start" and log[-1] == "after"
    assert sorted(log[1:-1]) == ["d1", "d2", "i1", "i2", "o1"]
    assert log.index("o1") < log.index("d1") and log.index("o1") < log.index("d2")
    assert ctx.get_result("inner") == {"i1": "i1", "i2": "i2"}
    assert ctx.get_result("deep") == {"d1": "d1", "d2": "d2"}


@pytest.mark.parametrize("backend", COORDINATORS)
def test_nested_group_failure_propagates_under_strict(backend: str) -> None:
    log: list[str] = []
    with workflow("nested_fail") as wf:
        inner_g = parallel(_rec("i1", log), _bad("i2", log), name="inner").with_execution(backend=backend)
        outer_g = parallel(inner_g, _rec("o1", log), name="outer").with_execution(backend=backend)
        outer_g >> _rec("after", log)
        with pytest.raises(ParallelGroupError) as info:
            wf.execute()
    assert info.value.group_id == "outer"
    assert [t for t, _ in info.value.failed_tasks] == ["inner"]
    assert "after" not in log


@pytest.mark.parametrize("backend", COORDINATORS)
def test_join_of_two_groups_runs_once(backend: str) -> None:
    log: list[str] = []
    with workflow("two_groups") as wf:
        g1 = (_rec("a", log) | _rec("b", log)).with_execution(backend=backend)
        g2 = (_rec("c", log) | _rec("d", log)).with_execution(backend=backend)
        j = _rec("j", log)
        g1 >> j
        g2 >> j
        wf.execute()
    assert log.count("j") == 1 and log[-1] == "j"


# -- the shared channel ---------------------------------------------------------------------------------------


def test_shared_channel_atomic_add_under_contention() -> None:
    with workflow("atomic") as wf:

        def adder(name: str) -> TaskWrapper:
            def fn(ctx: Any) -> None:
                channel = ctx.get_channel()
                for _ in range(1000):
                    channel.atomic_add("counter", 1)

            return TaskWrapper(name, fn, inject_context=True)

        parallel(*(adder(f"add{i}") for i in range(8)), name="adders").with_execution(
            backend="threading", backend_config={"thread_count": 8}
        )
        _, ctx = wf.execute(ret_context=True)
    assert ctx.channel.get("counter") == 8000


def test_shared_channel_lock_makes_read_modify_write_atomic() -> None:
    with workflow("locked") as wf:

        def bumper(name: str) -> TaskWrapper:
            def fn(ctx: Any) -> None:
                channel = ctx.get_channel()
                for _ in range(200):
                    with channel.lock("total", timeout=5):
                        channel.set("total", channel.get("total", 0) + 1)

            return TaskWrapper(name, fn, inject_context=True)

        parallel(*(bumper(f"bump{i}") for i in range(8)), name="bumpers").with_execution(
            backend="threading", backend_config={"thread_count": 8}
        )
        _, ctx = wf.execute(ret_context=True)
    assert ctx.channel.get("total") == 1600


@pytest.mark.parametrize("backend", COORDINATORS)
def test_members_see_each_others_writes(backend: str) -> None:
    seen: dict[str, Any] = {}
    with workflow("visible") as wf:

        @task(inject_context=True)
        def writer(ctx: Any) -> None:
            ctx.get_channel().set("note", "from writer")
            ctx.get_channel().append("items", "w")

        @task(inject_context=True)
        def reader(ctx: Any) -> None:
            ctx.get_channel().append("items", "r")

        @task(inject_context=True)
        def after(ctx: Any) -> None:
            seen["note"] = ctx.get_channel().get("note")
            seen["items"] = sorted(ctx.get_channel().get("items"))

        (writer | reader).with_execution(backend=backend) >> after
        wf.execute()
    assert seen == {"note": "from writer", "items": ["r", "w"]}


def test_threading_members_share_channel_while_running() -> None:
    written = threading.Event()
    seen: dict[str, Any] = {}
    with workflow("live_visible") as wf:

        @task(inject_context=True)
        def writer(ctx: Any) -> None:
            ctx.get_channel().set("live", 123)
            written.set()

        @task(inject_context=True)
        def reader(ctx: Any) -> None:
            assert written.wait(30)
            seen["live"] = ctx.get_channel().get("live")

        (reader | writer).with_execution(backend="threading", backend_config={"thread_count": 2})
        wf.execute()
    assert seen["live"] == 123


# -- the direct coordinator ------------------------------------------------------------------------------------


def test_direct_runs_members_in_order_in_calling_thread() -> None:
    log: list[str] = []
    threads: set[int] = set()

    def member(name: str) -> TaskWrapper:
        def fn() -> None:
            threads.add(threading.get_ident())
            log.append(name)

        return TaskWrapper(name, fn)

    with workflow("direct_order") as wf:
        parallel(member("m1"), member("m2"), member("m3"), name="g").with_execution(backend="direct")
        wf.execute()
    assert log == ["m1", "m2", "m3"]
    assert threads == {threading.get_ident()}


def test_direct_never_runs_unrelated_queued_tasks_inside_group() -> None:
    log: list[str] = []
    with workflow("direct_isolated") as wf:
        s = _rec("s", log)
        m1, m1b, m2 = _rec("m1", log), _rec("m1b", log), _rec("m2", log)
        g = (m1 >> m1b) | m2
        g.with_execution(backend="direct")
        x, y = _rec("x", log), _rec("y", log)
        s >> g
        s >> x >> y
        other = _rec("other_source", log)
        _ = other
        wf.execute()
    members = [n for n in log if n in ("m1", "m1b", "m2")]
    assert members == ["m1", "m1b", "m2"]
    first, last = log.index("m1"), log.index("m2")
    assert all(n in ("m1", "m1b", "m2") for n in log[first : last + 1]), log
    assert sorted(log) == sorted(["s", "m1", "m1b", "m2", "x", "y", "other_source"])


# -- context-wide default coordinator ------------------------------------------------------------------------------


@pytest.fixture
def direct_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = DirectCoordinator.run_members

    def spy(self: DirectCoordinator, group: Any, member_ids: Any, run_member: Any, context: Any) -> Any:
        calls.append(group.task_id)
        return original(self, group, member_ids, run_member, context)

    monkeypatch.setattr(DirectCoordinator, "run_members", spy)
    return calls


def test_workflow_wide_default_coordinator(direct_spy: list[str]) -> None:
    log: list[str] = []
    with workflow("wide", coordinator="direct") as wf:
        g1 = parallel(_rec("a", log), _rec("b", log), name="g1")
        g2 = parallel(_rec("c", log), _rec("d", log), name="g2")
        g1 >> g2
        _, ctx = wf.execute(ret_context=True)
    assert direct_spy == ["g1", "g2"]
    assert ctx.default_coordinator == "direct"
    assert log == ["a", "b", "c", "d"]


def test_group_backend_overrides_context_default(direct_spy: list[str]) -> None:
    with workflow("override", coordinator="direct") as wf:
        parallel(TaskWrapper("a", lambda: 1), TaskWrapper("b", lambda: 2), name="own").with_execution(
            backend="threading"
        )
        _, ctx = wf.execute(ret_context=True)
    assert direct_spy == []
    assert GroupExecutor.coordinator_for(wf.graph.get_node("own"), ctx)[0] == "threading"  # type: ignore[arg-type]


def test_default_coordinator_is_threading() -> None:
    with workflow("default_backend") as wf:
        g = _group3()
        _, ctx = wf.execute(ret_context=True)
    assert GroupExecutor.coordinator_for(g, ctx)[0] == "threading"


def test_execution_context_create_takes_coordinator(direct_spy: list[str]) -> None:
    graph = TaskGraph("manual")
    a = TaskWrapper("a", lambda: 1, register_to_context=False)
    b = TaskWrapper("b", lambda: 2, register_to_context=False)
    g = ParallelGroup([a, b], name="manual_group")
    g._register(graph)
    ctx = ExecutionContext.create(graph, coordinator=CoordinationBackend.DIRECT)
    assert WorkflowEngine().execute(ctx) == {"a": 1, "b": 2}
    assert direct_spy == ["manual_group"]


def test_unknown_context_coordinator_is_plugin_not_found() -> None:
    with workflow("bad_wide", coordinator="carrier_pigeon") as wf:
        _group3()
        with pytest.raises(PluginNotFoundError, match="carrier_pigeon"):
            wf.execute()


def test_threading_coordinator_is_reused_and_bounded() -> None:
    from graflow.coordination.coordinator import get_coordinator

    first = get_coordinator("threading", {"thread_count": 3})
    assert isinstance(first, ThreadingCoordinator)
    assert get_coordinator("threading", {"thread_count": 3}) is first
    assert first.thread_count == 3
    with pytest.raises(ConfigError, match="thread_count"):
        ThreadingCoordinator(thread_count=0)


# -- member retries ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", COORDINATORS)
def test_member_retries_follow_member_policy(backend: str) -> None:
    log: list[str] = []
    state = {"flaky": 0, "fragile": 0}
    with workflow("member_retry") as wf:

        @task(retry_policy=RetryPolicy(max_retries=2, initial_interval=0.0))
        def flaky() -> str:
            state["flaky"] += 1
            if state["flaky"] < 3:
                raise RuntimeError("flaky")
            return "flaky-ok"

        @task
        def fragile() -> str:
            state["fragile"] += 1
            raise RuntimeError("fragile")

        g = (flaky | fragile).with_execution(backend=backend).with_policy("critical_tasks", task_ids=["flaky"])
        g >> _rec("after", log)
        _, ctx = wf.execute(ret_context=True)
    assert state == {"flaky": 3, "fragile": 1}
    assert ctx.get_result("flaky") == "flaky-ok"
    assert isinstance(ctx.get_result("fragile"), RuntimeError)
    assert log == ["after"]


@pytest.mark.parametrize("backend", COORDINATORS)
def test_member_exhausting_retries_fails_group(backend: str) -> None:
    with workflow("member_exhaust") as wf:

        @task(max_retries=1)
        def always() -> None:
            raise KeyError("never")

        ok = TaskWrapper("ok", lambda: 1)
        parallel(always, ok, name="g").with_execution(backend=backend)
        with pytest.raises(ParallelGroupError) as info:
            wf.execute()
    failed = dict(info.value.failed_tasks)
    assert "always" in failed
    assert "KeyError" in failed["always"] or "RetryLimitExceeded" in failed["always"]


def test_retrying_member_does_not_block_siblings_on_threads() -> None:
    log: list[str] = []
    first_failed = threading.Event()
    sibling_done = threading.Event()
    lock = threading.Lock()

    def note(entry: str) -> None:
        with lock:
            log.append(entry)

    with workflow("retry_siblings") as wf:
        attempts = {"n": 0}

        @task(retry_policy=RetryPolicy(max_retries=1, initial_interval=0.3))
        def slow_retry() -> str:
            attempts["n"] += 1
            if attempts["n"] == 1:
                note("retry#1")
                first_failed.set()
                raise RuntimeError("once")
            # A sibling blocked by the retry cannot finish before this attempt ends: then the wait
            # runs out and "retry#2" comes first. A slow machine only makes the wait longer.
            sibling_done.wait(30)
            note("retry#2")
            return "ok"

        @task
        def sibling() -> str:
            assert first_failed.wait(30)
            note("sibling")
            sibling_done.set()
            return "sib"

        (slow_retry | sibling).with_execution(backend="threading", backend_config={"thread_count": 2})
        wf.execute()
    assert log == ["retry#1", "sibling", "retry#2"]


# -- what policies see -------------------------------------------------------------------------------------------


class Recorder(GroupExecutionPolicy):
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict[str, TaskResult]]] = []

    def on_group_finished(
        self, group_id: str, tasks: Sequence[Any], results: dict[str, TaskResult], context: ExecutionContext
    ) -> None:
        self.calls.append((group_id, [t.task_id for t in tasks], dict(results)))


@pytest.mark.parametrize("backend", COORDINATORS)
def test_policy_sees_duration_result_and_exception(backend: str) -> None:
    recorder = Recorder()
    errors: list[BaseException] = []
    before = time.time()
    with workflow("seen") as wf:

        @task
        def slow() -> dict[str, int]:
            time.sleep(0.03)
            return {"v": 1}

        bad = _bad("bad", [], errors)
        g = parallel(slow, bad, name="watched").with_execution(backend=backend).with_policy(recorder)
        g >> TaskWrapper("after", lambda: "after")
        _, ctx = wf.execute(ret_context=True)
    assert len(recorder.calls) == 1
    group_id, task_ids, results = recorder.calls[0]
    assert group_id == "watched"
    assert sorted(task_ids) == ["bad", "slow"]
    assert results["slow"].success is True
    assert results["slow"].result == {"v": 1}
    assert results["slow"].error is None
    assert results["slow"].duration >= 0.025
    assert results["slow"].timestamp >= before - 1
    assert results["bad"].success is False
    assert results["bad"].error is errors[0]
    assert "bad broke" in (results["bad"].error_message or "")
    assert results["bad"].result is None
    assert ctx.get_result("after") == "after"


def test_policy_receives_execution_context() -> None:
    seen: list[Any] = []

    class Peek(GroupExecutionPolicy):
        def on_group_finished(self, group_id: str, tasks: Any, results: Any, context: Any) -> None:
            seen.append(context)

    with workflow("peek") as wf:
        _group3().with_policy(Peek())
        _, ctx = wf.execute(ret_context=True)
    assert seen == [ctx]


# -- dynamic tasks inside members -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", COORDINATORS)
def test_dynamic_tasks_in_members_finish_before_barrier(backend: str) -> None:
    log: list[str] = []
    lock = threading.Lock()

    def note(entry: str) -> None:
        with lock:
            log.append(entry)

    spawned = TaskWrapper("spawned", lambda: note("spawned"))
    spawned_tail = TaskWrapper("spawned_tail", lambda: note("spawned_tail"))
    spawned >> spawned_tail
    with workflow("dyn_members") as wf:

        @task(inject_context=True)
        def spawner(ctx: Any) -> str:
            note("spawner")
            ctx.next_task(spawned)
            return "spawner"

        @task(inject_context=True)
        def looper(ctx: Any, data: Any = None) -> int:
            n = data or 0
            note(f"looper{n}")
            if n < 3:
                ctx.next_iteration(n + 1)
            return n

        after = TaskWrapper("after", lambda: note("after"))
        (spawner | looper).with_execution(backend=backend) >> after
        _, ctx = wf.execute(ret_context=True)
    assert log[-1] == "after" and log.count("after") == 1
    for entry in ("spawner", "spawned", "spawned_tail", "looper0", "looper1", "looper2", "looper3"):
        assert log.count(entry) == 1, (entry, log)
    assert [e for e in log if e.startswith("looper")] == ["looper0", "looper1", "looper2", "looper3"]
    assert ctx.get_result("looper") == 3


@pytest.mark.parametrize("backend", COORDINATORS)
def test_member_goto_inside_group_stays_inside(backend: str) -> None:
    log: list[str] = []
    jump = TaskWrapper("jump", lambda: log.append("jump"))
    with workflow("member_goto") as wf:

        @task(inject_context=True)
        def m1(ctx: Any) -> None:
            log.append("m1")
            ctx.next_task(jump, goto=True)

        m1_tail = _rec("m1_tail", log)
        m2 = _rec("m2", log)
        ((m1 >> m1_tail) | m2).with_execution(backend=backend) >> _rec("after", log)
        wf.execute()
    assert "m1_tail" not in log
    assert log[-1] == "after"
    assert log.index("jump") < log.index("after")


def test_same_group_run_twice_in_sequence_with_fresh_progress() -> None:
    log: list[str] = []
    with workflow("twice") as wf:
        g = parallel(_rec("a", log), _rec("b", log), name="g").with_execution(backend="direct")
        _ = g
        wf.execute()
        wf.execute()
    assert log == ["a", "b", "a", "b"]


@pytest.mark.parametrize("backend", COORDINATORS)
def test_failure_in_chained_tail_keeps_head_result(backend: str) -> None:
    errors: list[BaseException] = []
    with workflow("tail_failure") as wf:
        head = TaskWrapper("head", lambda: "head-ok")
        tail = _bad("tail", [], errors)
        other = TaskWrapper("other", lambda: "other-ok")
        ((head >> tail) | other).with_execution(backend=backend).with_policy("best_effort")
        _, ctx = wf.execute(ret_context=True)
    # the head's computed result is not lost; the failing task's exception is its own result
    assert ctx.get_result("head") == "head-ok"
    assert ctx.get_result("tail") is errors[0]
    assert ctx.get_result("other") == "other-ok"
