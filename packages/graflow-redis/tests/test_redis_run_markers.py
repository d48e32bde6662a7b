"""Run markers of a worker that forwards tail tasks, over a long run (real redis-server).

A member's worker forwards a tail task naming another queue through its own ``RedisTaskQueue``,
which marks the run with a key that lives ``result_ttl`` seconds (refreshed only while a wait lasts
over a second). A later forward for the same run, after that key expired, must not take the
expiry for lost Redis data: that "recovery" sends the waiting task again, so it runs twice.
The workers run in this process (``TaskWorker`` threads) so the CPU worker's ``result_ttl`` can be
short; the tasks are real jobs through the real server.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

from graflow import ExecutionContext, WorkflowEngine, task, workflow
from graflow.core.task import ParallelGroup
from graflow.worker.worker import TaskWorker
from graflow_redis.queue import RedisTaskQueue

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: The CPU worker's result_ttl (seconds): its run markers expire this long after they were last touched.
_TTL = 3.0


@pytest.fixture
def fleet(redis_server: Any, redis_client: Any) -> Iterator[dict[str, Any]]:
    prefix = f"graflow-test:markers-{uuid.uuid4().hex[:8]}"
    cpu_broker = RedisTaskQueue(None, url=redis_server.url, key_prefix=prefix, result_ttl=_TTL)
    gpu_broker = RedisTaskQueue(None, url=redis_server.url, key_prefix=prefix)
    cpu = TaskWorker(cpu_broker, worker_id="cpu", queues=["cpu"], poll_interval=0.05, heartbeat_interval=0.5)
    gpu = TaskWorker(gpu_broker, worker_id="gpu", queues=["gpu"], poll_interval=0.05, heartbeat_interval=0.5)
    try:
        cpu.start()
        gpu.start()
        yield {"url": redis_server.url, "prefix": prefix, "cpu": cpu, "gpu": gpu, "client": redis_client}
    finally:
        for worker in (cpu, gpu):
            worker.stop(timeout=5)
        cpu_broker.close()
        gpu_broker.close()
        stale = list(redis_client.scan_iter(match=prefix + ":*", count=1000))
        if stale:
            redis_client.delete(*stale)


@task
def load(i: int) -> int:
    return i


@task(queue="gpu")
def train(url: str, counter: str, i: int) -> int:
    import time

    import redis

    client = redis.Redis.from_url(url)
    try:
        client.incr(counter)
    finally:
        client.close()
    time.sleep(1.5)  # long enough for the forwarding worker's wait to check its run marker
    return i * 10


@task
def pause(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _group(fleet: dict[str, Any], n: int) -> Any:
    config = {"url": fleet["url"], "key_prefix": fleet["prefix"], "queue": "cpu", "timeout": 60.0}
    counter = f"{fleet['prefix']}:ran:train{n}"
    member = load(task_id=f"load{n}", i=n) >> train(task_id=f"train{n}", url=fleet["url"], counter=counter, i=n)
    group = ParallelGroup([member, load(task_id=f"other{n}", i=0)])
    return group.with_execution(backend="redis", backend_config=config)


def _idle(fleet: dict[str, Any]) -> bool:
    client = fleet["client"]
    prefix = fleet["prefix"]
    queued = client.llen(f"{prefix}:q:gpu") + client.llen(f"{prefix}:q:cpu")
    in_flight = sum(client.llen(k) for k in client.scan_iter(match=f"{prefix}:inflight:*"))
    return queued == 0 and in_flight == 0 and fleet["gpu"].active_tasks == 0 and fleet["cpu"].active_tasks == 0


def test_a_forward_after_the_marker_expired_runs_the_task_once(
    fleet: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with workflow("markers") as wf:
        _group(fleet, 1) >> pause(task_id="pause", seconds=_TTL + 1.5) >> _group(fleet, 2)
    ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
    with caplog.at_level(logging.WARNING, logger="graflow_redis"):
        WorkflowEngine().execute(ctx)
        assert ctx.get_result("train1") == 10 and ctx.get_result("train2") == 20
        # a spurious "recovery" sends train2 again while its first run still runs: let that copy run out
        deadline = time.monotonic() + 30
        settled = 0
        while settled < 3 and time.monotonic() < deadline:
            settled = settled + 1 if _idle(fleet) else 0
            time.sleep(0.2)
        assert settled >= 3, "the workers did not go idle"
    client = fleet["client"]
    runs = {n: int(client.get(f"{fleet['prefix']}:ran:train{n}") or 0) for n in (1, 2)}
    assert runs == {1: 1, 2: 1}, f"forwarded tasks ran {runs} times"
    lost = [r.getMessage() for r in caplog.records if "lost this run's keys" in r.getMessage()]
    assert lost == [], "an expired run marker of the forwarding worker was taken for lost Redis data"
