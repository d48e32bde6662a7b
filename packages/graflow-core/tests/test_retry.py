"""Retries (SPEC §4.5): RetryPolicy, retry_on, per-visit budgets, exhaustion, backoff scheduling, timeouts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from graflow import RetryPolicy, TaskWrapper, task, workflow
from graflow.core.retry import RetryPolicy as RetryPolicyFromModule
from graflow.exceptions import (
    ConfigError,
    GraflowRuntimeError,
    RetryLimitExceededError,
    TaskError,
    TaskTimeoutError,
)

# -- the policy object -------------------------------------------------------------------------------------


def test_retry_policy_is_exported() -> None:
    assert RetryPolicy is RetryPolicyFromModule


def test_retry_policy_defaults_and_fields() -> None:
    p = RetryPolicy()
    assert p.max_retries == 0
    assert p.initial_interval == 1.0
    assert p.backoff_factor == 2.0
    assert p.max_interval == 60.0
    assert p.jitter is False
    assert p.retry_on == (Exception,)
    q = RetryPolicy(
        max_retries=3, initial_interval=0.5, backoff_factor=3.0, max_interval=4.0, jitter=True, retry_on=(KeyError,)
    )
    assert (q.max_retries, q.initial_interval, q.backoff_factor, q.max_interval, q.jitter) == (3, 0.5, 3.0, 4.0, True)
    assert q.retry_on == (KeyError,)


def test_retry_policy_exponential_delays_capped() -> None:
    p = RetryPolicy(max_retries=5, initial_interval=0.5, backoff_factor=2.0, max_interval=3.0)
    assert [p.get_delay(k) for k in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_policy_jitter_stays_in_bounds() -> None:
    p = RetryPolicy(max_retries=5, initial_interval=1.0, backoff_factor=2.0, max_interval=3.0, jitter=True)
    for _ in range(200):
        d0 = p.get_delay(0)
        assert 0.5 <= d0 <= 1.5
        d2 = p.get_delay(2)
        assert 0.0 < d2 <= 3.0


def test_retry_policy_should_retry() -> None:
    p = RetryPolicy(max_retries=2, retry_on=(ValueError,))
    assert p.should_retry(ValueError("x"), 0)
    assert p.should_retry(ValueError("x"), 1)
    assert not p.should_retry(ValueError("x"), 2)
    assert not p.should_retry(KeyError("x"), 0)


def test_retry_policy_single_exception_class_accepted() -> None:
    p = RetryPolicy(max_retries=1, retry_on=ValueError)  # type: ignore[arg-type]
    assert p.retry_on == (ValueError,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"initial_interval": -1.0},
        {"max_interval": -1.0},
        {"backoff_factor": -2.0},
        {"retry_on": (int,)},
    ],
)
def test_retry_policy_bad_fields(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


# -- retries in a run -----------------------------------------------------------------------------------------


def _flaky(name: str, failures: int, log: list[str], exc: type[Exception] = RuntimeError, **opts: Any) -> TaskWrapper:
    state = {"calls": 0}

    def fn() -> str:
        state["calls"] += 1
        log.append(f"{name}#{state['calls']}")
        if state["calls"] <= failures:
            raise exc(f"{name} failure {state['calls']}")
        return f"{name}-ok"

    return TaskWrapper(name, fn, **opts)


def test_retry_policy_retries_until_success() -> None:
    log: list[str] = []
    with workflow("retry_ok") as wf:
        t = _flaky("t", 2, log, retry_policy=RetryPolicy(max_retries=2, initial_interval=0.0))
        after = TaskWrapper("after", lambda t: f"got {t}")
        t >> after
        assert wf.execute() == "got t-ok"
    assert log == ["t#1", "t#2", "t#3"]


def test_max_retries_on_decorator() -> None:
    calls: list[int] = []
    with workflow("retry_decorator") as wf:

        @task(max_retries=2)
        def shaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise RuntimeError("not yet")
            return "fine"

        assert wf.execute() == "fine"
    assert len(calls) == 3


def test_context_default_max_retries() -> None:
    log: list[str] = []
    with workflow("retry_default", default_max_retries=1) as wf:
        _flaky("t", 1, log)
        assert wf.execute() == "t-ok"
    assert log == ["t#1", "t#2"]


def test_retry_on_limits_retries_to_listed_types() -> None:
    log: list[str] = []
    policy = RetryPolicy(max_retries=3, initial_interval=0.0, retry_on=(ValueError,))
    with workflow("retry_on") as wf:
        _flaky("t", 1, log, exc=KeyError, retry_policy=policy)
        with pytest.raises(TaskError) as info:
            wf.execute()
    assert log == ["t#1"]
    assert not isinstance(info.value, RetryLimitExceededError)
    assert isinstance(info.value.__cause__, KeyError)


def test_retry_on_retries_listed_type() -> None:
    log: list[str] = []
    policy = RetryPolicy(max_retries=3, initial_interval=0.0, retry_on=(ValueError,))
    with workflow("retry_on_ok") as wf:
        _flaky("t", 2, log, exc=ValueError, retry_policy=policy)
        assert wf.execute() == "t-ok"
    assert log == ["t#1", "t#2", "t#3"]


def test_retry_on_subclass_is_retried() -> None:
    class MyError(ValueError):
        pass

    log: list[str] = []
    policy = RetryPolicy(max_retries=1, initial_interval=0.0, retry_on=(ValueError,))
    with workflow("retry_on_sub") as wf:
        _flaky("t", 1, log, exc=MyError, retry_policy=policy)
        assert wf.execute() == "t-ok"
    assert log == ["t#1", "t#2"]


def test_exhausted_retries_raise_retry_limit_with_last_error_as_cause() -> None:
    raised: list[Exception] = []
    with workflow("exhaust") as wf:

        @task(retry_policy=RetryPolicy(max_retries=2, initial_interval=0.0))
        def doomed() -> None:
            err = RuntimeError(f"attempt {len(raised) + 1}")
            raised.append(err)
            raise err

        with pytest.raises(RetryLimitExceededError) as info:
            wf.execute()
    assert len(raised) == 3
    assert info.value.__cause__ is raised[-1]
    assert info.value.task_id == "doomed"
    assert info.value.attempts == 3
    assert "doomed" in str(info.value)
    assert isinstance(info.value, GraflowRuntimeError)


def test_no_retries_configured_raises_task_error_with_cause() -> None:
    raised: list[Exception] = []
    with workflow("no_retry") as wf:

        @task
        def broken() -> None:
            err = ZeroDivisionError("nope")
            raised.append(err)
            raise err

        with pytest.raises(TaskError) as info:
            wf.execute()
    assert len(raised) == 1
    assert not isinstance(info.value, RetryLimitExceededError)
    assert info.value.__cause__ is raised[0]
    assert info.value.task_id == "broken"
    assert "broken" in str(info.value) and "ZeroDivisionError" in str(info.value)


def test_each_visit_has_its_own_budget_in_static_loop() -> None:
    log: list[str] = []
    done = TaskWrapper("done", lambda: log.append("done"))
    with workflow("per_visit") as wf:
        start = TaskWrapper("start", lambda: log.append("start"))

        @task(inject_context=True, max_retries=1)
        def work(ctx: Any) -> None:
            log.append(f"work{ctx.cycle_count}.{ctx.retry_count}")
            if ctx.retry_count == 0:
                raise RuntimeError("fails once per visit")

        @task(inject_context=True)
        def check(ctx: Any) -> None:
            log.append("check")
            if ctx.cycle_count == 3:
                ctx.next_task(done, goto=True)

        start >> work >> check >> work
        wf.execute()
    assert log == [
        "start",
        "work1.0",
        "work1.1",
        "check",
        "work2.0",
        "work2.1",
        "check",
        "work3.0",
        "work3.1",
        "check",
        "done",
    ]


def test_each_visit_has_its_own_budget_with_next_iteration() -> None:
    attempts: list[tuple[int, int]] = []
    with workflow("per_visit_iter") as wf:

        @task(inject_context=True, retry_policy=RetryPolicy(max_retries=1, initial_interval=0.0))
        def loop(ctx: Any) -> int:
            attempts.append((ctx.cycle_count, ctx.retry_count))
            if ctx.retry_count == 0:
                raise RuntimeError("first attempt fails")
            if ctx.cycle_count < 4:
                ctx.next_iteration()
            return ctx.cycle_count

        assert wf.execute() == 4
    assert attempts == [(c, r) for c in range(1, 5) for r in (0, 1)]


def test_backoff_does_not_block_other_ready_tasks() -> None:
    log: list[str] = []
    policy = RetryPolicy(max_retries=1, initial_interval=0.3, backoff_factor=1.0)
    with workflow("backoff") as wf:
        _flaky("A", 1, log, retry_policy=policy)
        b1 = TaskWrapper("B1", lambda: log.append("B1"))
        b2 = TaskWrapper("B2", lambda: log.append("B2"))
        b3 = TaskWrapper("B3", lambda: log.append("B3"))
        b1 >> b2 >> b3
        wf.execute()
    assert log == ["A#1", "B1", "B2", "B3", "A#2"]


def test_backoff_successors_run_after_retry_succeeds() -> None:
    log: list[str] = []
    policy = RetryPolicy(max_retries=1, initial_interval=0.2)
    with workflow("backoff_succ") as wf:
        a = _flaky("A", 1, log, retry_policy=policy)
        a_next = TaskWrapper("A_next", lambda A: log.append(f"A_next<{A}>"))
        other = TaskWrapper("other", lambda: log.append("other"))
        a >> a_next
        _ = other
        wf.execute()
    assert log == ["A#1", "other", "A#2", "A_next<A-ok>"]


def test_backoff_delay_is_waited() -> None:
    stamps: list[float] = []
    with workflow("backoff_wait") as wf:

        @task(retry_policy=RetryPolicy(max_retries=1, initial_interval=0.25))
        def slow_retry() -> str:
            stamps.append(time.monotonic())
            if len(stamps) == 1:
                raise RuntimeError("once")
            return "ok"

        assert wf.execute() == "ok"
    assert stamps[1] - stamps[0] >= 0.2


def test_timeout_exceeded_in_process_is_reported_as_failure() -> None:
    log: list[str] = []
    with workflow("timeout") as wf:

        @task(timeout=0.05)
        def sleepy() -> str:
            time.sleep(0.15)
            log.append("sleepy finished")
            return "late"

        after = TaskWrapper("after", lambda: log.append("after"))
        sleepy >> after
        with pytest.raises(TaskTimeoutError) as info:
            wf.execute()
    assert info.value.task_id == "sleepy"
    assert info.value.timeout == 0.05
    assert "sleepy" in str(info.value)
    assert isinstance(info.value, TaskError)
    assert "after" not in log


def test_timeout_not_exceeded_succeeds() -> None:
    with workflow("timeout_ok") as wf:

        @task(timeout=5.0)
        def quick() -> str:
            return "fast"

        assert wf.execute() == "fast"


def test_retry_keeps_iteration_data() -> None:
    seen: list[tuple[int, int, Any]] = []
    with workflow("retry_data") as wf:

        @task(inject_context=True, max_retries=1)
        def step(ctx: Any, data: Any = None) -> Any:
            seen.append((ctx.cycle_count, ctx.retry_count, data))
            if ctx.cycle_count > 1 and ctx.retry_count == 0:
                raise RuntimeError("first attempt of later visits fails")
            if ctx.cycle_count < 3:
                ctx.next_iteration((data or 0) + 10)
            return data

        assert wf.execute() == 20
    assert seen == [(1, 0, None), (2, 0, 10), (2, 1, 10), (3, 0, 20), (3, 1, 20)]


@pytest.mark.parametrize("exc_type", [RuntimeError, TaskTimeoutError])
def test_failure_is_not_retried_past_budget_of_zero(exc_type: type[Exception]) -> None:
    calls: list[int] = []
    with workflow("zero_budget") as wf:

        @task(max_retries=0)
        def once() -> None:
            calls.append(1)
            raise exc_type("once", 1.0) if exc_type is TaskTimeoutError else exc_type("once")

        with pytest.raises(TaskError):
            wf.execute()
    assert calls == [1]


def test_a_graflow_error_keeps_its_own_cause_and_is_never_its_own_cause() -> None:
    from graflow.core.decorators import task
    from graflow.core.task import chain
    from graflow.core.workflow import workflow
    from graflow.exceptions import ConfigError

    @task
    def misconfigured() -> None:
        try:
            raise OSError("connection refused")
        except OSError as low_level:
            raise ConfigError("cannot reach the service") from low_level

    with workflow("own-cause") as wf:
        chain(misconfigured)
    try:
        wf.execute()
    except ConfigError as error:
        assert error.__cause__ is not error
        assert isinstance(error.__cause__, OSError)
    else:
        raise AssertionError("the task's error was swallowed")
