"""Nested distributed groups on a fleet with fewer slots than waiting members (real redis-server).

A member whose chained tail is itself a ``redis`` group waits on its worker thread for the inner
members. With one worker of ``--concurrency 1`` every slot is taken by such a waiting member: the
worker must lend the waiting thread's slot to a stand-in, or the run never ends.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import ExecutionContext, WorkflowEngine, task, workflow
from graflow.core.task import ParallelGroup

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Long enough for any honest run on a loaded machine; a deadlocked run fails with QueueTimeoutError.
_WAIT = 60.0


@pytest.fixture
def single_slot(redis_server: Any, tmp_path: Path) -> Any:
    """One worker process with one executor thread, on its own key prefix."""
    prefix = f"graflow-test:nested-{uuid.uuid4().hex[:8]}"
    procs = Workers(redis_server.url, prefix, tmp_path)
    procs.start("--concurrency", "1", worker_id="only")
    yield procs
    procs.stop_all()
    procs.delete_keys()


def _redis(fleet: Workers) -> dict[str, Any]:
    return {"url": fleet.url, "key_prefix": fleet.key_prefix, "reap_interval": 0.3, "timeout": _WAIT}


@task
def leaf(i: int) -> int:

    return i * 100


@task
def prep(i: int) -> int:
    return i


def _nested_member(fleet: Workers, n: int) -> Any:
    inner = ParallelGroup([leaf(task_id=f"leaf_{n}_{k}", i=n * 10 + k) for k in range(2)]).with_execution(
        backend="redis", backend_config=_redis(fleet)
    )
    return prep(task_id=f"prep_{n}", i=n) >> inner


def test_a_nested_group_completes_on_a_single_slot_worker(single_slot: Workers) -> None:
    with workflow("nested-one-slot") as wf:
        ParallelGroup([_nested_member(single_slot, 1), leaf(task_id="plain", i=7)]).with_execution(
            backend="redis", backend_config=_redis(single_slot)
        )
    ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
    single_slot.execute(ctx)
    assert ctx.get_result("leaf_1_0") == 1000 and ctx.get_result("leaf_1_1") == 1100
    assert ctx.get_result("plain") == 700 and ctx.get_result("prep_1") == 1
    assert {"prep_1", "leaf_1_0", "leaf_1_1", "plain"} <= ctx.completed_tasks


def test_every_outer_member_waiting_at_once_still_completes(single_slot: Workers) -> None:
    # three members that each wait on an inner group: each waiting thread lends its slot in turn
    with workflow("nested-all-waiting") as wf:
        ParallelGroup([_nested_member(single_slot, n) for n in (1, 2, 3)]).with_execution(
            backend="redis", backend_config=_redis(single_slot)
        )
    ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
    single_slot.execute(ctx)
    for n in (1, 2, 3):
        assert ctx.get_result(f"prep_{n}") == n
        assert [ctx.get_result(f"leaf_{n}_{k}") for k in range(2)] == [(n * 10 + k) * 100 for k in range(2)]


def test_stand_ins_retire_once_the_wait_is_over(redis_server: Any) -> None:
    import threading
    import time

    from graflow.worker.worker import TaskWorker
    from graflow_redis.queue import RedisTaskQueue

    prefix = f"graflow-test:standin-{uuid.uuid4().hex[:8]}"
    broker = RedisTaskQueue(None, url=redis_server.url, key_prefix=prefix)
    worker = TaskWorker(broker, worker_id="inproc", concurrency=1, poll_interval=0.05, heartbeat_interval=0.5)
    fleet = Workers(redis_server.url, prefix, Path("."))

    def stand_ins() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "graflow-executor-standin"]

    try:
        worker.start()
        with workflow("nested-in-process") as wf:
            ParallelGroup([_nested_member(fleet, n) for n in (1, 2)]).with_execution(
                backend="redis", backend_config=_redis(fleet)
            )
        ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
        WorkflowEngine().execute(ctx)
        assert [ctx.get_result(f"leaf_{n}_1") for n in (1, 2)] == [1100, 2100]
        deadline = time.monotonic() + 30
        while stand_ins() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stand_ins() == [], "stand-in executors outlived the waits they covered"
        assert worker._lent == 0
    finally:
        worker.stop(timeout=5)
        broker.close()
