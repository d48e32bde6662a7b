"""Slot lending meets ``--max-tasks-per-child`` (real redis-server, a worker in this process).

A member waiting on a nested ``redis`` group lends its slot to a stand-in, which runs the inner
members. The inner members count as tasks of the worker, so the limit can be reached by a stand-in
while the member still waits for inner members only this worker can run. Recycling right then
strands the waiting member: it runs out the shutdown timeout, goes back to the queue and starts
over (with a single worker, for ever). The worker must finish the waits it lent slots for first.
"""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

from graflow import ExecutionContext, WorkflowEngine, task, workflow
from graflow.core.task import ParallelGroup
from graflow.worker.worker import EXIT_RECYCLE, TaskWorker
from graflow_redis.queue import RedisTaskQueue

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Long enough for an honest run on a loaded machine; a stranded member fails the run with QueueTimeoutError.
_WAIT = 30.0


@pytest.fixture
def prefix(redis_client: Any) -> Iterator[str]:
    name = f"graflow-test:lending-{uuid.uuid4().hex[:8]}"
    yield name
    stale = list(redis_client.scan_iter(match=name + ":*", count=1000))
    if stale:
        redis_client.delete(*stale)


@task
def leaf(i: int) -> int:
    return i * 100


@task
def prep(i: int) -> int:
    return i


@task
def nap(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _config(url: str, prefix: str) -> dict[str, Any]:
    return {"url": url, "key_prefix": prefix, "reap_interval": 0.3, "timeout": _WAIT}


def test_max_tasks_reached_by_a_stand_in_waits_for_the_lending_member(
    redis_server: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisTaskQueue(None, url=redis_server.url, key_prefix=prefix)
    worker = TaskWorker(
        broker,
        worker_id="recycler",
        concurrency=1,
        max_tasks=2,
        shutdown_timeout=2.0,
        poll_interval=0.05,
        heartbeat_interval=0.5,
    )
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(code=worker.run()), daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="graflow.worker"):
            runner.start()
            with workflow("lending-max-tasks") as wf:
                config = _config(redis_server.url, prefix)
                inner = ParallelGroup([leaf(task_id=f"leaf_{k}", i=k) for k in range(3)])
                member = prep(task_id="prep", i=1) >> inner.with_execution(backend="redis", backend_config=config)
                ParallelGroup([member]).with_execution(backend="redis", backend_config=config)
            ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
            WorkflowEngine().execute(ctx)
            assert [ctx.get_result(f"leaf_{k}") for k in range(3)] == [0, 100, 200]
            assert ctx.get_result("prep") == 1
            runner.join(_WAIT)
        assert not runner.is_alive(), "the worker did not recycle after reaching max_tasks"
        assert box["code"] == EXIT_RECYCLE
        assert "max tasks (2) reached" in worker.exit_reason
        handed_back = [r.getMessage() for r in caplog.records if "within the shutdown timeout" in r.getMessage()]
        assert handed_back == [], "a member waiting on its nested group was handed back by the recycle"
    finally:
        worker.request_stop("test over")
        runner.join(10)
        if runner.is_alive() or not worker._stopped.is_set():
            worker.stop(timeout=2)
        broker.close()


# -- waits in the threading coordinator's pool threads ------------------------------------------------------------
#
# A member may run a ``threading`` group whose members are distributed groups: the calling thread
# drains members itself (it lends its slot while it waits), but the pool threads wait on the fleet
# as well. Without a slot of their own to lend, a pool thread still waiting once the calling
# thread's wait ended waits for work nobody on a one-slot worker takes.


def square(x: int) -> int:
    return x * x


def orchestrate(url: str, prefix: str) -> dict[str, int]:
    """Runs on the worker: a threading group whose two members each wait on the fleet."""
    import threading
    import time

    from graflow.coordination.threading_coordinator import ThreadingCoordinator
    from graflow.core.handler import TaskResult
    from graflow_redis.queue import RedisTaskQueue

    caller = threading.current_thread()
    pool_thread_called = threading.Event()
    caller_wait_over = threading.Event()
    got: dict[str, int] = {}

    def run_member(member_id: str) -> TaskResult:
        queue = RedisTaskQueue(None, url=url, key_prefix=prefix)
        try:
            if threading.current_thread() is caller:
                if not pool_thread_called.wait(10):
                    raise RuntimeError("the pool thread never ran a member")
                got["caller"] = queue.result(queue.submit(square, x=3), timeout=10)
                caller_wait_over.set()
            else:
                pool_thread_called.set()
                caller_wait_over.wait(10)
                # the caller's wait is over: let its stand-in retire (it may be in one last fetch)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and any(
                    t.name == "graflow-executor-standin" for t in threading.enumerate()
                ):
                    time.sleep(0.01)
                got["pool"] = queue.result(queue.submit(square, x=4), timeout=10)
        finally:
            queue.close()
        return TaskResult(member_id, True)

    ThreadingCoordinator(thread_count=1).run_members(None, ["a", "b"], run_member, None)
    return got


def _one_slot_worker(url: str, prefix: str) -> tuple[RedisTaskQueue, TaskWorker]:
    broker = RedisTaskQueue(None, url=url, key_prefix=prefix)
    worker = TaskWorker(broker, worker_id="one-slot", concurrency=1, poll_interval=0.05, heartbeat_interval=0.5)
    return broker, worker.start()


def test_a_pool_thread_waiting_on_the_fleet_lends_a_slot_too(redis_server: Any, prefix: str) -> None:
    broker, worker = _one_slot_worker(redis_server.url, prefix)
    producer = RedisTaskQueue(None, url=redis_server.url, key_prefix=prefix)
    try:
        message_id = producer.submit(orchestrate, url=redis_server.url, prefix=prefix)
        assert producer.result(message_id, timeout=_WAIT) == {"caller": 9, "pool": 16}
    finally:
        producer.close()
        worker.stop(timeout=5)
        broker.close()


def test_distributed_groups_inside_a_threading_group_complete_on_one_slot(redis_server: Any, prefix: str) -> None:
    broker, worker = _one_slot_worker(redis_server.url, prefix)
    try:
        config = _config(redis_server.url, prefix)
        config["timeout"] = 20.0
        with workflow("lending-threads") as wf:
            short = ParallelGroup([leaf(task_id="x0", i=1)]).with_execution(backend="redis", backend_config=config)
            long = ParallelGroup([leaf(task_id=f"y{k}", i=k) for k in range(4)]).with_execution(
                backend="redis", backend_config=config
            )
            # the long group is sent once the short one's wait (and its stand-in) may be over
            threads = ParallelGroup([nap(task_id="nap", seconds=0.5) >> long, short])
            threads.with_execution(backend="threading")
            ParallelGroup([prep(task_id="prep", i=1) >> threads]).with_execution(backend="redis", backend_config=config)
        ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
        WorkflowEngine().execute(ctx)
        assert ctx.get_result("x0") == 100
        assert [ctx.get_result(f"y{k}") for k in range(4)] == [0, 100, 200, 300]
    finally:
        worker.stop(timeout=5)
        broker.close()
