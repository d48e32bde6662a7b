"""A member-chain task that timed out and is retried, on a worker (real redis-server, worker processes).

The worker's watchdog interrupts a task that overruns its ``timeout`` and gives it ``timeout_grace``
seconds to stop before it gives up on the thread (answers for the job, recycles the process). Once
the interrupted task has stopped and the engine retries it (or goes on with the chain), the grace
period is over: the rest of the member must not be given up on. This matters for forwarded tail
tasks too: the member's worker tracks the forwarded task's timeout while it waits for it.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import ExecutionContext, task, workflow
from graflow.core.task import ParallelGroup

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cpu_and_gpu(redis_server: Any, tmp_path_factory: Any) -> Any:
    prefix = f"graflow-test:review-routing-{uuid.uuid4().hex[:8]}"
    procs = Workers(redis_server.url, prefix, tmp_path_factory.mktemp("routing"))
    cpu = procs.start("--queue", "cpu", "--concurrency", "1", "--timeout-grace", "0.5", worker_id="cpu-worker")
    gpu = procs.start("--queue", "gpu", "--concurrency", "1", "--timeout-grace", "0.5", worker_id="gpu-worker")
    yield procs, cpu, gpu
    procs.stop_all()
    procs.delete_keys()


def _config(procs: Workers) -> dict[str, Any]:
    return {"url": procs.url, "key_prefix": procs.key_prefix, "queue": "cpu", "reap_interval": 0.3, "timeout": 60.0}


def _busy(seconds: float) -> None:
    """Python-level work the watchdog can interrupt (a long C call could not be)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


@task(inject_context=True, timeout=0.6, max_retries=1)
def flaky(ctx: Any) -> str:
    import os

    if ctx.retry_count == 0:
        _busy(30)  # overruns its timeout: interrupted
    return f"attempt {ctx.retry_count + 1} on {os.getpid()}"


@task(queue="gpu", inject_context=True, timeout=0.6, max_retries=1)
def flaky_gpu(ctx: Any) -> str:
    import os

    if ctx.retry_count == 0:
        _busy(30)
    return f"attempt {ctx.retry_count + 1} on {os.getpid()}"


@task
def start() -> int:
    import os

    return os.getpid()


@task
def slow_tail() -> int:
    import os

    _busy(1.5)  # well past the interrupted attempt's grace period
    return os.getpid()


def _run(procs: Workers, build: Any, name: str) -> ExecutionContext:
    with workflow(name) as wf:
        ParallelGroup([build(), start(task_id="other")]).with_execution(backend="redis", backend_config=_config(procs))
    ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
    procs.execute(ctx)
    return ctx


def test_a_retried_timed_out_task_lets_the_rest_of_its_member_run(cpu_and_gpu: Any) -> None:
    procs, cpu, _gpu = cpu_and_gpu
    def member() -> Any:
        return start(task_id="first") >> flaky(task_id="flaky") >> slow_tail(task_id="tail")

    ctx = _run(procs, member, "retry-after-timeout")
    assert ctx.get_result("flaky") == f"attempt 2 on {cpu.pid}"
    assert ctx.get_result("tail") == cpu.pid
    assert cpu.poll() is None
    assert "could not be stopped after its timeout" not in procs.log_of(cpu)


def test_a_forwarded_task_retried_after_its_timeout_lets_the_member_finish(cpu_and_gpu: Any) -> None:
    procs, cpu, gpu = cpu_and_gpu
    def member() -> Any:
        return start(task_id="first") >> flaky_gpu(task_id="flaky_gpu") >> slow_tail(task_id="tail")

    ctx = _run(procs, member, "forwarded-retry-after-timeout")
    assert ctx.get_result("flaky_gpu") == f"attempt 2 on {gpu.pid}"
    assert ctx.get_result("first") == cpu.pid and ctx.get_result("tail") == cpu.pid
    assert "could not be stopped after its timeout" not in procs.log_of(cpu)
