"""Worker processes against a real redis-server: crashes, signals, restarts, scale, hygiene, metrics.

Every worker here is a real ``python -m graflow.worker.main`` child process (see
``redis_worker_procs``), killed by PID when its test ends. Task functions of this module are
shipped to them by value (cloudpickle), as code a worker cannot import would be.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import ExecutionContext, WorkflowEngine, task, workflow
from graflow.core.task import ParallelGroup
from graflow.exceptions import ParallelGroupError, TaskTimeoutError
from graflow_redis.queue import RedisTaskQueue

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers, children_of, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def workers(redis_url: str, key_prefix: str, tmp_path: Path) -> Any:
    procs = Workers(redis_url, key_prefix, tmp_path)
    yield procs
    procs.stop_all()


def _redis_channel_context(wf: Any, redis_url: str, key_prefix: str) -> ExecutionContext:
    return ExecutionContext.create(
        wf.graph, channel_backend="redis", config={"url": redis_url, "key_prefix": key_prefix}
    )


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


# -- tasks (shipped by value) ------------------------------------------------------------------------------
@task
def prepare() -> int:
    return 20


@task(inject_context=True)
def slow_once(ctx: Any, prepare: int) -> int:
    channel = ctx.get_channel()
    channel.append("pids", os.getpid())
    if channel.atomic_add("attempts", 1) == 1:
        time.sleep(float(channel.get("first_sleep", 60)))  # the first attempt is interrupted
    return prepare + 1


@task
def finish(slow_once: int) -> int:
    return slow_once * 2


def _crash_workflow() -> Any:
    with workflow("crash") as wf:
        prepare >> slow_once >> finish
    return wf


def _start_run(wf: Any, redis_url: str, key_prefix: str, first_sleep: float) -> tuple[Any, Any, Any]:
    ctx = _redis_channel_context(wf, redis_url, key_prefix)
    ctx.channel.set("first_sleep", first_sleep)
    RedisTaskQueue(ctx, url=redis_url, key_prefix=key_prefix, reap_interval=0.3)
    thread, box = _in_thread(lambda: WorkflowEngine().execute(ctx))
    return ctx, thread, box


def test_sigkill_mid_task_completes_on_another_worker(workers: Workers, redis_url: str, key_prefix: str) -> None:
    victim = workers.start(worker_id="victim")
    ctx, thread, box = _start_run(_crash_workflow(), redis_url, key_prefix, first_sleep=60)
    wait_for(lambda: ctx.channel.get("attempts") == 1, what="the first attempt to start")
    survivor = workers.start(worker_id="survivor")
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), workers.logs()
    assert "error" not in box, box.get("error")
    assert box["result"] == 42
    pids = ctx.channel.get("pids")
    assert pids[0] == victim.pid and pids[-1] == survivor.pid
    assert ctx.channel.get("attempts") == 2


def test_sigterm_lets_the_running_task_finish_and_exits_zero(workers: Workers, redis_url: str, key_prefix: str) -> None:
    worker = workers.start(worker_id="drained", fast=True)
    ctx, thread, box = _start_run(_crash_workflow(), redis_url, key_prefix, first_sleep=1.5)
    wait_for(lambda: ctx.channel.get("attempts") == 1, what="the long task to start")
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, workers.log_of(worker)
    assert "received SIGTERM" in workers.log_of(worker)
    # the long task finished on the draining worker; the next one waits for another worker
    wait_for(lambda: ctx.get_result("slow_once") == 21, what="the drained task's result")
    assert ctx.channel.get("attempts") == 1, "it ran once: nothing was lost or repeated"
    workers.start(worker_id="next")
    thread.join(timeout=60)
    assert box.get("result") == 42, box


def test_second_signal_exits_at_once_and_the_task_is_redelivered(
    workers: Workers, redis_url: str, key_prefix: str
) -> None:
    worker = workers.start(worker_id="impatient")
    ctx, thread, box = _start_run(_crash_workflow(), redis_url, key_prefix, first_sleep=60)
    wait_for(lambda: ctx.channel.get("attempts") == 1, what="the long task to start")
    os.kill(worker.pid, signal.SIGTERM)
    # Two signals that arrive before the handler ran are one signal: send the second once the first was seen.
    wait_for(lambda: "send it again" in workers.log_of(worker), what="the worker to handle the first SIGTERM")
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 128 + signal.SIGTERM
    workers.start(worker_id="rescuer")
    thread.join(timeout=60)
    assert box.get("result") == 42, (box, workers.logs())
    assert ctx.channel.get("attempts") == 2


# -- groups on worker fleets -----------------------------------------------------------------------------
@task(inject_context=True)
def counted(ctx: Any, i: int) -> int:
    ctx.get_channel().atomic_add(f"ran:{i}", 1)
    return i * i


def _group_workflow(n: int, redis_url: str, key_prefix: str, **config: Any) -> Any:
    with workflow("fleet") as wf:
        members = [counted(task_id=f"m{i}", i=i) for i in range(n)]
        ParallelGroup(members).set_group_name("fleet").with_execution(
            backend="redis", backend_config={"url": redis_url, "key_prefix": key_prefix, "reap_interval": 0.3, **config}
        )
    return wf


def test_thousand_member_group_on_two_worker_processes(workers: Workers, redis_url: str, key_prefix: str) -> None:
    supervisor = workers.start("--processes", "2", worker_id="pair")
    workers.wait_registered("pair-2", supervisor)
    n = 1000
    result, ctx = _group_workflow(n, redis_url, key_prefix).execute(ret_context=True)
    missing = [i for i in range(n) if ctx.get_result(f"m{i}") != i * i]
    assert not missing, f"results missing for {missing[:10]}"
    never = [i for i in range(n) if not ctx.channel.get(f"ran:{i}")]
    assert not never, f"members that never ran: {never[:10]}"
    assert result == {f"m{i}": i * i for i in range(n)}
    assert len(children_of(supervisor.pid)) == 2


def test_redis_restart_mid_run_workers_reconnect_and_the_run_completes(
    own_redis_server: Any, key_prefix: str, tmp_path: Path
) -> None:
    procs = Workers(own_redis_server.url, key_prefix, tmp_path)
    try:
        procs.start(worker_id="r1")
        procs.start(worker_id="r2")
        n = 40

        @task(inject_context=True)
        def slowish(ctx: Any, i: int) -> int:
            time.sleep(0.1)
            return i + 1000

        with workflow("restart") as wf:
            members = [slowish(task_id=f"s{i}", i=i) for i in range(n)]
            ParallelGroup(members).with_execution(
                backend="redis",
                backend_config={"url": own_redis_server.url, "key_prefix": key_prefix, "reap_interval": 0.3},
            )
        thread, box = _in_thread(lambda: wf.execute(ret_context=True))
        time.sleep(0.8)  # some members done, some running, some queued
        own_redis_server.restart(downtime=0.5)
        thread.join(timeout=120)
        assert not thread.is_alive(), procs.logs()
        assert "error" not in box, (box.get("error"), procs.logs())
        _, ctx = box["result"]
        assert [ctx.get_result(f"s{i}") for i in range(n)] == [i + 1000 for i in range(n)]
        # the workers are still alive and serving after the restart
        with workflow("after") as wf2:
            ParallelGroup([slowish(task_id="again", i=1)]).with_execution(
                backend="redis", backend_config={"url": own_redis_server.url, "key_prefix": key_prefix}
            )
        _, ctx2 = wf2.execute(ret_context=True)
        assert ctx2.get_result("again") == 1001
    finally:
        procs.stop_all()


def test_finished_runs_leave_no_queue_keys_behind(
    workers: Workers, redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    workers.start(worker_id="tidy")
    _group_workflow(30, redis_url, key_prefix).execute()
    wf = _crash_workflow()
    ctx = _redis_channel_context(wf, redis_url, key_prefix)
    ctx.channel.set("first_sleep", 0.01)
    RedisTaskQueue(ctx, url=redis_url, key_prefix=key_prefix)
    assert WorkflowEngine().execute(ctx) == 42
    leftovers = []
    for raw in redis_client.scan_iter(match=f"{key_prefix}:*", count=1000):
        key = raw.decode()
        if key in (f"{key_prefix}:workers", f"{key_prefix}:hb:tidy"):
            continue  # the live worker's registration
        if key.startswith(f"{key_prefix}:{ctx.session_id}:channel:"):
            continue  # the user's channel data of the redis-channel run: theirs to keep or clean up
        if redis_client.pttl(raw) < 0:
            leftovers.append(key)
    assert not leftovers, f"keys without expiry left by finished runs: {leftovers}"


# -- hygiene: timeouts, recycling, supervisors ----------------------------------------------------------------
@task(timeout=0.5)
def oversleeps() -> str:
    time.sleep(3600)  # far beyond the test's own time limit: only the timeout can end the wait for it
    return "never"


@task
def report_pid() -> int:
    return os.getpid()


def test_task_timeout_is_enforced_and_the_stuck_process_replaced(
    workers: Workers, redis_url: str, key_prefix: str
) -> None:
    supervisor = workers.start("--processes", "1", "--timeout-grace", "0.3", worker_id="guarded")
    (first_child,) = children_of(supervisor.pid)
    with workflow("timeouts") as wf:
        ParallelGroup([oversleeps(task_id="sleepy")]).with_execution(
            backend="redis", backend_config={"url": redis_url, "key_prefix": key_prefix}
        ).with_policy("best_effort")
    _, ctx = wf.execute(ret_context=True)  # returns at all: the timeout ended the wait, not the hour-long sleep
    error = ctx.get_result("sleepy")
    assert isinstance(error, TaskTimeoutError) and "sleepy" in str(error)
    # the stuck process drains and is replaced by a fresh one that serves on
    wait_for(lambda: children_of(supervisor.pid) and children_of(supervisor.pid) != [first_child], what="a new child")
    with workflow("after-timeout") as wf2:
        ParallelGroup([report_pid(task_id="who")]).with_execution(
            backend="redis", backend_config={"url": redis_url, "key_prefix": key_prefix}
        )
    _, ctx2 = wf2.execute(ret_context=True)
    assert ctx2.get_result("who") != first_child


def test_max_tasks_per_child_recycles_processes(workers: Workers, redis_url: str, key_prefix: str) -> None:
    workers.start("--processes", "1", "--max-tasks-per-child", "4", worker_id="hygienic")
    with workflow("recycle") as wf:
        ParallelGroup([report_pid(task_id=f"p{i}") for i in range(12)]).with_execution(
            backend="redis", backend_config={"url": redis_url, "key_prefix": key_prefix}
        )
    _, ctx = wf.execute(ret_context=True)
    pids = [ctx.get_result(f"p{i}") for i in range(12)]
    assert all(isinstance(p, int) for p in pids)
    assert len(set(pids)) >= 3, f"expected >= 3 processes for 12 tasks at 4 per child, got {set(pids)}"


def test_supervisor_drains_on_sigterm_and_serves_merged_metrics(
    workers: Workers, redis_url: str, key_prefix: str
) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from graflow_testkit.services.redis import free_port

    port = free_port()
    supervisor = workers.start("--processes", "2", "--metrics-port", str(port), worker_id="metered")
    workers.wait_registered("metered-2", supervisor)
    _group_workflow(40, redis_url, key_prefix).execute()

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def processed() -> float:
        return sum(v for (name, _), v in scrape().items() if name == "graflow_tasks_processed_total")

    def workers_seen() -> set[str]:
        return {dict(labels)["worker"] for name, labels in scrape() if name == "graflow_active_tasks"}

    wait_for(lambda: workers_seen() == {"metered-1", "metered-2"}, timeout=15, what="both children in the metrics")
    wait_for(lambda: processed() == 40, timeout=15, what="every task counted in the merged metrics")
    samples = scrape()
    assert samples[("graflow_queue_depth", (("queue", "default"),))] == 0
    assert samples[("graflow_dead_letter_depth", (("queue", "default"),))] == 0
    os.kill(supervisor.pid, signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0, workers.log_of(supervisor)


def test_supervisor_scales_up_and_down(redis_url: str, key_prefix: str) -> None:
    from graflow.worker.cli import WorkerOptions
    from graflow.worker.supervisor import Supervisor
    from graflow_redis.queue import RedisTaskQueue as Queue

    options = WorkerOptions(
        redis_url=redis_url, key_prefix=key_prefix, heartbeat_interval=0.2, heartbeat_timeout=1.0, poll_interval=0.2
    )
    broker = Queue.for_worker(url=redis_url, key_prefix=key_prefix)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    supervisor = Supervisor(options, 1, broker=broker, env=env)
    runner, _ = _in_thread(supervisor.run)
    try:
        wait_for(lambda: supervisor.process_count() == 1, what="one process")
        supervisor.scale_to(3)
        wait_for(lambda: len(broker.live_workers()) == 3, what="three registered workers")
        assert supervisor.process_count() == 3
        supervisor.scale_to(1)
        assert supervisor.process_count() == 1
        wait_for(lambda: len(supervisor.pids) == 1, what="the surplus workers to drain and exit")
        wait_for(lambda: len(broker.live_workers()) == 1, what="the drained workers to unregister")
    finally:
        supervisor.request_stop("test over")
        runner.join(timeout=30)
        pids = supervisor.pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        broker.close()
    assert not runner.is_alive()


def test_a_member_that_fails_everywhere_keeps_its_exception_type(
    workers: Workers, redis_url: str, key_prefix: str
) -> None:
    class InventoryError(LookupError):
        pass

    @task
    def fails() -> None:
        raise InventoryError("no stock")

    workers.start(worker_id="reporter")
    with workflow("errors") as wf:
        ParallelGroup([fails(task_id="f1"), report_pid(task_id="ok1")]).with_execution(
            backend="redis", backend_config={"url": redis_url, "key_prefix": key_prefix}
        )
    with pytest.raises(ParallelGroupError) as info:
        wf.execute()
    ((failed_id, message),) = info.value.failed_tasks
    assert failed_id == "f1" and "no stock" in message
    error = info.value.execution_context.get_result("f1")
    assert type(error).__name__ == "InventoryError" and isinstance(error, LookupError)
    assert "no stock" in str(error) and "Traceback" in str(error.__cause__)
