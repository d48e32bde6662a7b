"""A chained tail that names another queue runs on a worker of that queue (real redis-server).

Workers specialise by queue (``@task(queue="gpu")``): a member of a ``redis`` group that runs on a
CPU worker, chained to a task that asks for the ``gpu`` queue, must not run that task on the CPU
worker just because it came in the same member.
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
    """One worker serving only ``cpu`` and one serving only ``gpu``, both single-threaded."""
    prefix = f"graflow-test:routing-{uuid.uuid4().hex[:8]}"
    procs = Workers(redis_server.url, prefix, tmp_path_factory.mktemp("routing-workers"))
    cpu = procs.start("--queue", "cpu", "--concurrency", "1", worker_id="cpu-worker")
    gpu = procs.start("--queue", "gpu", "--concurrency", "1", worker_id="gpu-worker")
    yield procs, cpu.pid, gpu.pid
    procs.stop_all()
    procs.delete_keys()


def _config(procs: Workers) -> dict[str, Any]:
    return {"url": procs.url, "key_prefix": procs.key_prefix, "queue": "cpu", "reap_interval": 0.3, "timeout": 60.0}


@task(inject_context=True)
def load(ctx: Any) -> dict[str, Any]:
    import os

    ctx.get_channel().set("loaded_on", os.getpid())
    return {"pid": os.getpid(), "rows": 3}


@task(queue="gpu", inject_context=True)
def train(ctx: Any, load: dict[str, Any]) -> dict[str, Any]:
    import os

    channel = ctx.get_channel()
    channel.set("trained_on", os.getpid())
    return {"pid": os.getpid(), "rows": load["rows"], "saw_load_on": channel.get("loaded_on")}


@task
def report(train: dict[str, Any]) -> dict[str, Any]:
    import os

    return {"pid": os.getpid(), "rows": train["rows"]}


def test_a_tail_naming_another_queue_runs_on_that_queues_worker(cpu_and_gpu: Any) -> None:
    procs, cpu_pid, gpu_pid = cpu_and_gpu
    with workflow("tail-routing") as wf:
        member = load(task_id="load") >> train(task_id="train") >> report(task_id="report")
        ParallelGroup([member, load(task_id="other")]).with_execution(backend="redis", backend_config=_config(procs))
    ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
    procs.execute(ctx)
    assert ctx.get_result("load")["pid"] == cpu_pid
    trained = ctx.get_result("train")
    assert trained["pid"] == gpu_pid, "the gpu task ran on the cpu worker"
    assert trained["rows"] == 3 and trained["saw_load_on"] == cpu_pid, "it saw its member's result and writes"
    assert ctx.get_result("report")["pid"] == cpu_pid, "the rest of the branch came back to the member's worker"
    assert ctx.get_result("other")["pid"] == cpu_pid
    assert ctx.channel.get("trained_on") == gpu_pid, "the gpu task's channel write reached the producer"
    assert {"load", "train", "report", "other"} <= ctx.completed_tasks
