"""The ``redis`` coordinator: parallel groups on real worker processes behave as with threads."""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import CoordinationBackend, ExecutionContext, WorkflowEngine, task, workflow
from graflow.core.task import ParallelGroup, TaskWrapper
from graflow.exceptions import ConfigError, GraflowWorkflowCanceledError, ParallelGroupError
from graflow_redis.queue import QueueTimeoutError

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def fleet(redis_server: Any, tmp_path_factory: Any) -> Any:
    """Two worker processes (4 threads each) shared by this module's tests, on their own key prefix."""
    prefix = f"graflow-test:coord-{uuid.uuid4().hex[:8]}"
    procs = Workers(redis_server.url, prefix, tmp_path_factory.mktemp("coordinator-workers"))
    procs.start("--concurrency", "4", worker_id="c1")
    procs.start("--concurrency", "4", worker_id="c2")
    yield procs
    procs.stop_all()
    procs.delete_keys()


def _redis(fleet: Workers, **extra: Any) -> dict[str, Any]:
    return {"url": fleet.url, "key_prefix": fleet.key_prefix, "reap_interval": 0.3, **extra}


class MemberFailure(Exception):
    pass


@task
def ok_member(i: int) -> int:
    return i


@task
def bad_member(i: int) -> int:
    raise MemberFailure(f"member {i} failed")


def _policy_workflow(fleet: Workers, outcome: tuple[bool, ...], policy: Any) -> Any:
    with workflow("policy") as wf:
        members = [(ok_member if ok else bad_member)(task_id=f"m{i}", i=i) for i, ok in enumerate(outcome)]
        group = ParallelGroup(members).with_execution(backend=CoordinationBackend.REDIS, backend_config=_redis(fleet))
        group.with_policy(policy)

        @task
        def after() -> str:
            return "after"

        group >> after
    return wf


@pytest.mark.parametrize(
    ("policy", "accepted", "rejected"),
    [
        ("strict", (True, True, True), (True, False, True)),
        ("best_effort", (False, True, False), None),
        (("at_least_n", {"n": 2}), (True, False, True), (True, False, False)),
        (("critical_tasks", {"task_ids": ["m0"]}), (True, False, False), (False, True, True)),
    ],
)
def test_policies_work_as_with_threads(fleet: Workers, policy: Any, accepted: Any, rejected: Any) -> None:
    from graflow.core.handlers.group_policy import resolve_group_policy

    def make() -> Any:
        name, kwargs = policy if isinstance(policy, tuple) else (policy, {})
        return resolve_group_policy(name, **kwargs)

    result, ctx = _policy_workflow(fleet, accepted, make()).execute(ret_context=True)
    assert result == "after"
    for i, ok in enumerate(accepted):
        value = ctx.get_result(f"m{i}")
        if ok:
            assert value == i
        else:
            assert isinstance(value, Exception) and type(value).__name__ == "MemberFailure"
    if rejected is not None:
        with pytest.raises(ParallelGroupError) as info:
            _policy_workflow(fleet, rejected, make()).execute()
        assert {tid for tid, _ in info.value.failed_tasks} == {f"m{i}" for i, ok in enumerate(rejected) if not ok}


@task(inject_context=True)
def bump(ctx: Any, i: int) -> int:
    channel = ctx.get_channel()
    channel.atomic_add("total", i)
    with channel.lock("guarded", timeout=30):
        value = channel.get("unsafe", 0)
        channel.set("unsafe", value + 1)
    channel.append("seen", i)
    return channel.get("seed") + i


def test_memory_channel_producer_sees_members_writes_and_atomicity_holds(fleet: Workers) -> None:
    n = 60
    with workflow("mirror") as wf:
        members = [bump(task_id=f"b{i}", i=i) for i in range(n)]
        group = ParallelGroup(members).with_execution(backend="redis", backend_config=_redis(fleet))

        @task(inject_context=True)
        def check(ctx: Any) -> tuple[int, int]:
            return ctx.get_channel().get("total"), ctx.get_channel().get("unsafe")

        group >> check
    result, ctx = wf.execute(ret_context=True, seed=1000, untouched="keep me")
    assert result == (sum(range(n)), n), "atomic_add and lock stayed atomic across members on two processes"
    assert sorted(ctx.channel.get("seen")) == list(range(n))
    assert [ctx.get_result(f"b{i}") for i in range(n)] == [1000 + i for i in range(n)], "workers read the real seed"
    assert ctx.channel.get("untouched") == "keep me"
    assert type(ctx.channel).__name__ == "MemoryChannel"


def test_the_producers_own_writes_during_a_group_survive(fleet: Workers) -> None:
    release = threading.Event()

    @task(inject_context=True)
    def member_write(ctx: Any) -> None:
        import time

        time.sleep(1.0)  # still running when the producer writes its own key
        ctx.get_channel().set("from_member", 1)

    with workflow("concurrent-writes") as wf:
        group = ParallelGroup([member_write(task_id="w1")]).with_execution(
            backend="redis", backend_config=_redis(fleet)
        )

        @task
        def local_branch() -> None:
            release.set()

        # the threading group runs the redis group and a local task side by side
        ParallelGroup([group, local_branch]).with_execution(backend="threading")

    ctx = ExecutionContext.create(wf.graph)
    ctx.channel.set("producer_key", "before")

    def writer() -> None:
        release.wait(10)
        ctx.channel.set("producer_key", "during")

    thread = threading.Thread(target=writer)
    thread.start()
    WorkflowEngine().execute(ctx)
    thread.join()
    assert ctx.channel.get("from_member") == 1
    assert ctx.channel.get("producer_key") == "during"


@task
def head(i: int) -> int:
    return i * 10


@task
def tail(head: int) -> int:
    return head + 1


def test_chained_tails_run_with_their_member(fleet: Workers) -> None:
    with workflow("chains") as wf:
        chain_member = head(task_id="head", i=4) >> tail
        group = ParallelGroup([chain_member, ok_member(task_id="solo", i=7)]).with_execution(
            backend="redis", backend_config=_redis(fleet)
        )

        @task
        def joined(tail: int, solo: int) -> int:
            return tail + solo

        group >> joined
    result, ctx = wf.execute(ret_context=True)
    assert ctx.get_result("head") == 40 and ctx.get_result("tail") == 41
    assert result == 48
    assert {"head", "tail", "solo"} <= ctx.completed_tasks
    assert ctx.cycle_counts["tail"] == 1


def test_two_concurrent_runs_with_the_same_group_names_do_not_interfere(fleet: Workers) -> None:
    @task(inject_context=True)
    def tagged(ctx: Any, i: int) -> str:
        return f"{ctx.get_channel().get('run')}:{i}"

    def build() -> Any:
        with workflow("twin") as wf:
            ParallelGroup([tagged(task_id=f"t{i}", i=i) for i in range(25)]).set_group_name("same").with_execution(
                backend="redis", backend_config=_redis(fleet)
            )
        return wf

    outcomes: dict[str, Any] = {}

    def run(tag: str) -> None:
        try:
            outcomes[tag] = build().execute(ret_context=True, run=tag)
        except BaseException as exc:  # noqa: BLE001
            outcomes[tag] = exc

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for tag in ("left", "right"):
        assert not isinstance(outcomes[tag], BaseException), outcomes[tag]
        result, ctx = outcomes[tag]
        assert result == {f"t{i}": f"{tag}:{i}" for i in range(25)}
        assert [ctx.get_result(f"t{i}") for i in range(25)] == [f"{tag}:{i}" for i in range(25)]


def test_terminate_in_a_member_stops_the_workflow(fleet: Workers) -> None:
    @task(inject_context=True)
    def stopper(ctx: Any) -> str:
        ctx.terminate_workflow("member says stop")
        return "stopped"

    with workflow("terminate") as wf:
        group = ParallelGroup([stopper(task_id="stopper"), ok_member(task_id="other", i=1)]).with_execution(
            backend="redis", backend_config=_redis(fleet)
        )

        @task
        def never() -> str:
            return "never"

        group >> never
    result, ctx = wf.execute(ret_context=True)
    assert ctx.terminated == "member says stop"
    assert result == "stopped"
    assert ctx.get_result("never") is None


def test_cancel_in_a_member_cancels_the_workflow(fleet: Workers) -> None:
    @task(inject_context=True)
    def canceller(ctx: Any) -> None:
        ctx.cancel_workflow("member cancels")

    with workflow("cancel") as wf:
        ParallelGroup([canceller(task_id="canceller")]).with_execution(backend="redis", backend_config=_redis(fleet))
    with pytest.raises(GraflowWorkflowCanceledError, match="member cancels"):
        wf.execute()


def test_dynamic_tasks_inside_a_member_run_on_the_worker_and_reach_the_producers_graph(fleet: Workers) -> None:
    @task(inject_context=True)
    def spawner(ctx: Any) -> str:
        ctx.next_task(TaskWrapper("spawned", lambda: "spawned result", register_to_context=False))
        return "spawner"

    with workflow("dynamic-member") as wf:
        ParallelGroup([spawner(task_id="spawner")]).with_execution(backend="redis", backend_config=_redis(fleet))
    _, ctx = wf.execute(ret_context=True)
    assert ctx.get_result("spawned") == "spawned result"
    assert "spawned" in ctx.graph.nodes and "spawned" in ctx.completed_tasks


def test_no_worker_for_the_queue_times_out_with_a_clear_error(fleet: Workers) -> None:
    with workflow("nobody") as wf:
        ParallelGroup([ok_member(task_id="lonely", i=1)]).with_execution(
            backend="redis", backend_config=_redis(fleet, queue="nobody-serves-this", timeout=1.0)
        )
    with pytest.raises(QueueTimeoutError, match=r"No reply from the workers within 1s .*nobody-serves-this"):
        wf.execute()
    client = fleet_client(fleet)
    try:
        assert client.llen(f"{fleet.key_prefix}:q:nobody-serves-this") == 0, "the unanswered message was withdrawn"
    finally:
        client.close()


def fleet_client(fleet: Workers) -> Any:
    import redis

    return redis.Redis.from_url(fleet.url)


def test_redis_channel_producer_is_shared_directly(fleet: Workers) -> None:
    with workflow("shared") as wf:
        ParallelGroup([bump(task_id=f"s{i}", i=i) for i in range(5)]).with_execution(
            backend="redis", backend_config=_redis(fleet)
        )
    ctx = ExecutionContext.create(
        wf.graph, channel_backend="redis", config={"url": fleet.url, "key_prefix": fleet.key_prefix}
    )
    ctx.channel.set("seed", 7)
    WorkflowEngine().execute(ctx)
    assert ctx.channel.get("total") == 10
    assert [ctx.get_result(f"s{i}") for i in range(5)] == [7, 8, 9, 10, 11]
    ctx.channel.cleanup()


def test_bad_backend_config_names_the_valid_keys(fleet: Workers) -> None:
    with workflow("bad") as wf:
        ParallelGroup([ok_member(task_id="x", i=1)]).with_execution(
            backend="redis", backend_config={"url": fleet.url, "prefix": "typo"}
        )
    with pytest.raises(ConfigError, match=r"Unknown backend_config key\(s\) \['prefix'\].*key_prefix"):
        wf.execute()
