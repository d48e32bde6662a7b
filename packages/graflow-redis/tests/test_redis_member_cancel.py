"""A member that cancels the workflow stops its siblings' remote runners on other workers
(real redis-server, real worker processes, real child processes).

In one process, ``cancel_workflow()`` kills the runners of sibling members at once. On a fleet the
sibling runs on another worker: the producer asks through Redis, and that worker kills the runner.
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

from graflow import ExecutionContext, task, workflow
from graflow.core.task import ParallelGroup
from graflow.exceptions import GraflowWorkflowCanceledError

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def fleet(redis_server: Any, tmp_path_factory: Any) -> Any:
    prefix = f"graflow-test:cancel-{uuid.uuid4().hex[:8]}"
    procs = Workers(redis_server.url, prefix, tmp_path_factory.mktemp("cancel-workers"))
    procs.start("--concurrency", "1", worker_id="cancel-a")
    procs.start("--concurrency", "1", worker_id="cancel-b")
    yield procs
    procs.stop_all()
    procs.delete_keys()


@task(handler="subprocess", inject_context=True)
def hang(ctx: Any) -> str:
    import os
    import time

    channel = ctx.get_channel()
    channel.set("hang.pid", os.getpid())
    channel.set("hang.started", True)
    time.sleep(120)
    return "woke up"


@task(inject_context=True)
def stopper(ctx: Any) -> None:
    import time

    channel = ctx.get_channel()
    deadline = time.monotonic() + 60
    while not channel.get("hang.started", False) and time.monotonic() < deadline:
        time.sleep(0.02)
    ctx.cancel_workflow("stop the fleet")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_sibling_runner_on_another_worker_is_stopped(fleet: Workers) -> None:
    config = {"url": fleet.url, "key_prefix": fleet.key_prefix, "reap_interval": 0.3, "timeout": 90.0}
    with workflow("fleet-cancel") as wf:
        ParallelGroup([hang(task_id="hang"), stopper(task_id="stopper")]).with_execution(
            backend="redis", backend_config=config
        )
    ctx = ExecutionContext.create(wf.graph, None, max_steps=1000)
    with pytest.raises(GraflowWorkflowCanceledError) as info:
        fleet.execute(ctx)
    assert info.value.task_id == "stopper"
    assert ctx.channel.get("hang.started") is True, "the sibling had started on its worker"
    assert "hang" not in ctx.completed_tasks, "the sibling ran to its end instead of being stopped"
    pid = ctx.channel.get("hang.pid")
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the sibling's runner process is still running"
