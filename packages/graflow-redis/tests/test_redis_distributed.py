"""Whole-workflow distribution: ``RedisTaskQueue(context, ...)`` sends every task of a run to workers.

The same workflow code runs locally when the queue line is removed; these tests run each workflow
both ways and compare.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import ExecutionContext, RetryPolicy, WorkflowEngine, task, workflow
from graflow.core.task import ParallelGroup, TaskWrapper
from graflow.exceptions import RetryLimitExceededError
from graflow_redis.queue import RedisTaskQueue

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def fleet(redis_server: Any, tmp_path_factory: Any) -> Any:
    prefix = f"graflow-test:dist-{uuid.uuid4().hex[:8]}"
    procs = Workers(redis_server.url, prefix, tmp_path_factory.mktemp("distributed-workers"))
    procs.start("--concurrency", "2", worker_id="cpu")
    procs.start("--queue", "gpu", worker_id="gpu")
    yield procs
    procs.stop_all()
    procs.delete_keys()


# -- a workflow with every kind of control flow ------------------------------------------------------------
@task(inject_context=True)
def start(ctx: Any) -> int:
    ctx.get_channel().append("where", ("start", os.getpid()))
    return 3


@task(inject_context=True, max_cycles=20)
def loop(ctx: Any, start: int, data: Any = None) -> int:
    n = start if data is None else data
    if n < 6:
        ctx.next_iteration(n + 1)
    return n


@task(inject_context=True)
def fan_out(ctx: Any, loop: int) -> int:
    extra = TaskWrapper("extra", lambda loop: loop * 100, register_to_context=False)
    ctx.next_task(extra)
    return loop


@task
def left(fan_out: int) -> int:
    return fan_out + 1


@task
def right(fan_out: int) -> int:
    return fan_out + 2


@task(inject_context=True, retry_policy=RetryPolicy(max_retries=3, initial_interval=0.0))
def flaky(ctx: Any, left: int, right: int) -> int:
    if ctx.get_channel().atomic_add("flaky_attempts", 1) < 3:
        raise ConnectionError("transient")
    return left + right


@task(queue="gpu", inject_context=True)
def on_gpu(ctx: Any, flaky: int) -> tuple[int, int]:
    return flaky * 2, os.getpid()


def _build() -> Any:
    with workflow("everything") as wf:
        start >> loop >> fan_out >> (left | right) >> flaky >> on_gpu
    return wf


def _run_distributed(wf: Any, fleet: Workers, **queue_options: Any) -> tuple[Any, ExecutionContext]:
    import redis

    r = redis.Redis.from_url(fleet.url)
    first = "start" if wf.graph.has_node("start") else None
    ctx = ExecutionContext.create(
        wf.graph, first, channel_backend="redis", config={"redis_client": r, "key_prefix": fleet.key_prefix}
    )
    RedisTaskQueue(ctx, redis_client=r, key_prefix=fleet.key_prefix, reap_interval=0.3, **queue_options)
    result = WorkflowEngine().execute(ctx)
    return result, ctx


def test_the_seed_form_runs_every_task_on_workers_with_the_local_result(fleet: Workers) -> None:
    local_result, local_ctx = _build().execute(ret_context=True)
    result, ctx = _run_distributed(_build(), fleet)
    try:
        assert result[0] == local_result[0] == 2 * ((6 + 1) + (6 + 2))
        assert ctx.get_result("loop") == local_ctx.get_result("loop") == 6
        assert ctx.get_result("extra") == local_ctx.get_result("extra") == 600
        assert ctx.channel.get("flaky_attempts") == 3
        assert ctx.cycle_counts["loop"] == local_ctx.cycle_counts["loop"] == 4
        where = ctx.channel.get("where")
        assert where[0][1] != os.getpid(), "start ran on a worker, not in the producer"
        gpu_pid = result[1]
        assert gpu_pid != os.getpid() and gpu_pid != where[0][1], "the gpu task ran on the gpu-only worker"
        assert local_result[1] == os.getpid()
    finally:
        ctx.channel.cleanup()


def test_a_memory_channel_run_is_moved_to_redis_for_its_workers(fleet: Workers) -> None:
    with workflow("inputs") as wf:

        @task(inject_context=True)
        def reader(ctx: Any, given: int) -> int:
            return given + ctx.get_channel().get("bonus")

    ctx = ExecutionContext.create(wf.graph)
    ctx.channel.set("given", 1)
    ctx.channel.set("bonus", 10)
    RedisTaskQueue(ctx, url=fleet.url, key_prefix=fleet.key_prefix)
    assert type(ctx.channel).__name__ == "RedisChannel"
    try:
        assert WorkflowEngine().execute(ctx) == 11
        assert ctx.get_result("reader") == 11
    finally:
        ctx.channel.cleanup()


def test_retries_exhausted_on_workers_raise_with_the_last_error(fleet: Workers) -> None:
    with workflow("exhausted") as wf:

        @task(max_retries=1)
        def always() -> None:
            raise KeyError("missing")

    with pytest.raises(RetryLimitExceededError) as info:
        _run_distributed(wf, fleet)
    assert isinstance(info.value.__cause__, KeyError)


def test_groups_of_an_attached_run_go_to_the_redis_coordinator(fleet: Workers) -> None:
    @task
    def pid_of(i: int) -> int:
        return os.getpid()

    with workflow("grouped") as wf:
        ParallelGroup([pid_of(task_id=f"g{i}", i=i) for i in range(6)])
    result, ctx = _run_distributed(wf, fleet)
    try:
        assert ctx.default_coordinator == "redis"
        assert all(pid != os.getpid() for pid in result.values())
    finally:
        ctx.channel.cleanup()


def test_checkpoint_of_an_attached_run_resumes_locally(fleet: Workers, tmp_path: Path) -> None:
    from graflow.core.checkpoint import CheckpointManager

    @task(inject_context=True)
    def first(ctx: Any) -> str:
        ctx.checkpoint(path=str(tmp_path) + "/")
        return "first"

    @task
    def second(first: str) -> str:
        return first + "+second"

    with workflow("resumable") as wf:
        first >> second
    result, ctx = _run_distributed(wf, fleet)
    assert result == "first+second"
    (meta,) = CheckpointManager.list_checkpoints(str(tmp_path))
    resumed, _ = CheckpointManager.resume_from_checkpoint(meta.path)
    assert getattr(resumed, "task_dispatcher", None) is None, "re-attach a queue to distribute the resumed run"
    assert WorkflowEngine().execute(resumed) == "first+second"
    ctx.channel.cleanup()


# -- single tasks, no workflow ---------------------------------------------------------------------------------
@task
def triple(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return 3 * x


def _note(url: str, key: str, i: int) -> None:
    import redis

    redis.Redis.from_url(url).rpush(key, i)


def test_submit_and_result_outside_a_workflow(fleet: Workers) -> None:
    from graflow.exceptions import ConfigError

    queue = RedisTaskQueue(None, url=fleet.url, key_prefix=fleet.key_prefix)
    try:
        ids = [queue.submit(triple, x=i) for i in range(5)]
        assert [queue.result(i, timeout=30) for i in reversed(ids)] == [12, 9, 6, 3, 0]
        bad = queue.submit(triple, x=-1)
        with pytest.raises(ValueError, match="negative: -1"):
            queue.result(bad, timeout=30)
        with pytest.raises(ConfigError, match="No task with message id"):
            queue.result("f" * 32)
        gpu = queue.submit(on_gpu_pid, queue="gpu")
        assert queue.result(gpu, timeout=30) != os.getpid()
    finally:
        queue.close()


@task
def on_gpu_pid() -> int:
    return os.getpid()


def test_fire_and_forget_with_backpressure_loses_nothing(fleet: Workers, redis_client: Any) -> None:
    key = f"{fleet.key_prefix}:notes:{uuid.uuid4().hex[:6]}"
    queue = RedisTaskQueue(None, url=fleet.url, key_prefix=fleet.key_prefix, max_queue_depth=2)
    try:
        depths = []
        for i in range(60):
            queue.submit(_note, reply=False, url=fleet.url, key=key, i=i)
            depths.append(queue.depths(["default"])["default"][0])
        assert max(depths) <= 3, f"backpressure kept the queue short, saw {max(depths)}"
        deadline = time.monotonic() + 30
        while redis_client.llen(key) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(int(v) for v in redis_client.lrange(key, 0, -1)) == list(range(60))
    finally:
        redis_client.delete(key)
        queue.close()
