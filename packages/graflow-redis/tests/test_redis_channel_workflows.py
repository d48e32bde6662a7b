"""Workflows on the Redis channel: the seed's ExecutionContext.create form, parallel groups, checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow.core.checkpoint import CheckpointManager
from graflow.core.context import ExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.workflow import workflow
from graflow_redis.channel import RedisChannel
from graflow_testkit.channels import SamplePayload, assert_same


def _etl() -> Any:
    with workflow("etl-on-redis") as wf:

        @task
        def extract() -> list[int]:
            return [3, 1, 2]

        @task(inject_context=True)
        def double(ctx: Any, extract: list[int]) -> list[int]:
            ctx.get_channel().append("log", ("double", len(extract)))
            ctx.get_channel().atomic_add("members", 1)
            return [x * 2 for x in extract]

        @task(inject_context=True)
        def total(ctx: Any, extract: list[int]) -> int:
            ctx.get_channel().append("log", ("total", len(extract)))
            ctx.get_channel().atomic_add("members", 1)
            return sum(extract)

        @task(inject_context=True)
        def report(ctx: Any, double: list[int], total: int) -> dict[str, Any]:
            summary = {"doubled": tuple(double), "total": total, "payload": SamplePayload("r", [1.5])}
            ctx.get_channel().set("report", summary)
            return summary

        extract >> (double | total) >> report
    return wf


def test_seed_form_runs_a_workflow_on_redis(redis_client: Any, key_prefix: str) -> None:
    wf = _etl()
    ctx = ExecutionContext.create(
        wf.graph, "extract", channel_backend="redis", config={"redis_client": redis_client, "key_prefix": key_prefix}
    )
    assert isinstance(ctx.channel, RedisChannel)
    result = WorkflowEngine().execute(ctx)
    expected = {"doubled": (6, 2, 4), "total": 6, "payload": SamplePayload("r", [1.5])}
    assert_same(result, expected)
    # Everything the run shared lives in Redis under <prefix>:<session>:channel:..., readable by anyone.
    reader = RedisChannel(ctx.session_id, redis_client=redis_client, key_prefix=key_prefix)
    assert_same(reader.get("report"), expected)
    assert reader.get("members") == 2
    assert sorted(reader.get("log")) == [("double", 3), ("total", 3)]
    assert reader.get("extract.__result__") == [3, 1, 2]
    assert redis_client.exists(f"{key_prefix}:{ctx.session_id}:channel:report")
    reader.cleanup()
    assert not list(redis_client.scan_iter(match=f"{key_prefix}:{ctx.session_id}:*"))


def test_same_workflow_runs_unchanged_on_memory(redis_client: Any, key_prefix: str) -> None:
    on_memory = _etl().execute()
    on_redis = _etl()
    on_redis.config.update(channel_backend="redis", config={"redis_client": redis_client, "key_prefix": key_prefix})
    result, ctx = on_redis.execute(ret_context=True)
    assert_same(result, on_memory)
    ctx.channel.cleanup()


def test_two_concurrent_runs_are_isolated(redis_url: str, key_prefix: str) -> None:
    import threading

    def make() -> Any:
        with workflow("counting") as wf:

            @task(inject_context=True)
            def count(ctx: Any) -> int:
                channel = ctx.get_channel()
                for _ in range(200):
                    channel.atomic_add("n", 1)
                    channel.append("seen", ctx.session_id)
                return channel.get("n")

        return wf

    results: dict[str, Any] = {}

    def run(label: str) -> None:
        wf = make()
        wf.config.update(channel_backend="redis", config={"url": redis_url, "key_prefix": key_prefix})
        results[label] = wf.execute(ret_context=True)

    threads = [threading.Thread(target=run, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result, ctx in results.values():
        assert result == 200
        assert set(ctx.channel.get("seen")) == {ctx.session_id}
        assert len(ctx.channel.get("seen")) == 200
        ctx.channel.cleanup()


def _looping_workflow() -> Any:
    with workflow("redis-checkpoint") as wf:

        @task(inject_context=True)
        def start(ctx: Any) -> None:
            ctx.get_channel().append("ran", "start")

        @task(inject_context=True)
        def loop(ctx: Any) -> None:
            channel = ctx.get_channel()
            channel.append("ran", "loop")
            n = channel.atomic_add("n", 1)
            channel.set("state", (n, {"n": n}))
            if n == 2:
                ctx.checkpoint(metadata={"at": n}, path=channel.get("path"))
            if n < 4:
                ctx.next_iteration()

        @task(inject_context=True)
        def finish(ctx: Any) -> int:
            ctx.get_channel().append("ran", "finish")
            return ctx.get_channel().get("n")

        start >> loop >> finish
    return wf


def test_checkpoint_captures_and_restores_the_redis_channel(
    tmp_path: Path, redis_client: Any, key_prefix: str
) -> None:
    wf = _looping_workflow()
    ctx = ExecutionContext.create(
        wf.graph, "start", channel_backend="redis", config={"redis_client": redis_client, "key_prefix": key_prefix}
    )
    ctx.channel.set("path", str(tmp_path / "ckpt"))
    assert WorkflowEngine().execute(ctx) == 4
    full_run = ctx.channel.get("ran")
    assert full_run == ["start", "loop", "loop", "loop", "loop", "finish"]

    # The checkpoint holds the channel as it was at the second loop visit; resuming restores Redis to it.
    path = ctx.last_checkpoint_path
    restored, meta = CheckpointManager.resume_from_checkpoint(path)
    assert meta.user_metadata["at"] == 2
    assert isinstance(restored.channel, RedisChannel)
    assert restored.channel.key_prefix == key_prefix and restored.session_id == ctx.session_id
    assert restored.channel.get("ran") == ["start", "loop", "loop"]
    assert_same(restored.channel.get("state"), (2, {"n": 2}))
    assert ctx.channel.get("n") == 2  # same Redis keys: the live channel sees the restore too
    assert WorkflowEngine().execute(restored) == 4
    assert restored.channel.get("ran") == full_run
    restored.channel.cleanup()


def test_checkpoint_pickle_holds_no_client(tmp_path: Path, redis_client: Any, key_prefix: str) -> None:
    wf = _looping_workflow()
    ctx = ExecutionContext.create(
        wf.graph, "start", channel_backend="redis", config={"redis_client": redis_client, "key_prefix": key_prefix}
    )
    ctx.channel.set("path", str(tmp_path / "c"))
    WorkflowEngine().execute(ctx)
    blob = (tmp_path / "c.pkl").read_bytes()
    assert b"ConnectionPool" not in blob
    copy = pickle.loads(cloudpickle.dumps(ctx))
    assert "redis_client" not in copy.config
    assert copy.config["key_prefix"] == key_prefix
    assert copy.channel.get("n") == 4
    ctx.channel.cleanup()


@pytest.mark.parametrize("coordinator", ["threading", "direct"])
def test_parallel_members_share_one_redis_channel(redis_url: str, key_prefix: str, coordinator: str) -> None:
    with workflow("fan-out", coordinator=coordinator) as wf:
        members = []
        for index in range(6):

            @task(f"member{index}", inject_context=True)
            def member(ctx: Any, index: int = index) -> None:
                channel = ctx.get_channel()
                for _ in range(50):
                    channel.atomic_add("total", 1)
                with channel.lock("critical", timeout=30):
                    current = channel.get("guarded", 0)
                    channel.set("guarded", current + 1)
                channel.append("done", index)

            members.append(member)

        @task(inject_context=True)
        def collect(ctx: Any) -> tuple[int, int, list[int]]:
            channel = ctx.get_channel()
            return channel.get("total"), channel.get("guarded"), sorted(channel.get("done"))

        group = members[0]
        for other in members[1:]:
            group = group | other
        group >> collect
    wf.config.update(channel_backend="redis", config={"url": redis_url, "key_prefix": key_prefix})
    result, ctx = wf.execute(ret_context=True)
    assert result == (300, 6, [0, 1, 2, 3, 4, 5])
    ctx.channel.cleanup()
